//! The firmware's control loop, independent of any board.
//!
//! [`Controller`] is the device side of the host-in-the-loop protocol (`runtime::wire`,
//! DESIGN §8): it splits the serial byte stream into frames, decodes [`Request`]s, runs the
//! embedded policy and answers [`Response`]s. It is generic over three small seams that
//! the board files fill in:
//!
//! - the serial link: any `embedded_io` `Read + Write + ReadReady` (a UART, USB-serial, or
//!   in-memory queues in the tests below);
//! - [`CostClock`]: the counter that prices one action (TIM2 instructions under QEMU, DWT
//!   cycles on a real board);
//! - [`Actuator`]: where actions go, and what "safe" means on the robot.
//!
//! Keeping the board out of this crate lets the whole protocol, including its failure
//! paths (corrupt frames, floods, bad observations, a rejected blob, link silence), be
//! unit-tested on the workstation: `cargo test-host` in `firmware/`.
//!
//! Memory: everything large lives in [`Buffers`], which the firmware keeps in a `static`
//! (≈ 3.5 KiB) so the stack only holds one decoded request.
#![cfg_attr(not(test), no_std)]

use embedded_io::{Read, ReadReady, Write};
use runtime::blob::blob_hash;
use runtime::golden::GoldenSet;
use runtime::wire::{
    decode_frame, encode_frame, CostUnit, ErrorCode, Feed, FrameReader, Request, Response,
    MAX_FRAME,
};
use runtime::{ActError, BlobError, Policy, Scratch, MAX_ACT};

/// Largest plain response message (postcard + CRC-32). The largest response is an
/// `Action` with `MAX_ACT` floats: tag 1 + seq ≤ 5 + length 1 + 4·32 + cost ≤ 5 + CRC 4
/// = 144 bytes; `Info` needs ≤ 42. A test encodes both at their maximum.
pub const RESPONSE_MESSAGE: usize = 160;
/// Largest encoded response frame (COBS overhead and delimiter included).
pub const RESPONSE_FRAME: usize = RESPONSE_MESSAGE + RESPONSE_MESSAGE / 254 + 2;
/// Bytes taken from the link per read. Small: a UART delivers one byte at a time anyway,
/// and this buffer lives on the stack.
pub const RX_CHUNK: usize = 64;

/// A free-running tick counter that prices each action.
pub trait CostClock {
    /// What one tick is, reported to the host in `Info`.
    const UNIT: CostUnit;
    /// The current count. It may wrap: the controller only takes wrapping differences,
    /// so intervals up to 2^32 − 1 ticks are measured correctly.
    fn now(&mut self) -> u32;
}

/// Where actions go. The controller calls exactly one of the two methods whenever the
/// commanded output changes.
pub trait Actuator {
    /// Output this action (env units, within the policy's bounds).
    fn apply(&mut self, action: &[f32]);
    /// Output the safe action: zero on every channel (no torque), the state at boot, after
    /// `Reset`, after a rejected observation, after link silence, and forever when the
    /// embedded policy is invalid.
    fn safe(&mut self);
}

/// An actuator for targets with nothing to drive (QEMU): the commanded output is still
/// tracked by [`Controller::output`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NoActuator;

impl Actuator for NoActuator {
    fn apply(&mut self, _action: &[f32]) {}
    fn safe(&mut self) {}
}

/// Fixed settings chosen by the board.
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    /// Clock ticks without a valid `Act` after which an active output falls back to the
    /// safe action (DESIGN §8). Must be below 2^31 so wrapping differences stay exact.
    pub watchdog_ticks: u32,
    /// Reported in `Info`; truncated to 16 bytes.
    pub firmware_version: &'a str,
}

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

/// The name of an error code, for log lines.
pub fn error_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::CorruptFrame => "CorruptFrame",
        ErrorCode::FrameTooLong => "FrameTooLong",
        ErrorCode::ObservationLength => "ObservationLength",
        ErrorCode::NonFiniteObservation => "NonFiniteObservation",
        ErrorCode::NoPolicy => "NoPolicy",
        ErrorCode::NoGoldenVectors => "NoGoldenVectors",
    }
}

/// Why embedded golden vectors were not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoldenProblem {
    /// The bytes are not a valid golden-vector set.
    Invalid(runtime::golden::GoldenError),
    /// The set was exported for another blob (its `blob_hash` differs).
    OtherBlob { expected: u32, found: u32 },
}

