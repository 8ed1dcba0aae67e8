//! The host end of the host-in-the-loop protocol (`runtime::wire`, DESIGN §8) over any
//! byte stream: QEMU's UART socket ([`crate::qemu::Qemu`]), a serial port, or a test pipe.
//!
//! [`DeviceLink::request`] sends one request and waits for the response that echoes its
//! sequence number; anything else (a stale answer, a device-side frame error) is reported
//! as a [`LinkError`], never silently taken as the answer. [`DeviceLink::send_bytes`]
//! writes raw bytes for fault injection, and [`DeviceLink::recv`] reads whatever the
//! device says next.
//!
//! Timeouts need a transport whose reads return within a bounded time (a socket or port
//! with a read timeout): reads that fail with `WouldBlock`/`TimedOut` count as "nothing
//! yet", and the link gives up at its own deadline.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use runtime::wire::{
    decode_frame, encode_frame, ErrorCode, Feed, FrameError, FrameReader, Request, Response,
    MAX_FRAME, MAX_MESSAGE,
};
use runtime::NoiseMode;

/// Why a link operation failed.
#[derive(Debug)]
pub enum LinkError {
    /// No complete response within the link's timeout.
    Timeout(Duration),
    /// The transport failed.
    Io(io::Error),
    /// The transport reached end of stream (the device or emulator went away).
    Closed,
    /// The request could not be encoded (too many observations for the protocol).
    Encode(FrameError),
    /// The device sent a frame the host could not decode.
    BadFrame(FrameError),
    /// The device could not read our request frame (`Error { seq: None, .. }`).
    FrameRejected(ErrorCode),
    /// The device answered a request, but not with the expected sequence number.
    OutOfSequence { expected: u32, got: Box<Response> },
    /// The device answered `Act` with an error code.
    Device { seq: u32, code: ErrorCode },
    /// The device answered with a response of the wrong kind.
    UnexpectedResponse(Box<Response>),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Timeout(d) => write!(f, "no response from the device within {d:?}"),
            LinkError::Io(e) => write!(f, "serial link I/O error: {e}"),
            LinkError::Closed => write!(f, "the serial link was closed by the device"),
            LinkError::Encode(e) => write!(f, "request does not fit a frame: {e:?}"),
            LinkError::BadFrame(e) => write!(f, "undecodable frame from the device: {e:?}"),
            LinkError::FrameRejected(code) => {
                write!(f, "the device could not read the request frame ({code:?})")
            }
            LinkError::OutOfSequence { expected, got } => {
                write!(f, "expected the response to seq {expected}, got {got:?}")
            }
            LinkError::Device { seq, code } => {
                write!(f, "the device refused request {seq}: {code:?}")
            }
            LinkError::UnexpectedResponse(r) => write!(f, "unexpected response {r:?}"),
        }
    }
}

impl std::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LinkError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for LinkError {
    fn from(e: io::Error) -> Self {
        LinkError::Io(e)
    }
}

/// The sequence number a response echoes (`None` for frame errors).
pub fn response_seq(response: &Response) -> Option<u32> {
    match response {
        Response::Action { seq, .. }
        | Response::Info { seq, .. }
        | Response::SelfTest { seq, .. }
        | Response::ResetDone { seq } => Some(*seq),
        Response::Error { seq, .. } => *seq,
    }
}

/// The sequence number of a request.
pub fn request_seq(request: &Request) -> u32 {
    match request {
        Request::Act { seq, .. }
        | Request::Info { seq }
        | Request::SelfTest { seq }
        | Request::Reset { seq } => *seq,
    }
}

/// Encode a request as one delimited frame.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, LinkError> {
    let mut scratch = vec![0u8; MAX_MESSAGE];
    let mut out = vec![0u8; MAX_FRAME];
    let frame = encode_frame(request, &mut scratch, &mut out).map_err(LinkError::Encode)?;
    Ok(frame.to_vec())
}

/// One computed action and its cost as the device reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceAction {
    pub action: Vec<f32>,
    /// Instructions (QEMU) or cycles (board), see `Info::cost_unit`.
    pub cost: u32,
}

/// A request/response client over a byte stream.
pub struct DeviceLink<T: Read + Write> {
    io: T,
    reader: Box<FrameReader<MAX_FRAME>>,
    /// Received bytes not yet fed to the reader (a read can return several frames).
    pending: VecDeque<u8>,
    timeout: Duration,
    next_seq: u32,
}

