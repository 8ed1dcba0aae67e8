//! The host <-> device protocol, defined once for both sides.
//!
//! A frame on the serial line is `COBS(postcard(message) ++ crc32_le(postcard(message))) ++ 0x00`.
//! The CRC catches bit flips that would still decode as a valid message (an f32 with a
//! flipped bit is a valid f32). [`FrameReader`] splits the byte stream at the 0x00
//! delimiters: a frame that is too long is discarded whole and reported once, so the
//! stream resynchronizes at the next delimiter whatever garbage came before.
//!
//! Every message carries a sequence number chosen by the host and echoed by the device.

use serde::{Deserialize, Serialize};

use crate::blob::CRC32;
use crate::policy::NoiseMode;
use crate::{MAX_ACT, MAX_OBS};

/// Largest decoded frame (message + CRC): an `Act` with MAX_OBS observations fits.
pub const MAX_MESSAGE: usize = 4 * MAX_OBS + 64;
/// Largest encoded frame on the line, delimiter included (COBS adds 1 byte per 254).
pub const MAX_FRAME: usize = MAX_MESSAGE + MAX_MESSAGE / 254 + 2;

/// Host → device.
// `Act` carries its observation inline: no allocator on the device, so no boxing.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Request {
    /// Compute one action for this observation.
    Act {
        seq: u32,
        mode: NoiseMode,
        obs: heapless::Vec<f32, MAX_OBS>,
    },
    /// Describe the loaded policy and firmware.
    Info { seq: u32 },
    /// Re-run the golden vectors embedded with the policy and report mismatches.
    SelfTest { seq: u32 },
    /// Forget link state (sequence tracking, error counters) and output the safe action.
    Reset { seq: u32 },
}

/// What the device counts its cost in.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostUnit {
    /// Executed instructions (QEMU `-icount shift=0`, TIM2).
    Instructions,
    /// CPU cycles (DWT CYCCNT on a real board).
    Cycles,
}

/// Device → host.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Response {
    /// The action for `Act { seq }`, in env units, and what computing it cost.
    Action {
        seq: u32,
        action: heapless::Vec<f32, MAX_ACT>,
        cost: u32,
    },
    Info {
        seq: u32,
        /// CRC-32 of the whole embedded blob file.
        blob_hash: u32,
        obs_dim: u16,
        act_dim: u16,
        nfe: u16,
        cost_unit: CostUnit,
        firmware_version: heapless::String<16>,
    },
    SelfTest {
        seq: u32,
        vectors: u16,
        mismatches: u16,
    },
    ResetDone {
        seq: u32,
    },
    /// The request could not be served. `seq` is `None` when the frame was unreadable.
    Error {
        seq: Option<u32>,
        code: ErrorCode,
    },
}

/// Why the device answered with an error.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ErrorCode {
    /// The frame failed COBS decoding, the CRC, or postcard decoding.
    CorruptFrame,
    /// The frame exceeded [`MAX_FRAME`] and was discarded.
    FrameTooLong,
    /// The observation's length does not match the policy.
    ObservationLength,
    /// The observation contains NaN or Inf; the safe action is applied.
    NonFiniteObservation,
    /// The embedded policy blob failed validation at boot; the device is in its safe state.
    NoPolicy,
    /// No golden vectors were embedded with this policy.
    NoGoldenVectors,
}

/// Errors of encoding or decoding one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The output buffer is too small for the encoded message.
    BufferTooSmall,
    /// COBS decoding failed.
    Cobs,
    /// The CRC does not match.
    Crc,
    /// postcard could not decode the message.
    Decode,
    /// The frame was longer than the reader's buffer.
    TooLong,
}

impl FrameError {
    /// The error code a device answers with for this frame error.
    pub fn code(self) -> ErrorCode {
        match self {
            FrameError::TooLong => ErrorCode::FrameTooLong,
            _ => ErrorCode::CorruptFrame,
        }
    }
}

/// Encode `message` as one delimited frame into `out`, using `scratch` for the plain
/// bytes. Returns the frame (ending with 0x00).
pub fn encode_frame<'o, T: Serialize>(
    message: &T,
    scratch: &mut [u8],
    out: &'o mut [u8],
) -> Result<&'o [u8], FrameError> {
    let used = postcard::to_slice(message, scratch)
        .map_err(|_| FrameError::BufferTooSmall)?
        .len();
    let crc = CRC32.checksum(&scratch[..used]);
    if scratch.len() < used + 4 {
        return Err(FrameError::BufferTooSmall);
    }
    scratch[used..used + 4].copy_from_slice(&crc.to_le_bytes());
    let n = cobs::try_encode(&scratch[..used + 4], out).map_err(|_| FrameError::BufferTooSmall)?;
    if out.len() <= n {
        return Err(FrameError::BufferTooSmall);
    }
    out[n] = 0;
    Ok(&out[..n + 1])
}