/// Parse embedded golden vectors and check that they belong to `blob`. Empty bytes mean
/// "none embedded" (`Ok(None)`).
pub fn golden_for<'a>(
    golden: &'a [u8],
    blob: &[u8],
) -> Result<Option<GoldenSet<'a>>, GoldenProblem> {
    if golden.is_empty() {
        return Ok(None);
    }
    let set = GoldenSet::parse(golden).map_err(GoldenProblem::Invalid)?;
    let expected = blob_hash(blob);
    if set.blob_hash != expected {
        return Err(GoldenProblem::OtherBlob {
            expected,
            found: set.blob_hash,
        });
    }
    Ok(Some(set))
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
    /// (see [`golden_for`]); without them `SelfTest` answers `NoGoldenVectors`.
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
        defmt::warn!("request {=u32} refused: {=str}", seq, error_name(code));
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
            "frame dropped: {=str} ({=u32} corrupt, {=u32} oversized so far)",
            error_name(code),
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

#[cfg(test)]
mod tests {
    use super::*;
    use core::convert::Infallible;
    use runtime::noise::SplitMix64;
    use runtime::wire::MAX_MESSAGE;
    use runtime::NoiseMode;
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::rc::Rc;

    /// A random but valid policy (obs 17, act 6, hidden 2×32, nfe 2), written by the host
    /// fixture generator `tests::fixture_blob(&FixtureSpec::firmware_unit_test())`.
    /// Regenerate with `FLAME_BLESS=1 cargo test -p tests --test firmware_qemu fixture_asset`
    /// in the repository root; that test also fails if this file goes stale.
    const FIXTURE: &[u8] = include_bytes!("../tests/data/fixture-17x6.blob");

    /// Ticks the mock clock advances per reading, so an action costs exactly this much.
    const TICK: u32 = 1000;
    const WATCHDOG: u32 = 50_000;

    #[derive(Clone, Default)]
    struct MockClock(Rc<Cell<u32>>);

    impl CostClock for MockClock {
        const UNIT: CostUnit = CostUnit::Cycles;
        fn now(&mut self) -> u32 {
            let t = self.0.get().wrapping_add(TICK);
            self.0.set(t);
            t
        }
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Output {
        Apply(Vec<f32>),
        Safe,
    }

    #[derive(Clone, Default)]
    struct MockActuator(Rc<RefCell<Vec<Output>>>);

    impl MockActuator {
        fn last(&self) -> Option<Output> {
            self.0.borrow().last().cloned()
        }
        fn applied(&self) -> usize {
            self.0
                .borrow()
                .iter()
                .filter(|o| matches!(o, Output::Apply(_)))
                .count()
        }
    }

    impl Actuator for MockActuator {
        fn apply(&mut self, action: &[f32]) {
            self.0.borrow_mut().push(Output::Apply(action.to_vec()));
        }
        fn safe(&mut self) {
            self.0.borrow_mut().push(Output::Safe);
        }
    }

    /// In-memory serial link: `rx` is what the host sent, `tx` what the device answered.
    /// `read_chunk` and `write_chunk` limit how much one call moves, like a real UART.
    struct MockLink {
        rx: VecDeque<u8>,
        tx: Vec<u8>,
        read_chunk: usize,
        write_chunk: usize,
    }

    impl MockLink {
        fn new() -> Self {
            Self {
                rx: VecDeque::new(),
                tx: Vec::new(),
                read_chunk: usize::MAX,
                write_chunk: usize::MAX,
            }
        }
    }

    impl embedded_io::ErrorType for MockLink {
        type Error = Infallible;
    }

    impl Read for MockLink {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
            let n = buf.len().min(self.read_chunk).min(self.rx.len());
            for b in &mut buf[..n] {
                *b = self.rx.pop_front().unwrap();
            }
            Ok(n)
        }
    }

    impl ReadReady for MockLink {
        fn read_ready(&mut self) -> Result<bool, Infallible> {
            Ok(!self.rx.is_empty())
        }
    }

    impl Write for MockLink {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
            let n = buf.len().min(self.write_chunk);
            self.tx.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> Result<(), Infallible> {
            Ok(())
        }
    }