impl<T: Read + Write> DeviceLink<T> {
    /// A link with a 5 s response timeout.
    pub fn new(io: T) -> Self {
        Self {
            io,
            reader: Box::new(FrameReader::new()),
            pending: VecDeque::new(),
            timeout: Duration::from_secs(5),
            next_seq: 1,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    pub fn into_inner(self) -> T {
        self.io
    }

    /// A fresh sequence number (they increase by one, wrapping).
    pub fn next_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    /// Write raw bytes (fault injection, resynchronization).
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.io.write_all(bytes)?;
        self.io.flush()?;
        Ok(())
    }

    /// Send one request without waiting for its answer.
    pub fn send(&mut self, request: &Request) -> Result<(), LinkError> {
        let frame = encode_request(request)?;
        self.send_bytes(&frame)
    }

    /// The next response from the device, whatever it answers, within the timeout.
    pub fn recv(&mut self) -> Result<Response, LinkError> {
        let deadline = Instant::now() + self.timeout;
        let mut buf = [0u8; 512];
        loop {
            while let Some(byte) = self.pending.pop_front() {
                match self.reader.feed(byte) {
                    Feed::Pending => {}
                    Feed::Frame(n) => {
                        return decode_frame::<Response>(self.reader.frame(n))
                            .map_err(LinkError::BadFrame)
                    }
                    Feed::Overflow => return Err(LinkError::BadFrame(FrameError::TooLong)),
                }
            }
            if Instant::now() > deadline {
                return Err(LinkError::Timeout(self.timeout));
            }
            match self.io.read(&mut buf) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => self.pending.extend(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LinkError::Io(e)),
            }
        }
    }

    /// Send `request` and return the device's answer to it. An `Error` response with the
    /// request's seq (e.g. `NoPolicy`) is a valid answer and returned as `Ok`.
    pub fn request(&mut self, request: &Request) -> Result<Response, LinkError> {
        let expected = request_seq(request);
        self.send(request)?;
        let response = self.recv()?;
        match response_seq(&response) {
            Some(seq) if seq == expected => Ok(response),
            None => match response {
                Response::Error { code, .. } => Err(LinkError::FrameRejected(code)),
                other => Err(LinkError::UnexpectedResponse(Box::new(other))),
            },
            Some(_) => Err(LinkError::OutOfSequence {
                expected,
                got: Box::new(response),
            }),
        }
    }

    /// Compute one action on the device.
    pub fn act(&mut self, obs: &[f32], mode: NoiseMode) -> Result<DeviceAction, LinkError> {
        let seq = self.next_seq();
        let obs = heapless::Vec::from_slice(obs)
            .map_err(|_| LinkError::Encode(FrameError::BufferTooSmall))?;
        match self.request(&Request::Act { seq, mode, obs })? {
            Response::Action { action, cost, .. } => Ok(DeviceAction {
                action: action.to_vec(),
                cost,
            }),
            Response::Error { code, .. } => Err(LinkError::Device { seq, code }),
            other => Err(LinkError::UnexpectedResponse(Box::new(other))),
        }
    }

    /// Ask the device to describe itself (`Info`, or `Error` with the device's reason).
    pub fn info(&mut self) -> Result<Response, LinkError> {
        let seq = self.next_seq();
        self.request(&Request::Info { seq })
    }

    /// Establish the link after boot or after a fault: close any partial frame the device
    /// holds (a lone 0x00 is idle on the line), then repeat `Info` until its answer comes
    /// back, discarding stale answers and frame errors. Returns that answer (`Info`, or an
    /// `Error` such as `NoPolicy`). Bytes sent while the device was still booting may have
    /// been dropped by its UART; this is what makes the first real request safe.
    pub fn sync(&mut self, within: Duration) -> Result<Response, LinkError> {
        self.sync_collect(within).map(|s| s.answer)
    }

    /// [`DeviceLink::sync`], also returning everything the device said before the answer
    /// (its replies to earlier traffic, e.g. frame errors for injected faults), except the
    /// answers to this sync's own earlier `Info` attempts.
    pub fn sync_collect(&mut self, within: Duration) -> Result<Synced, LinkError> {
        let deadline = Instant::now() + within;
        let saved = self.timeout;
        self.timeout = Duration::from_millis(250).min(within);
        let mut skipped = Vec::new();
        let mut asked = Vec::new();
        let result = loop {
            let seq = self.next_seq();
            asked.push(seq);
            let sent = self
                .send_bytes(&[0])
                .and_then(|_| self.send(&Request::Info { seq }));
            if let Err(e) = sent {
                break Err(e);
            }
            let answer = loop {
                match self.recv() {
                    Ok(r) if response_seq(&r) == Some(seq) => break Some(Ok(r)),
                    Ok(r) if response_seq(&r).is_some_and(|s| asked.contains(&s)) => continue,
                    Ok(r) => skipped.push(Ok(r)),
                    Err(LinkError::BadFrame(e)) => skipped.push(Err(e)),
                    Err(LinkError::Timeout(_)) => break None,
                    Err(e) => break Some(Err(e)),
                }
            };
            if let Some(answer) = answer {
                break answer;
            }
            if Instant::now() > deadline {
                break Err(LinkError::Timeout(within));
            }
        };
        self.timeout = saved;
        self.pending.clear();
        self.reader.clear();
        result.map(|answer| Synced { answer, skipped })
    }
}

