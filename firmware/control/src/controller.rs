//! The protocol server: frames in, requests decoded, the policy run, responses out, and
//! the safe state on every failure path.

use embedded_io::{Read, ReadReady, Write};
use runtime::blob::blob_hash;
use runtime::golden::GoldenSet;
use runtime::wire::{
    decode_frame, encode_frame, ErrorCode, Feed, FrameReader, Request, Response, MAX_FRAME,
};
use runtime::{ActError, BlobError, Policy, Scratch, MAX_ACT};

use crate::{Actuator, Config, CostClock, RESPONSE_FRAME, RESPONSE_MESSAGE, RX_CHUNK};

/// Counters for diagnostics (a debugger or a log can read them); `Reset` clears them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Frames that decoded as requests.
    pub requests: u32,
    /// Actions computed and applied.
    pub actions: u32,
    /// Frames dropped for COBS, CRC or postcard errors.
    pub corrupt_frames: u32,
    /// Frames dropped for exceeding the receive buffer.
    pub oversized_frames: u32,
    /// Requests answered with an error (bad observation, no policy, no golden vectors).
    pub rejected: u32,
    /// Times link silence forced the safe action.
    pub watchdog_trips: u32,
    /// Responses that did not fit the transmit buffer (none can; kept to prove it).
    pub unsent: u32,
}

/// The controller's large working memory, kept in a `static` on the MCU.
pub struct Buffers {
    reader: FrameReader<MAX_FRAME>,
    scratch: Scratch,
    message: [u8; RESPONSE_MESSAGE],
    frame: [u8; RESPONSE_FRAME],
}

impl Buffers {
    pub const fn new() -> Self {
        Self {
            reader: FrameReader::new(),
            scratch: Scratch::new(),
            message: [0; RESPONSE_MESSAGE],
            frame: [0; RESPONSE_FRAME],
        }
    }
}

impl Default for Buffers {
    fn default() -> Self {
        Self::new()
    }
}

/// The protocol server around one embedded policy blob.
pub struct Controller<'a, C: CostClock, A: Actuator> {
    /// The validated policy, or why the blob was refused (the safe state).
    policy: Result<Policy<'a>, BlobError>,
    blob_hash: u32,
    /// Golden vectors of this blob (written by the exporter), re-run on `SelfTest`.
    golden: Option<GoldenSet<'a>>,
    buffers: &'a mut Buffers,
    clock: C,
    actuator: A,
    config: Config<'a>,
    /// What the actuator outputs now (zeros when safe; empty without a policy).
    output: heapless::Vec<f32, MAX_ACT>,
    /// Whether the output is a computed action (the watchdog is armed).
    active: bool,
    /// Clock reading when the last action was applied.
    last_valid: u32,
    stats: Stats,
}

impl<'a, C: CostClock, A: Actuator> Controller<'a, C, A> {
    /// Validate `blob` and start in the safe state. A blob that fails validation is not an
    /// error here: the controller then answers every request with `NoPolicy` and keeps the
    /// outputs at zero, so a bad flash image can never move the robot.
    ///
    /// `golden` are the exporter's golden vectors for this blob, if any were embedded
    /// (see [`golden_for`](crate::golden_for)); without them `SelfTest` answers `NoGoldenVectors`.
    pub fn new(
        blob: &'a [u8],
        golden: Option<GoldenSet<'a>>,
        buffers: &'a mut Buffers,
        clock: C,
        mut actuator: A,
        config: Config<'a>,
    ) -> Self {
        let policy = Policy::from_bytes(blob);
        let mut output = heapless::Vec::new();
        if let Ok(p) = &policy {
            // act_dim ≤ MAX_ACT is a validated blob invariant, so this cannot fail.
            output.resize(p.act_dim(), 0.0).ok();
        }
        actuator.safe();
        buffers.reader.clear();
        Self {
            policy,
            blob_hash: blob_hash(blob),
            golden,
            buffers,
            clock,
            actuator,
            config,
            output,
            active: false,
            last_valid: 0,
            stats: Stats::default(),
        }
    }