/// Decode one frame's body (the bytes before the delimiter) in place.
pub fn decode_frame<'de, T: Deserialize<'de>>(body: &'de mut [u8]) -> Result<T, FrameError> {
    let n = cobs::decode_in_place(body).map_err(|_| FrameError::Cobs)?;
    if n < 4 {
        return Err(FrameError::Crc);
    }
    let (payload, crc) = body[..n].split_at(n - 4);
    if CRC32.checksum(payload).to_le_bytes() != crc {
        return Err(FrameError::Crc);
    }
    let (message, rest) = postcard::take_from_bytes(payload).map_err(|_| FrameError::Decode)?;
    if rest.is_empty() {
        Ok(message)
    } else {
        Err(FrameError::Decode)
    }
}

/// What feeding one byte to a [`FrameReader`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Feed {
    /// No complete frame yet.
    Pending,
    /// A complete frame body (without delimiter) of this many bytes is in the buffer;
    /// take it with [`FrameReader::frame`] before feeding more.
    Frame(usize),
    /// A frame longer than the buffer ended here; it was discarded.
    Overflow,
}

/// Splits a byte stream into frames at 0x00, with a fixed buffer of N bytes.
pub struct FrameReader<const N: usize> {
    buf: [u8; N],
    len: usize,
    overflowed: bool,
}

impl<const N: usize> Default for FrameReader<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameReader<N> {
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            overflowed: false,
        }
    }

    /// Drop any partial frame.
    pub fn clear(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }

    pub fn feed(&mut self, byte: u8) -> Feed {
        if byte == 0 {
            let (len, overflowed) = (self.len, self.overflowed);
            self.clear();
            return match (overflowed, len) {
                (true, _) => Feed::Overflow,
                // Empty frames (back-to-back delimiters) are line idle, not errors.
                (false, 0) => Feed::Pending,
                (false, n) => Feed::Frame(n),
            };
        }
        if self.len < N {
            self.buf[self.len] = byte;
            self.len += 1;
        } else {
            self.overflowed = true;
        }
        Feed::Pending
    }

    /// The body of the frame just reported by [`Feed::Frame`]; decode it in place.
    pub fn frame(&mut self, len: usize) -> &mut [u8] {
        &mut self.buf[..len.min(N)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(seq: u32, n: usize) -> Request {
        let mut obs = heapless::Vec::new();
        for i in 0..n {
            obs.push(i as f32 * 0.25 - 1.0).unwrap();
        }
        Request::Act {
            seq,
            mode: NoiseMode::Stochastic { seed: 99 },
            obs,
        }
    }

    fn feed_all<const N: usize>(
        reader: &mut FrameReader<N>,
        bytes: &[u8],
    ) -> Vec<Result<Request, FrameError>> {
        let mut out = Vec::new();
        for &b in bytes {
            match reader.feed(b) {
                Feed::Pending => {}
                Feed::Frame(n) => out.push(decode_frame::<Request>(reader.frame(n))),
                Feed::Overflow => out.push(Err(FrameError::TooLong)),
            }
        }
        out
    }

    #[test]
    fn round_trip_largest_message() {
        let msg = act(7, MAX_OBS);
        let (mut scratch, mut out) = ([0u8; MAX_MESSAGE], [0u8; MAX_FRAME]);
        let frame = encode_frame(&msg, &mut scratch, &mut out).unwrap().to_vec();
        assert_eq!(*frame.last().unwrap(), 0);
        assert!(!frame[..frame.len() - 1].contains(&0));
        let mut reader = FrameReader::<MAX_FRAME>::new();
        assert_eq!(feed_all(&mut reader, &frame), vec![Ok(msg)]);
    }

    #[test]
    fn garbage_bit_flips_and_overflow_resynchronize() {
        let (mut scratch, mut out) = ([0u8; MAX_MESSAGE], [0u8; MAX_FRAME]);
        let good = encode_frame(&act(1, 17), &mut scratch, &mut out)
            .unwrap()
            .to_vec();
        let mut reader = FrameReader::<MAX_FRAME>::new();

        // Leading garbage without delimiter joins the next frame and fails its CRC/COBS;
        // the frame after that decodes.
        let mut stream = vec![0x13, 0x37, 0x42];
        stream.extend_from_slice(&good);
        stream.extend_from_slice(&good);
        let got = feed_all(&mut reader, &stream);
        assert_eq!(got.len(), 2);
        assert!(got[0].is_err());
        assert_eq!(got[1], Ok(act(1, 17)));

        // Every single-bit flip is caught (COBS, CRC or decode), never a wrong message.
        for bit in 0..(good.len() - 1) * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut reader = FrameReader::<MAX_FRAME>::new();
            for r in feed_all(&mut reader, &bad) {
                assert!(r.is_err() || r == Ok(act(1, 17)), "bit {bit} gave {r:?}");
                assert_ne!(r.as_ref().ok(), Some(&act(2, 17)));
            }
        }

        // A flood longer than the buffer is reported once, then the next frame decodes.
        let mut flood = vec![0xAA; 3 * MAX_FRAME];
        flood.push(0);
        flood.extend_from_slice(&good);
        let got = feed_all(&mut reader, &flood);
        assert_eq!(got, vec![Err(FrameError::TooLong), Ok(act(1, 17))]);
    }
}