/// The outcome of [`DeviceLink::sync_collect`].
#[derive(Debug, Clone, PartialEq)]
pub struct Synced {
    /// The answer to the `Info` that established the link.
    pub answer: Response,
    /// What the device sent before it, in order: responses, or frames the host could not
    /// decode.
    pub skipped: Vec<Result<Response, FrameError>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A fake device on the other end of an in-memory pipe: answers each request frame
    /// with a scripted response.
    struct Scripted {
        to_host: VecDeque<u8>,
        reader: FrameReader<MAX_FRAME>,
        answer: Box<dyn FnMut(Request) -> Vec<Response>>,
        sent: mpsc::Sender<Vec<u8>>,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.to_host.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.to_host.len()).min(7);
            for b in &mut buf[..n] {
                *b = self.to_host.pop_front().unwrap();
            }
            Ok(n)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.sent.send(buf.to_vec()); // the test may not listen
            for &b in buf {
                if let Feed::Frame(n) = self.reader.feed(b) {
                    if let Ok(request) = decode_frame::<Request>(self.reader.frame(n)) {
                        for response in (self.answer)(request) {
                            let mut scratch = vec![0u8; MAX_MESSAGE];
                            let mut out = vec![0u8; MAX_FRAME];
                            self.to_host
                                .extend(encode_frame(&response, &mut scratch, &mut out).unwrap());
                        }
                    }
                }
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn scripted(
        answer: impl FnMut(Request) -> Vec<Response> + 'static,
    ) -> (DeviceLink<Scripted>, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel();
        let device = Scripted {
            to_host: VecDeque::new(),
            reader: FrameReader::new(),
            answer: Box::new(answer),
            sent: tx,
        };
        (
            DeviceLink::new(device).with_timeout(Duration::from_millis(50)),
            rx,
        )
    }

    #[test]
    fn act_round_trip_and_sequence_numbers() {
        let (mut link, _) = scripted(|r| match r {
            Request::Act { seq, obs, .. } => {
                vec![Response::Action {
                    seq,
                    action: obs.iter().map(|x| x * 2.0).collect(),
                    cost: 1234,
                }]
            }
            _ => vec![],
        });
        let a = link.act(&[1.0, -2.5], NoiseMode::Deterministic).unwrap();
        assert_eq!(
            a,
            DeviceAction {
                action: vec![2.0, -5.0],
                cost: 1234
            }
        );
        let b = link.act(&[0.5], NoiseMode::Stochastic { seed: 1 }).unwrap();
        assert_eq!(b.action, vec![1.0]);
    }

    #[test]
    fn wrong_sequence_numbers_and_frame_errors_are_errors() {
        let (mut link, _) = scripted(|r| {
            vec![Response::ResetDone {
                seq: request_seq(&r) + 1,
            }]
        });
        match link.request(&Request::Reset { seq: 5 }) {
            Err(LinkError::OutOfSequence { expected: 5, got }) => {
                assert_eq!(*got, Response::ResetDone { seq: 6 })
            }
            other => panic!("{other:?}"),
        }
        let (mut link, _) = scripted(|_| {
            vec![Response::Error {
                seq: None,
                code: ErrorCode::CorruptFrame,
            }]
        });
        assert!(matches!(
            link.info(),
            Err(LinkError::FrameRejected(ErrorCode::CorruptFrame))
        ));
        let (mut link, _) = scripted(|r| {
            vec![Response::Error {
                seq: Some(request_seq(&r)),
                code: ErrorCode::NoPolicy,
            }]
        });
        assert!(matches!(
            link.act(&[1.0], NoiseMode::Deterministic),
            Err(LinkError::Device {
                code: ErrorCode::NoPolicy,
                ..
            })
        ));
        assert!(matches!(
            link.info(),
            Ok(Response::Error {
                code: ErrorCode::NoPolicy,
                ..
            })
        ));
    }

    #[test]
    fn silence_times_out() {
        let (mut link, _) = scripted(|_| vec![]);
        let t = Instant::now();
        assert!(matches!(link.info(), Err(LinkError::Timeout(_))));
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn sync_skips_stale_answers_and_sends_a_delimiter_first() {
        let mut calls = 0;
        let (mut link, sent) = scripted(move |r| {
            calls += 1;
            match calls {
                // First attempt "lost" (no answer), second answered after junk.
                1 => vec![],
                _ => vec![
                    Response::Error {
                        seq: None,
                        code: ErrorCode::CorruptFrame,
                    },
                    Response::ResetDone { seq: 999 },
                    Response::Error {
                        seq: Some(request_seq(&r)),
                        code: ErrorCode::NoPolicy,
                    },
                ],
            }
        });
        let answer = link.sync(Duration::from_secs(2)).unwrap();
        assert!(matches!(
            answer,
            Response::Error {
                code: ErrorCode::NoPolicy,
                ..
            }
        ));
        assert_eq!(sent.recv().unwrap(), vec![0]);
        assert_eq!(
            link.timeout(),
            Duration::from_millis(50),
            "sync restores the timeout"
        );
    }

    #[test]
    fn oversized_observations_are_refused_locally() {
        let (mut link, _) = scripted(|_| vec![]);
        let obs = vec![0.0; runtime::MAX_OBS + 1];
        assert!(matches!(
            link.act(&obs, NoiseMode::Deterministic),
            Err(LinkError::Encode(_))
        ));
    }
}
