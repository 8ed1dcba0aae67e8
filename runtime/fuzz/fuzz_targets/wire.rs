//! The wire protocol's receive path on arbitrary bytes: `FrameReader` splitting the stream
//! and `decode_frame` of every frame as a `Request` (what the device reads) and as a
//! `Response` (what the host reads). No input may panic, and a frame body never exceeds
//! the reader's buffer.
//!
//! As for blobs, the CRC stops most mutations, so the input is also sent "sealed": as one
//! frame whose CRC and COBS framing are correct, so the postcard decoder sees the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runtime::blob::CRC32;
use runtime::wire::{decode_frame, Feed, FrameReader, Request, Response, MAX_FRAME};

fn feed(bytes: &[u8]) {
    let mut reader = FrameReader::<MAX_FRAME>::new();
    for &b in bytes {
        match reader.feed(b) {
            Feed::Pending | Feed::Overflow => {}
            Feed::Frame(n) => {
                assert!(n <= MAX_FRAME);
                let mut copy = reader.frame(n).to_vec();
                assert_eq!(copy.len(), n);
                let _ = decode_frame::<Request>(reader.frame(n));
                let _ = decode_frame::<Response>(&mut copy);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    feed(data);
    let mut plain = data.to_vec();
    plain.extend_from_slice(&CRC32.checksum(data).to_le_bytes());
    let mut framed = cobs::encode_vec(&plain);
    framed.push(0);
    feed(&framed);
});