    struct Bench {
        clock: MockClock,
        actuator: MockActuator,
        link: MockLink,
    }

    impl Bench {
        fn new() -> Self {
            Self {
                clock: MockClock::default(),
                actuator: MockActuator::default(),
                link: MockLink::new(),
            }
        }

        fn controller<'a>(
            &self,
            blob: &'a [u8],
            golden: Option<GoldenSet<'a>>,
            buffers: &'a mut Buffers,
        ) -> Controller<'a, MockClock, MockActuator> {
            let config = Config {
                watchdog_ticks: WATCHDOG,
                firmware_version: "0.1.0+unit-test",
            };
            Controller::new(
                blob,
                golden,
                buffers,
                self.clock.clone(),
                self.actuator.clone(),
                config,
            )
        }
    }

    fn frame(request: &Request) -> Vec<u8> {
        let (mut scratch, mut out) = ([0u8; MAX_MESSAGE], [0u8; MAX_FRAME]);
        encode_frame(request, &mut scratch, &mut out)
            .unwrap()
            .to_vec()
    }

    /// Push `bytes` into the link and poll until the device has consumed them all.
    fn exchange<C: CostClock, A: Actuator>(
        controller: &mut Controller<'_, C, A>,
        link: &mut MockLink,
        bytes: &[u8],
    ) -> Vec<Response> {
        link.rx.extend(bytes);
        while !link.rx.is_empty() {
            controller.poll(link).unwrap();
        }
        let mut reader = FrameReader::<RESPONSE_FRAME>::new();
        let mut responses = Vec::new();
        for b in std::mem::take(&mut link.tx) {
            match reader.feed(b) {
                Feed::Pending => {}
                Feed::Frame(n) => {
                    responses.push(decode_frame::<Response>(reader.frame(n)).unwrap())
                }
                Feed::Overflow => panic!("device sent an oversized frame"),
            }
        }
        responses
    }

    fn random_obs(rng: &mut SplitMix64, n: usize) -> heapless::Vec<f32, { runtime::MAX_OBS }> {
        (0..n)
            .map(|i| rng.next_gaussian() * [0.1, 1.0, 5.0, 20.0][i % 4])
            .collect()
    }

    fn host_action(obs: &[f32], mode: NoiseMode) -> Vec<u32> {
        let policy = Policy::from_bytes(FIXTURE).unwrap();
        let mut action = vec![0.0; policy.act_dim()];
        policy
            .act(obs, mode, &mut Scratch::new(), &mut action)
            .unwrap();
        action.iter().map(|a| a.to_bits()).collect()
    }

    fn bits(action: &[f32]) -> Vec<u32> {
        action.iter().map(|a| a.to_bits()).collect()
    }

    fn act(seq: u32, obs: &[f32], mode: NoiseMode) -> Request {
        Request::Act {
            seq,
            mode,
            obs: obs.iter().copied().collect(),
        }
    }

    fn is_frame_error(r: &Response, code: ErrorCode) -> bool {
        *r == Response::Error { seq: None, code }
    }

    #[test]
    fn fixture_is_a_valid_policy() {
        let policy = Policy::from_bytes(FIXTURE).unwrap();
        assert_eq!((policy.obs_dim(), policy.act_dim()), (17, 6));
    }

    #[test]
    fn actions_match_the_host_runtime_in_both_modes() {
        let mut bench = Bench::new();
        let mut buffers = Buffers::new();
        let mut c = bench.controller(FIXTURE, None, &mut buffers);
        assert_eq!(bench.actuator.last(), Some(Output::Safe), "boots safe");
        let mut rng = SplitMix64::new(1);
        let mut distinct = std::collections::HashSet::new();
        for seq in 0..40u32 {
            let obs = random_obs(&mut rng, 17);
            let mode = if seq % 2 == 0 {
                NoiseMode::Deterministic
            } else {
                NoiseMode::Stochastic {
                    seed: rng.next_u64(),
                }
            };
            let got = exchange(&mut c, &mut bench.link, &frame(&act(seq, &obs, mode)));
            let expect = host_action(&obs, mode);
            match got.as_slice() {
                [Response::Action {
                    seq: s,
                    action,
                    cost,
                }] => {
                    assert_eq!(*s, seq);
                    assert_eq!(bits(action), expect);
                    assert_eq!(
                        *cost, TICK,
                        "cost is the clock difference around the evaluation"
                    );
                    assert_eq!(bench.actuator.last(), Some(Output::Apply(action.to_vec())));
                    assert_eq!(bits(c.output()), expect);
                    distinct.insert(expect);
                }
                other => panic!("seq {seq}: {other:?}"),
            }
        }
        assert!(
            distinct.len() > 30,
            "actions should depend on the observation and seed"
        );
        assert!(!c.is_safe());
        assert_eq!(c.stats().actions, 40);
    }

    #[test]
    fn stochastic_mode_uses_the_requested_seed() {
        let mut bench = Bench::new();
        let mut buffers = Buffers::new();
        let mut c = bench.controller(FIXTURE, None, &mut buffers);
        let obs = random_obs(&mut SplitMix64::new(2), 17);
        let mut answers = Vec::new();
        for (seq, seed) in [(1, 5u64), (2, 5), (3, 6)] {
            let got = exchange(
                &mut c,
                &mut bench.link,
                &frame(&act(seq, &obs, NoiseMode::Stochastic { seed })),
            );
            let Response::Action { action, .. } = &got[0] else {
                panic!("{got:?}")
            };
            answers.push(bits(action));
        }
        assert_eq!(answers[0], answers[1]);
        assert_ne!(answers[0], answers[2]);
    }

    #[test]
    fn info_reports_blob_identity() {
        let mut bench = Bench::new();
        let mut buffers = Buffers::new();
        let mut c = bench.controller(FIXTURE, None, &mut buffers);
        let got = exchange(&mut c, &mut bench.link, &frame(&Request::Info { seq: 77 }));
        let policy = Policy::from_bytes(FIXTURE).unwrap();
        assert_eq!(
            got,
            vec![Response::Info {
                seq: 77,
                blob_hash: blob_hash(FIXTURE),
                obs_dim: 17,
                act_dim: 6,
                nfe: policy.blob().meta.nfe,
                cost_unit: CostUnit::Cycles,
                firmware_version: heapless::String::try_from("0.1.0+unit-test").unwrap(),
            }]
        );
    }

    /// Golden records for `inputs` as the exporter writes them, from the host runtime.
    fn golden_records(inputs: &[(Vec<f32>, NoiseMode)]) -> Vec<u8> {
        let policy = Policy::from_bytes(FIXTURE).unwrap();
        let mut records = Vec::new();
        for (obs, mode) in inputs {
            let mut action = vec![0.0; policy.act_dim()];
            policy
                .act(obs, *mode, &mut Scratch::new(), &mut action)
                .unwrap();
            runtime::golden::push_record(&mut records, *mode, obs, &action);
        }
        records
    }

    #[test]
    fn self_test_runs_golden_vectors() {
        let mut bench = Bench::new();
        let mut buffers = Buffers::new();
        let mut c = bench.controller(FIXTURE, None, &mut buffers);
        let got = exchange(
            &mut c,
            &mut bench.link,
            &frame(&Request::SelfTest { seq: 3 }),
        );
        assert_eq!(
            got,
            vec![Response::Error {
                seq: Some(3),
                code: ErrorCode::NoGoldenVectors
            }]
        );
        drop(c);

        let mut rng = SplitMix64::new(3);
        let inputs: Vec<(Vec<f32>, NoiseMode)> = (0..4)
            .map(|i| {
                let mode = if i % 2 == 0 {
                    NoiseMode::Deterministic
                } else {
                    NoiseMode::Stochastic { seed: i }
                };
                (random_obs(&mut rng, 17).to_vec(), mode)
            })
            .collect();
        let records = golden_records(&inputs);
        let set = GoldenSet {
            blob_hash: blob_hash(FIXTURE),
            obs_dim: 17,
            act_dim: 6,
            records: &records,
        };
        let mut c = bench.controller(FIXTURE, Some(set.clone()), &mut buffers);
        let got = exchange(
            &mut c,
            &mut bench.link,
            &frame(&Request::SelfTest { seq: 4 }),
        );
        assert_eq!(
            got,
            vec![Response::SelfTest {
                seq: 4,
                vectors: 4,
                mismatches: 0
            }]
        );
        drop(c);

        // One flipped bit in one expected action is one mismatch.
        let mut wrong = records.clone();
        let last = set.record_len() * 3 - 1;
        wrong[last] ^= 1;
        let set = GoldenSet {
            records: &wrong,
            ..set
        };
        let mut c = bench.controller(FIXTURE, Some(set), &mut buffers);
        let got = exchange(
            &mut c,
            &mut bench.link,
            &frame(&Request::SelfTest { seq: 5 }),
        );
        assert_eq!(
            got,
            vec![Response::SelfTest {
                seq: 5,
                vectors: 4,
                mismatches: 1
            }]
        );
        assert_eq!(
            bench.actuator.applied(),
            0,
            "self-test must not move the actuator"
        );
    }

    #[test]
    fn embedded_golden_vectors_must_belong_to_the_blob() {
        let records = golden_records(&[(vec![0.5; 17], NoiseMode::Deterministic)]);
        let encode = |hash: u32| {
            postcard::to_allocvec(&GoldenSet {
                blob_hash: hash,
                obs_dim: 17,
                act_dim: 6,
                records: &records,
            })
            .unwrap()
        };
        let good = encode(blob_hash(FIXTURE));
        assert_eq!(
            golden_for(&good, FIXTURE).unwrap().map(|s| s.len()),
            Some(1)
        );
        assert!(golden_for(&[], FIXTURE).unwrap().is_none());
        let other = encode(0x1234_5678);
        assert_eq!(
            golden_for(&other, FIXTURE).unwrap_err(),
            GoldenProblem::OtherBlob {
                expected: blob_hash(FIXTURE),
                found: 0x1234_5678
            }
        );
        assert!(matches!(
            golden_for(&good[..good.len() - 3], FIXTURE),
            Err(GoldenProblem::Invalid(_))
        ));
    }

    #[test]
    fn reset_applies_the_safe_action_and_clears_counters() {
        let mut bench = Bench::new();
        let mut buffers = Buffers::new();
        let mut c = bench.controller(FIXTURE, None, &mut buffers);
        let obs = random_obs(&mut SplitMix64::new(4), 17);
        exchange(&mut c, &mut bench.link, &[0x55, 0x00]); // one corrupt frame
        exchange(
            &mut c,
            &mut bench.link,
            &frame(&act(1, &obs, NoiseMode::Deterministic)),
        );
        assert!(!c.is_safe());
        assert_eq!(c.stats().corrupt_frames, 1);
        let got = exchange(&mut c, &mut bench.link, &frame(&Request::Reset { seq: 2 }));
        assert_eq!(got, vec![Response::ResetDone { seq: 2 }]);
        assert!(c.is_safe());
        assert_eq!(c.output(), &[0.0; 6]);
        assert_eq!(bench.actuator.last(), Some(Output::Safe));
        assert_eq!(c.stats(), Stats::default());
    }

    #[test]
    fn bad_observations_are_rejected_and_drop_to_safe() {
        let mut bench = Bench::new();
        let mut buffers = Buffers::new();
        let mut c = bench.controller(FIXTURE, None, &mut buffers);
        let good = random_obs(&mut SplitMix64::new(5), 17);
        let cases: Vec<(Vec<f32>, ErrorCode)> = vec![
            (
                {
                    let mut o = good.to_vec();
                    o[3] = f32::NAN;
                    o
                },
                ErrorCode::NonFiniteObservation,
            ),
            (
                {
                    let mut o = good.to_vec();
                    o[16] = f32::INFINITY;
                    o
                },
                ErrorCode::NonFiniteObservation,
            ),
            (
                {
                    let mut o = good.to_vec();
                    o[0] = f32::NEG_INFINITY;
                    o
                },
                ErrorCode::NonFiniteObservation,
            ),
            (good[..16].to_vec(), ErrorCode::ObservationLength),
            ([&good[..], &[1.0]].concat(), ErrorCode::ObservationLength),
            (Vec::new(), ErrorCode::ObservationLength),
        ];
        for (i, (obs, code)) in cases.iter().enumerate() {
            let seq = 10 + i as u32;
            exchange(
                &mut c,
                &mut bench.link,
                &frame(&act(100, &good, NoiseMode::Deterministic)),
            );
            assert!(!c.is_safe());
            let got = exchange(
                &mut c,
                &mut bench.link,
                &frame(&act(seq, obs, NoiseMode::Deterministic)),
            );
            assert_eq!(
                got,
                vec![Response::Error {
                    seq: Some(seq),
                    code: *code
                }],
                "case {i}"
            );
            assert!(c.is_safe(), "case {i}");
            assert_eq!(bench.actuator.last(), Some(Output::Safe));
            assert!(c.output().iter().all(|a| *a == 0.0));
        }
        // And the next good request is served.
        let got = exchange(
            &mut c,
            &mut bench.link,
            &frame(&act(99, &good, NoiseMode::Deterministic)),
        );
        let Response::Action {
            seq: 99, action, ..
        } = &got[0]
        else {
            panic!("{got:?}")
        };
        assert_eq!(bits(action), host_action(&good, NoiseMode::Deterministic));
    }

    #[test]
    fn garbage_between_frames_resynchronizes() {
        let mut bench = Bench::new();
        let mut buffers = Buffers::new();
        let mut c = bench.controller(FIXTURE, None, &mut buffers);
        let mut rng = SplitMix64::new(6);
        for round in 0..20u32 {
            // Garbage without a delimiter is glued to the next frame and spoils it; a
            // delimiter closes it off, then a good frame must be answered normally.
            let garbage: Vec<u8> = (0..1 + rng.next_u64() % 200)
                .map(|_| (rng.next_u64() % 255 + 1) as u8)
                .collect();
            let obs = random_obs(&mut rng, 17);
            let mut stream = garbage.clone();
            stream.push(0);
            stream.extend(frame(&act(round, &obs, NoiseMode::Deterministic)));
            let got = exchange(&mut c, &mut bench.link, &stream);
            assert_eq!(got.len(), 2, "round {round}: {got:?}");
            assert!(is_frame_error(&got[0], ErrorCode::CorruptFrame));
            let Response::Action { seq, action, .. } = &got[1] else {
                panic!("{got:?}")
            };
            assert_eq!(*seq, round);
            assert_eq!(bits(action), host_action(&obs, NoiseMode::Deterministic));

            // Garbage with embedded zeros: any number of errors, never a reply with a seq,
            // and the following frame is answered.
            let garbage: Vec<u8> = (0..rng.next_u64() % 300)
                .map(|_| rng.next_u64() as u8)
                .collect();
            let mut stream = garbage;
            stream.push(0);
            stream.extend(frame(&Request::Info { seq: 1000 + round }));
            let got = exchange(&mut c, &mut bench.link, &stream);
            let (last, errors) = got.split_last().unwrap();
            assert!(
                errors
                    .iter()
                    .all(|r| matches!(r, Response::Error { seq: None, .. })),
                "{errors:?}"
            );
            assert!(
                matches!(last, Response::Info { seq, .. } if *seq == 1000 + round),
                "{last:?}"
            );
        }
    }

    #[test]
    fn truncated_frames_are_reported() {
        let mut bench = Bench::new();
        let mut buffers = Buffers::new();
        let mut c = bench.controller(FIXTURE, None, &mut buffers);
        let obs = random_obs(&mut SplitMix64::new(7), 17);
        let good = frame(&act(1, &obs, NoiseMode::Deterministic));
        for cut in 1..good.len() - 1 {
            let mut stream = good[..cut].to_vec();
            stream.push(0);
            stream.extend(&good);
            let got = exchange(&mut c, &mut bench.link, &stream);
            assert_eq!(got.len(), 2, "cut {cut}");
            assert!(
                is_frame_error(&got[0], ErrorCode::CorruptFrame),
                "cut {cut}: {got:?}"
            );
            assert!(matches!(got[1], Response::Action { seq: 1, .. }));
        }
    }

    #[test]
    fn bit_flips_never_produce_a_wrong_action() {
        let mut bench = Bench::new();
        let mut buffers = Buffers::new();
        let mut c = bench.controller(FIXTURE, None, &mut buffers);
        let obs = random_obs(&mut SplitMix64::new(8), 17);
        let expect = host_action(&obs, NoiseMode::Deterministic);
        let good = frame(&act(5, &obs, NoiseMode::Deterministic));
        let mut caught = 0;
        let total = good.len() * 8;
        for bit in 0..total {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            bad.push(0); // close the frame even if the flip hit the delimiter
            bad.extend(frame(&Request::Info { seq: 6 }));
            let got = exchange(&mut c, &mut bench.link, &bad);
            let (last, rest) = got.split_last().unwrap();
            assert!(
                matches!(last, Response::Info { seq: 6, .. }),
                "bit {bit}: {got:?}"
            );
            for r in rest {
                match r {
                    Response::Error {
                        seq: None,
                        code: ErrorCode::CorruptFrame,
                    } => caught += 1,
                    // A flip that only hits the delimiter leaves the frame intact.
                    Response::Action { seq: 5, action, .. } => {
                        assert_eq!(bits(action), expect, "bit {bit}")
                    }
                    other => panic!("bit {bit}: {other:?}"),
                }
            }
        }
        assert!(caught >= total - 8, "caught {caught} of {total}");
    }

    #[test]
    fn oversized_flood_is_reported_once_then_resynchronizes() {
        let mut bench = Bench::new();
        let mut buffers = Buffers::new();
        let mut c = bench.controller(FIXTURE, None, &mut buffers);
        let obs = random_obs(&mut SplitMix64::new(9), 17);
        let mut stream = vec![0xA5; 3 * MAX_FRAME];
        stream.push(0);
        stream.extend(frame(&act(1, &obs, NoiseMode::Deterministic)));
        let got = exchange(&mut c, &mut bench.link, &stream);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(is_frame_error(&got[0], ErrorCode::FrameTooLong));
        assert!(matches!(got[1], Response::Action { seq: 1, .. }));
        assert_eq!(c.stats().oversized_frames, 1);

        // A flood without its own delimiter swallows the next frame; the one after is served.
        let mut stream = vec![0x5A; 2 * MAX_FRAME];
        stream.extend(frame(&act(2, &obs, NoiseMode::Deterministic)));
        stream.extend(frame(&act(3, &obs, NoiseMode::Deterministic)));
        let got = exchange(&mut c, &mut bench.link, &stream);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(is_frame_error(&got[0], ErrorCode::FrameTooLong));
        assert!(matches!(got[1], Response::Action { seq: 3, .. }));
    }

    #[test]
    fn a_bad_blob_keeps_the_device_safe() {
        let mut flipped = FIXTURE.to_vec();
        flipped[FIXTURE.len() / 2] ^= 0x10;
        let mut bad_version = FIXTURE.to_vec();
        bad_version[4] = 9;
        let blobs: Vec<(&[u8], BlobError)> = vec![
            (&[], BlobError::Truncated),
            (&FIXTURE[..FIXTURE.len() - 1], BlobError::Truncated),
            (
                &flipped,
                BlobError::BadCrc {
                    stored: 0,
                    computed: 0,
                },
            ),
            (&bad_version, BlobError::UnsupportedVersion(9)),
        ];
        for (blob, want) in blobs {
            let mut bench = Bench::new();
            let mut buffers = Buffers::new();
            let mut c = bench.controller(blob, None, &mut buffers);
            let err = c.policy_error().expect("blob must be refused");
            assert_eq!(
                core::mem::discriminant(&err),
                core::mem::discriminant(&want)
            );
            assert!(c.policy().is_none());
            assert_eq!(bench.actuator.last(), Some(Output::Safe));
            let obs = random_obs(&mut SplitMix64::new(10), 17);
            let mut stream = frame(&act(1, &obs, NoiseMode::Deterministic));
            stream.extend(frame(&Request::Info { seq: 2 }));
            stream.extend(frame(&Request::SelfTest { seq: 3 }));
            stream.extend(frame(&Request::Reset { seq: 4 }));
            let got = exchange(&mut c, &mut bench.link, &stream);
            let expect: Vec<Response> = (1..=4)
                .map(|seq| Response::Error {
                    seq: Some(seq),
                    code: ErrorCode::NoPolicy,
                })
                .collect();
            assert_eq!(got, expect);
            assert_eq!(
                bench.actuator.applied(),
                0,
                "a bad blob must never drive the actuator"
            );
            assert!(c.output().iter().all(|a| *a == 0.0));
            assert!(c.is_safe());
            // Frame errors are still reported as such.
            let got = exchange(&mut c, &mut bench.link, &[1, 2, 3, 0]);
            assert!(is_frame_error(&got[0], ErrorCode::CorruptFrame));
        }
    }

    #[test]
    fn watchdog_drops_to_safe_after_link_silence() {
        let mut bench = Bench::new();
        let mut buffers = Buffers::new();
        let mut c = bench.controller(FIXTURE, None, &mut buffers);
        let obs = random_obs(&mut SplitMix64::new(11), 17);
        exchange(
            &mut c,
            &mut bench.link,
            &frame(&act(1, &obs, NoiseMode::Deterministic)),
        );
        assert!(!c.is_safe());
        // Polls with nothing to read advance the mock clock by one tick each.
        for _ in 0..WATCHDOG / TICK - 1 {
            c.poll(&mut bench.link).unwrap();
        }
        assert!(!c.is_safe(), "still within the timeout");
        let before = c.stats().watchdog_trips;
        for _ in 0..2 {
            c.poll(&mut bench.link).unwrap();
        }
        assert!(c.is_safe());
        assert_eq!(c.stats().watchdog_trips, before + 1);
        assert_eq!(bench.actuator.last(), Some(Output::Safe));
        assert_eq!(c.output(), &[0.0; 6]);

        // A flood of garbage is not a valid request: it does not keep the output alive.
        exchange(
            &mut c,
            &mut bench.link,
            &frame(&act(2, &obs, NoiseMode::Deterministic)),
        );
        assert!(!c.is_safe());
        bench.link.rx.extend(std::iter::repeat_n(
            0x77u8,
            10 * WATCHDOG as usize / TICK as usize,
        ));
        bench.link.read_chunk = 1;
        while !bench.link.rx.is_empty() {
            c.poll(&mut bench.link).unwrap();
        }
        assert!(c.is_safe());
    }

    #[test]
    fn chunked_reads_and_short_writes_give_the_same_answers() {
        let obs = random_obs(&mut SplitMix64::new(12), 17);
        let mut stream = frame(&act(1, &obs, NoiseMode::Stochastic { seed: 42 }));
        stream.extend([9, 9, 9, 0]);
        stream.extend(frame(&Request::Info { seq: 2 }));
        let mut answers = Vec::new();
        for (read_chunk, write_chunk) in [(usize::MAX, usize::MAX), (1, 1), (3, 7)] {
            let mut bench = Bench::new();
            bench.link.read_chunk = read_chunk;
            bench.link.write_chunk = write_chunk;
            let mut buffers = Buffers::new();
            let mut c = bench.controller(FIXTURE, None, &mut buffers);
            answers.push(exchange(&mut c, &mut bench.link, &stream));
        }
        assert_eq!(answers[0].len(), 3);
        assert!(answers.iter().all(|a| *a == answers[0]));
    }

    #[test]
    fn largest_responses_fit_the_buffers() {
        let mut message = [0u8; RESPONSE_MESSAGE];
        let mut out = [0u8; RESPONSE_FRAME];
        let action: heapless::Vec<f32, MAX_ACT> =
            (0..MAX_ACT).map(|_| f32::from_bits(u32::MAX)).collect();
        let big = Response::Action {
            seq: u32::MAX,
            action,
            cost: u32::MAX,
        };
        assert!(encode_frame(&big, &mut message, &mut out).is_ok());
        let info = Response::Info {
            seq: u32::MAX,
            blob_hash: u32::MAX,
            obs_dim: u16::MAX,
            act_dim: u16::MAX,
            nfe: u16::MAX,
            cost_unit: CostUnit::Instructions,
            firmware_version: heapless::String::try_from("0123456789abcdef").unwrap(),
        };
        assert!(encode_frame(&info, &mut message, &mut out).is_ok());
        // The margin is real: a buffer 20 bytes smaller would not hold the Action.
        assert!(encode_frame(&big, &mut message[..RESPONSE_MESSAGE - 20], &mut out).is_err());
    }

    #[test]
    fn long_firmware_versions_are_truncated() {
        let bench = Bench::new();
        let mut buffers = Buffers::new();
        let config = Config {
            watchdog_ticks: WATCHDOG,
            firmware_version: "0.1.0+a-very-long-board-name",
        };
        let mut c = Controller::new(
            FIXTURE,
            None,
            &mut buffers,
            bench.clock.clone(),
            bench.actuator.clone(),
            config,
        );
        let Response::Info {
            firmware_version, ..
        } = c.handle(&Request::Info { seq: 1 })
        else {
            panic!()
        };
        assert_eq!(firmware_version.as_str(), "0.1.0+a-very-lon");
    }
}