    /// The policy, if the blob was valid.
    pub fn policy(&self) -> Option<&Policy<'a>> {
        self.policy.as_ref().ok()
    }

    /// Why the blob was refused, if it was.
    pub fn policy_error(&self) -> Option<BlobError> {
        self.policy.as_ref().err().copied()
    }

    /// CRC-32 of the whole embedded blob (as the host computes it with `blob_hash`).
    pub fn blob_hash(&self) -> u32 {
        self.blob_hash
    }

    /// The action the actuator is commanded to output now.
    pub fn output(&self) -> &[f32] {
        &self.output
    }

    /// Whether the output is the safe action.
    pub fn is_safe(&self) -> bool {
        !self.active
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn actuator(&self) -> &A {
        &self.actuator
    }

    /// Serve the link once: check the watchdog, then, if bytes are waiting, read up to
    /// [`RX_CHUNK`] of them and answer every frame they complete. Call it in the main loop;
    /// it never blocks when no byte is waiting.
    pub fn poll<L>(&mut self, link: &mut L) -> Result<(), L::Error>
    where
        L: Read + Write + ReadReady,
    {
        // Checked on every call, not only when idle: a flood of garbage is not a valid
        // request and must not keep a stale action alive.
        self.check_watchdog();
        if !link.read_ready()? {
            return Ok(());
        }
        let mut chunk = [0u8; RX_CHUNK];
        let n = link.read(&mut chunk)?;
        self.receive(&chunk[..n], link)
    }

    /// Feed received bytes; every completed frame is answered on `tx` before the next
    /// byte is looked at.
    pub fn receive<W: Write>(&mut self, bytes: &[u8], tx: &mut W) -> Result<(), W::Error> {
        for &byte in bytes {
            let response = match self.buffers.reader.feed(byte) {
                Feed::Pending => continue,
                Feed::Frame(len) => match decode_frame::<Request>(self.buffers.reader.frame(len)) {
                    Ok(request) => self.handle(&request),
                    Err(e) => self.frame_error(e.code()),
                },
                Feed::Overflow => self.frame_error(ErrorCode::FrameTooLong),
            };
            self.send(&response, tx)?;
        }
        Ok(())
    }

    /// Apply the safe action if no valid `Act` arrived for `watchdog_ticks`.
    pub fn check_watchdog(&mut self) {
        if self.active
            && self.clock.now().wrapping_sub(self.last_valid) > self.config.watchdog_ticks
        {
            self.stats.watchdog_trips = self.stats.watchdog_trips.wrapping_add(1);
            #[cfg(feature = "defmt")]
            defmt::warn!(
                "link silent for {=u32} ticks: safe action (trip {=u32})",
                self.config.watchdog_ticks,
                self.stats.watchdog_trips
            );
            self.enter_safe();
        }
    }

    /// Serve one decoded request.
    pub fn handle(&mut self, request: &Request) -> Response {
        self.stats.requests = self.stats.requests.wrapping_add(1);
        let seq = match request {
            Request::Act { seq, .. }
            | Request::Info { seq }
            | Request::SelfTest { seq }
            | Request::Reset { seq } => *seq,
        };
        let policy = match &self.policy {
            Ok(policy) => policy,
            Err(_) => {
                self.enter_safe();
                return self.reject(seq, ErrorCode::NoPolicy);
            }
        };
        match request {
            Request::Act { obs, mode, .. } => {
                let mut action = heapless::Vec::<f32, MAX_ACT>::new();
                action.resize(policy.act_dim(), 0.0).ok();
                let start = self.clock.now();
                let result = policy.act(obs, *mode, &mut self.buffers.scratch, &mut action);
                let end = self.clock.now();
                match result {
                    Ok(()) => {
                        self.actuator.apply(&action);
                        self.output.clone_from(&action);
                        self.active = true;
                        self.last_valid = end;
                        self.stats.actions = self.stats.actions.wrapping_add(1);
                        Response::Action {
                            seq,
                            action,
                            cost: end.wrapping_sub(start),
                        }
                    }
                    // A request that carries no usable observation leaves no valid action
                    // for this step: holding the previous one would be a guess, so the
                    // output drops to the safe action.
                    Err(ActError::NonFiniteObservation) => {
                        self.enter_safe();
                        self.reject(seq, ErrorCode::NonFiniteObservation)
                    }
                    Err(ActError::ObservationLength | ActError::ActionLength) => {
                        self.enter_safe();
                        self.reject(seq, ErrorCode::ObservationLength)
                    }
                }
            }
            Request::Info { .. } => {
                let meta = &policy.blob().meta;
                let mut firmware_version = heapless::String::new();
                for c in self.config.firmware_version.chars() {
                    if firmware_version.push(c).is_err() {
                        break;
                    }
                }
                Response::Info {
                    seq,
                    blob_hash: self.blob_hash,
                    obs_dim: meta.obs_dim,
                    act_dim: meta.act_dim,
                    nfe: meta.nfe,
                    cost_unit: C::UNIT,
                    firmware_version,
                }
            }
            Request::SelfTest { .. } => match &self.golden {
                Some(set) if !set.is_empty() => {
                    let (vectors, mismatches) = set.check(policy, &mut self.buffers.scratch);
                    Response::SelfTest {
                        seq,
                        vectors: u16::try_from(vectors).unwrap_or(u16::MAX),
                        mismatches: u16::try_from(mismatches).unwrap_or(u16::MAX),
                    }
                }
                _ => self.reject(seq, ErrorCode::NoGoldenVectors),
            },
            Request::Reset { .. } => {
                self.enter_safe();
                self.stats = Stats::default();
                Response::ResetDone { seq }
            }
        }
    }

    fn reject(&mut self, seq: u32, code: ErrorCode) -> Response {
        self.stats.rejected = self.stats.rejected.wrapping_add(1);
        #[cfg(feature = "defmt")]
        defmt::warn!("request {=u32} refused: {}", seq, code);
        Response::Error {
            seq: Some(seq),
            code,
        }
    }

    fn frame_error(&mut self, code: ErrorCode) -> Response {
        let counter = match code {
            ErrorCode::FrameTooLong => &mut self.stats.oversized_frames,
            _ => &mut self.stats.corrupt_frames,
        };
        *counter = counter.wrapping_add(1);
        #[cfg(feature = "defmt")]
        defmt::warn!(
            "frame dropped: {} ({=u32} corrupt, {=u32} oversized so far)",
            code,
            self.stats.corrupt_frames,
            self.stats.oversized_frames
        );
        Response::Error { seq: None, code }
    }

    fn enter_safe(&mut self) {
        self.actuator.safe();
        self.output.iter_mut().for_each(|a| *a = 0.0);
        self.active = false;
    }

    fn send<W: Write>(&mut self, response: &Response, tx: &mut W) -> Result<(), W::Error> {
        let Buffers { message, frame, .. } = &mut *self.buffers;
        match encode_frame(response, message, frame) {
            Ok(bytes) => {
                tx.write_all(bytes)?;
                tx.flush()
            }
            // Every response fits by construction (see RESPONSE_MESSAGE and its test);
            // dropping is the only option that cannot panic, and it is counted.
            Err(_) => {
                self.stats.unsent = self.stats.unsent.wrapping_add(1);
                Ok(())
            }
        }
    }
}
