use core::convert::Infallible;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use embedded_io::{Read, ReadReady, Write};
use runtime::blob::{blob_hash, f32_at};
use runtime::golden::GoldenSet;
use runtime::noise::SplitMix64;
use runtime::wire::{
    decode_frame, encode_frame, CostUnit, ErrorCode, Feed, FrameReader, Request, Response,
    MAX_FRAME, MAX_MESSAGE,
};
use runtime::{BlobError, NoiseMode, Policy, Scratch, MAX_ACT};

use super::*;

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
            Feed::Frame(n) => responses.push(decode_frame::<Response>(reader.frame(n)).unwrap()),
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

/// A PWM channel whose duty the test reads while the controller owns the actuator.
struct SharedChannel(Rc<Cell<u16>>);

impl embedded_hal::pwm::ErrorType for SharedChannel {
    type Error = Infallible;
}

impl embedded_hal::pwm::SetDutyCycle for SharedChannel {
    fn max_duty_cycle(&self) -> u16 {
        1000
    }
    fn set_duty_cycle(&mut self, duty: u16) -> Result<(), Infallible> {
        self.0.set(duty);
        Ok(())
    }
}

/// The controller driving PWM channels through `PwmActuator`: the safe duty at boot, the
/// device's own action mapped through the blob's bounds after `Act`, and the safe duty
/// again after `Reset`.
#[test]
fn pwm_outputs_follow_the_controller() {
    let duties: Vec<Rc<Cell<u16>>> = (0..6).map(|_| Rc::new(Cell::new(7))).collect();
    let mut channels: Vec<SharedChannel> =
        duties.iter().map(|d| SharedChannel(d.clone())).collect();
    let [a, b, c2, d, e, f] = channels.as_mut_slice() else {
        unreachable!()
    };
    let mut pwm = PwmActuator::new([a, b, c2, d, e, f], 0.5);
    let policy = Policy::from_bytes(FIXTURE).unwrap();
    pwm.set_policy_bounds(&policy).unwrap();
    let meta = &policy.blob().meta;
    let (low, high): (Vec<f32>, Vec<f32>) = (0..6)
        .map(|i| (f32_at(meta.action_low, i), f32_at(meta.action_high, i)))
        .unzip();
    let read = || duties.iter().map(|d| d.get()).collect::<Vec<u16>>();

    let mut link = MockLink::new();
    let mut buffers = Buffers::new();
    let config = Config {
        watchdog_ticks: WATCHDOG,
        firmware_version: "0.1.0+unit-test",
    };
    let mut c = Controller::new(
        FIXTURE,
        None,
        &mut buffers,
        MockClock::default(),
        pwm,
        config,
    );
    assert_eq!(read(), [500; 6], "boots at the safe duty");
    let obs = random_obs(&mut SplitMix64::new(21), 17);
    let got = exchange(
        &mut c,
        &mut link,
        &frame(&act(1, &obs, NoiseMode::Deterministic)),
    );
    let [Response::Action { action, .. }] = got.as_slice() else {
        panic!("{got:?}")
    };
    let expect: Vec<u16> = (action.iter().zip(low.iter().zip(&high)))
        .map(|(&a, (&lo, &hi))| ((a - lo) * (1000.0 / (hi - lo)) + 0.5).clamp(0.0, 1000.0) as u16)
        .collect();
    assert_eq!(read(), expect);
    assert_ne!(read(), [500; 6], "a computed action moves the outputs");
    exchange(&mut c, &mut link, &frame(&Request::Reset { seq: 2 }));
    assert_eq!(read(), [500; 6]);
}
