//! The firmware in QEMU against the host runtime: same blob, same observations, same
//! mode and seed ⇒ the same f32 bit patterns (DESIGN §6 "bit-exact"), plus the protocol's
//! failure paths (DESIGN §8, §9) on the real firmware image.
//!
//! Each test builds the firmware with its blob (`tools::qemu::build_firmware`, one build
//! per distinct blob, shared between tests), boots it in `qemu-system-arm -M netduinoplus2
//! -icount shift=0` under `timeout`, and talks to its UART over a unix socket.
//! Needs `qemu-system-arm` and the `thumbv7em-none-eabihf` target (scripts/setup.sh).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use runtime::blob::blob_hash;
use runtime::noise::SplitMix64;
use runtime::wire::{CostUnit, ErrorCode, Request, Response, MAX_FRAME};
use runtime::{NoiseMode, Policy, Scratch};
use tests::{
    fixture_blob, golden_vectors, random_observation, with_edge_output_stages, with_input_gain,
    with_int16_edge_layers, FixtureSpec,
};
use tools::link::{encode_request, DeviceLink, LinkError};
use tools::qemu::{build_firmware, FirmwareBuild, Qemu, QemuOptions};

/// Golden vectors embedded with the small fixture.
const GOLDEN_VECTORS: usize = 32;

/// Firmware ELFs already built in this test process, by blob and golden-vector CRC.
type BuiltImages = Mutex<HashMap<(u32, Option<u32>), PathBuf>>;

fn firmware_for(blob: &[u8], golden: Option<&[u8]>) -> PathBuf {
    static BUILT: OnceLock<BuiltImages> = OnceLock::new();
    let key = (blob_hash(blob), golden.map(blob_hash));
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(elf) = built.get(&key) {
        return elf.clone();
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let name = match key.1 {
        Some(g) => format!("firmware-qemu-{:08x}-golden-{g:08x}", key.0),
        None => format!("firmware-qemu-{:08x}", key.0),
    };
    let blob_path = dir.join(format!("{name}.blob"));
    std::fs::write(&blob_path, blob).unwrap();
    let mut build = FirmwareBuild::qemu(Some(&blob_path));
    if let Some(golden) = golden {
        let path = dir.join(format!("{name}.golden"));
        std::fs::write(&path, golden).unwrap();
        build.golden = Some(path);
    }
    let elf = build_firmware(&build).unwrap_or_else(|e| panic!("{e:#}"));
    built.insert(key, elf.clone());
    elf
}

/// Boot the firmware for `blob` and synchronize with it; returns the link and the answer
/// to the first `Info`.
fn boot(blob: &[u8], golden: Option<&[u8]>) -> (DeviceLink<Qemu>, Response) {
    let elf = firmware_for(blob, golden);
    let mut options = QemuOptions::new(&elf);
    options.time_limit = Duration::from_secs(240);
    let qemu = Qemu::start(&options).unwrap_or_else(|e| panic!("{e:#}"));
    let mut link = DeviceLink::new(qemu).with_timeout(Duration::from_secs(20));
    let first = match link.sync(Duration::from_secs(30)) {
        Ok(r) => r,
        Err(e) => panic!(
            "firmware did not answer: {e}\nQEMU log:\n{}",
            link.get_ref().log()
        ),
    };
    (link, first)
}

fn host_action(policy: &Policy<'_>, obs: &[f32], mode: NoiseMode) -> Vec<u32> {
    let mut action = vec![0.0; policy.act_dim()];
    policy
        .act(obs, mode, &mut Scratch::new(), &mut action)
        .unwrap();
    action.iter().map(|a| a.to_bits()).collect()
}

fn bits(action: &[f32]) -> Vec<u32> {
    action.iter().map(|a| a.to_bits()).collect()
}

/// Costs of the actions, grouped by mode, as (min, median, max).
fn summary(mut costs: Vec<u32>) -> (u32, u32, u32) {
    costs.sort_unstable();
    (costs[0], costs[costs.len() / 2], costs[costs.len() - 1])
}

/// Run `n` random observations in alternating modes and compare every action bit with the
/// host runtime. Returns the costs (deterministic, stochastic).
fn check_bit_exact(
    link: &mut DeviceLink<Qemu>,
    blob: &[u8],
    n: usize,
    seed: u64,
) -> (Vec<u32>, Vec<u32>) {
    let policy = Policy::from_bytes(blob).unwrap();
    let mut rng = SplitMix64::new(seed);
    let (mut det, mut sto) = (Vec::new(), Vec::new());
    for i in 0..n {
        let obs = random_observation(&mut rng, policy.obs_dim());
        let mode = if i % 2 == 0 {
            NoiseMode::Deterministic
        } else {
            NoiseMode::Stochastic {
                seed: rng.next_u64(),
            }
        };
        let got = link
            .act(&obs, mode)
            .unwrap_or_else(|e| panic!("act {i}: {e}\n{}", link.get_ref().log()));
        assert_eq!(
            bits(&got.action),
            host_action(&policy, &obs, mode),
            "action {i} ({mode:?}) differs from the host runtime"
        );
        match mode {
            NoiseMode::Deterministic => det.push(got.cost),
            NoiseMode::Stochastic { .. } => sto.push(got.cost),
        }
    }
    (det, sto)
}

fn expect_info(response: &Response, blob: &[u8]) {
    let policy = Policy::from_bytes(blob).unwrap();
    match response {
        Response::Info {
            blob_hash: hash,
            obs_dim,
            act_dim,
            nfe,
            cost_unit,
            firmware_version,
            ..
        } => {
            assert_eq!(*hash, blob_hash(blob), "blob hash");
            assert_eq!(*obs_dim as usize, policy.obs_dim());
            assert_eq!(*act_dim as usize, policy.act_dim());
            assert_eq!(*nfe, policy.blob().meta.nfe);
            assert_eq!(*cost_unit, CostUnit::Instructions);
            assert!(firmware_version.ends_with("+qemu"), "{firmware_version}");
        }
        other => panic!("expected Info, got {other:?}"),
    }
}

#[test]
fn firmware_actions_are_bit_exact_with_the_host_runtime() {
    let blob = fixture_blob(&FixtureSpec::small());
    let golden = golden_vectors(&blob, GOLDEN_VECTORS, 9);
    let (mut link, first) = boot(&blob, Some(&golden));
    expect_info(&first, &blob);
    expect_info(&link.info().unwrap(), &blob);

    let (det, sto) = check_bit_exact(&mut link, &blob, 120, 1);
    let policy = Policy::from_bytes(&blob).unwrap();
    let (d, s) = (summary(det), summary(sto));
    eprintln!(
        "small fixture (hidden 2x64, nfe 1, {} MACs): instructions per action (TIM2, min/median/max): \
         deterministic {d:?}, stochastic {s:?}",
        policy.macs_per_action()
    );
    // The cost is the instruction count of one evaluation: at least one per MAC, and the
    // evaluation is data-independent up to clamping, so the spread is small.
    assert!(
        d.0 as u64 >= policy.macs_per_action() && d.2 < 50 * policy.macs_per_action() as u32,
        "{d:?}"
    );
    assert!(
        d.2 - d.0 < d.0 / 10,
        "deterministic costs vary too much: {d:?}"
    );
    assert!(
        s.1 > d.1,
        "stochastic mode also draws the noise: {s:?} vs {d:?}"
    );

    // The exporter's golden vectors, re-run on the device.
    let seq = link.next_seq();
    assert_eq!(
        link.request(&Request::SelfTest { seq }).unwrap(),
        Response::SelfTest {
            seq,
            vectors: GOLDEN_VECTORS as u16,
            mismatches: 0
        }
    );
    let seq = link.next_seq();
    assert_eq!(
        link.request(&Request::Reset { seq }).unwrap(),
        Response::ResetDone { seq }
    );

    // Memory: flash and static RAM from the ELF, stack from the painted region.
    let qemu = link.get_mut();
    let sizes = qemu.elf_sizes().expect("firmware ELF sections");
    let stack = qemu.stack_high_water().unwrap();
    eprintln!(
        "firmware memory: flash {} B (.rodata {} B incl. the {} B blob), static RAM {} B, max stack {} B",
        sizes.flash,
        sizes.rodata,
        blob.len(),
        sizes.static_ram,
        stack
    );
    assert!(
        stack > 256,
        "stack high-water {stack} B is implausibly small"
    );
    assert!(
        sizes.static_ram + u64::from(stack) <= 16 * 1024,
        "RAM budget: {} + {stack} B",
        sizes.static_ram
    );
    assert!(
        sizes.rodata as usize >= blob.len(),
        "the blob must be in flash"
    );
}

#[test]
fn large_multi_step_policy_is_bit_exact() {
    let blob = fixture_blob(&FixtureSpec::large());
    let (mut link, first) = boot(&blob, None);
    expect_info(&first, &blob);
    let seq = link.next_seq();
    assert_eq!(
        link.request(&Request::SelfTest { seq }).unwrap(),
        Response::Error {
            seq: Some(seq),
            code: ErrorCode::NoGoldenVectors
        }
    );
    let (det, sto) = check_bit_exact(&mut link, &blob, 20, 2);
    let policy = Policy::from_bytes(&blob).unwrap();
    eprintln!(
        "large fixture (hidden 3x256, nfe 3, {} MACs, blob {} B): instructions per action: deterministic {:?}, stochastic {:?}",
        policy.macs_per_action(),
        blob.len(),
        summary(det),
        summary(sto)
    );
    let stack = link.get_mut().stack_high_water().unwrap();
    assert!(stack < 8 * 1024, "stack {stack} B");
}

/// Send `bytes`, expect exactly the frame error `code`, then check that a good request is
/// answered correctly.
fn inject(
    link: &mut DeviceLink<Qemu>,
    policy: &Policy<'_>,
    rng: &mut SplitMix64,
    what: &str,
    bytes: &[u8],
    code: ErrorCode,
) {
    link.send_bytes(bytes).unwrap();
    match link.recv() {
        Ok(Response::Error {
            seq: None,
            code: got,
        }) => assert_eq!(got, code, "{what}"),
        other => panic!("{what}: expected a frame error, got {other:?}"),
    }
    let obs = random_observation(rng, policy.obs_dim());
    let got = link
        .act(&obs, NoiseMode::Deterministic)
        .unwrap_or_else(|e| panic!("after {what}: {e}"));
    assert_eq!(
        bits(&got.action),
        host_action(policy, &obs, NoiseMode::Deterministic),
        "after {what}"
    );
}

#[test]
fn wire_faults_get_error_replies_and_the_link_recovers() {
    let blob = fixture_blob(&FixtureSpec::small());
    let policy = Policy::from_bytes(&blob).unwrap();
    // Same image as the bit-exactness test (one build).
    let (mut link, _) = boot(&blob, Some(&golden_vectors(&blob, GOLDEN_VECTORS, 9)));
    let mut rng = SplitMix64::new(3);

    for round in 0..5 {
        // Random garbage without delimiters, then one: a single corrupt frame.
        let mut garbage: Vec<u8> = (0..1 + rng.next_u64() % 300)
            .map(|_| (1 + rng.next_u64() % 255) as u8)
            .collect();
        garbage.push(0);
        inject(
            &mut link,
            &policy,
            &mut rng,
            &format!("garbage round {round}"),
            &garbage,
            ErrorCode::CorruptFrame,
        );

        // A truncated frame: the first part of a valid Act, then the delimiter.
        let obs = random_observation(&mut rng, policy.obs_dim());
        let seq = link.next_seq();
        let frame = encode_request(&Request::Act {
            seq,
            mode: NoiseMode::Deterministic,
            obs: obs.iter().copied().collect(),
        })
        .unwrap();
        let mut truncated = frame[..1 + (rng.next_u64() as usize % (frame.len() - 2))].to_vec();
        truncated.push(0);
        inject(
            &mut link,
            &policy,
            &mut rng,
            "truncated frame",
            &truncated,
            ErrorCode::CorruptFrame,
        );

        // A bit flip inside the frame body that does not create a delimiter.
        let mut flipped = frame.clone();
        loop {
            let bit = rng.next_u64() as usize % ((frame.len() - 1) * 8);
            let byte = frame[bit / 8] ^ (1 << (bit % 8));
            if byte != 0 {
                flipped[bit / 8] = byte;
                break;
            }
        }
        inject(
            &mut link,
            &policy,
            &mut rng,
            "bit-flipped frame",
            &flipped,
            ErrorCode::CorruptFrame,
        );

        // A flood longer than any frame, then a delimiter: reported once as too long.
        let mut flood = vec![0xAA; 3 * MAX_FRAME];
        flood.push(0);
        inject(
            &mut link,
            &policy,
            &mut rng,
            "oversized flood",
            &flood,
            ErrorCode::FrameTooLong,
        );
    }

    // Garbage with embedded zeros: any number of frame errors, then the link still works.
    let garbage: Vec<u8> = (0..2000).map(|_| rng.next_u64() as u8).collect();
    link.send_bytes(&garbage).unwrap();
    let answer = link.sync(Duration::from_secs(10)).unwrap();
    assert!(matches!(answer, Response::Info { .. }), "{answer:?}");

    // Bad observations are refused with the request's seq.
    let mut obs = random_observation(&mut rng, policy.obs_dim());
    obs[4] = f32::NAN;
    assert!(matches!(
        link.act(&obs, NoiseMode::Deterministic),
        Err(LinkError::Device {
            code: ErrorCode::NonFiniteObservation,
            ..
        })
    ));
    obs[4] = f32::INFINITY;
    assert!(matches!(
        link.act(&obs, NoiseMode::Stochastic { seed: 1 }),
        Err(LinkError::Device {
            code: ErrorCode::NonFiniteObservation,
            ..
        })
    ));
    assert!(matches!(
        link.act(&obs[..policy.obs_dim() - 1], NoiseMode::Deterministic),
        Err(LinkError::Device {
            code: ErrorCode::ObservationLength,
            ..
        })
    ));
    check_bit_exact(&mut link, &blob, 10, 4);
    assert!(link.get_mut().is_running());
}

#[test]
fn corrupted_blob_boots_into_the_no_policy_safe_state() {
    let mut blob = fixture_blob(&FixtureSpec::small());
    let at = blob.len() / 3;
    blob[at] ^= 0x04; // one flipped bit in the weights: the CRC must catch it
    assert!(Policy::from_bytes(&blob).is_err());
    let (mut link, first) = boot(&blob, None);
    assert!(
        matches!(
            first,
            Response::Error {
                seq: Some(_),
                code: ErrorCode::NoPolicy
            }
        ),
        "{first:?}"
    );
    let obs = random_observation(&mut SplitMix64::new(5), 17);
    assert!(matches!(
        link.act(&obs, NoiseMode::Deterministic),
        Err(LinkError::Device {
            code: ErrorCode::NoPolicy,
            ..
        })
    ));
    for request in [
        Request::Info { seq: 100 },
        Request::SelfTest { seq: 101 },
        Request::Reset { seq: 102 },
    ] {
        let seq = tools::link::request_seq(&request);
        assert_eq!(
            link.request(&request).unwrap(),
            Response::Error {
                seq: Some(seq),
                code: ErrorCode::NoPolicy
            }
        );
    }
    // Frame errors are still told apart from the missing policy.
    link.send_bytes(&[7, 7, 7, 0]).unwrap();
    assert_eq!(
        link.recv().unwrap(),
        Response::Error {
            seq: None,
            code: ErrorCode::CorruptFrame
        }
    );
    let log = link.get_ref().log();
    assert!(log.contains("policy blob rejected"), "boot log: {log}");
}

/// The firmware's host unit tests embed a blob made by `fixture_blob`; keep it in step
/// with the generator. `FLAME_BLESS=1` rewrites it.
#[test]
fn fixture_asset_is_current() {
    let path = tests::repo_root().join(tests::FIRMWARE_FIXTURE_ASSET);
    let fresh = fixture_blob(&FixtureSpec::firmware_unit_test());
    if std::env::var_os("FLAME_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        committed == fresh,
        "{} is stale: regenerate with FLAME_BLESS=1",
        path.display()
    );
}

/// A fixture's shape: obs and act dims, hidden widths, flow steps, weight seed.
fn shape(obs_dim: usize, act_dim: usize, hidden: &[usize], nfe: usize, seed: u64) -> FixtureSpec {
    FixtureSpec {
        obs_dim,
        act_dim,
        hidden: hidden.to_vec(),
        nfe,
        seed,
    }
}

/// The Cortex-M4 layer loop (bias-started accumulators, requantization and table lookup in
/// assembly, left shifts on its out-of-line path) against the host on output stages at the
/// edges of the accepted range, with row counts that are and are not multiples of 4 and
/// ragged widths.
#[test]
fn output_stages_at_the_edges_are_bit_exact() {
    let blobs = [
        with_edge_output_stages(
            &with_input_gain(&fixture_blob(&shape(13, 3, &[37, 20, 132], 2, 201)), 40.0),
            1,
        ),
        with_edge_output_stages(&fixture_blob(&shape(17, 6, &[256, 64, 256], 1, 202)), 2),
        with_edge_output_stages(&fixture_blob(&shape(5, 2, &[7, 4, 9], 1, 203)), 3),
        // int16 first and output layers (left shifts, extreme biases on the first layer).
        with_edge_output_stages(
            &with_int16_edge_layers(&fixture_blob(&shape(13, 3, &[37, 20, 132], 2, 204)), 5),
            6,
        ),
    ];
    for (i, blob) in blobs.iter().enumerate() {
        let (mut link, first) = boot(blob, None);
        expect_info(&first, blob);
        check_bit_exact(&mut link, blob, 60, 70 + i as u64);
    }
}

/// The Cortex-M4 kernels (PKHBT/PKHTB repacking, SXTB16/SMLAD, four-row and one-row
/// passes entered at a computed group, zero padding, the interpolated tables) against the
/// host runtime on shapes that hit every edge: widths that are not multiples of 4 (ragged
/// last rows take the exact path), layers narrower than one group, row counts that are
/// not multiples of 4 or of the 32-row chunk, a single-row output, the widest layer the
/// runtime accepts, inputs saturated at ±32767, several flow steps. The fixtures
/// saturate pre-activations and clamp actions.
#[test]
fn optimized_kernels_are_bit_exact_on_odd_shapes() {
    let blobs = [
        fixture_blob(&shape(13, 3, &[37, 5, 130], 2, 101)),
        with_input_gain(&fixture_blob(&shape(30, 1, &[9, 64, 511], 1, 102)), 30.0),
        fixture_blob(&shape(17, 6, &[256, 256, 256], 1, 103)),
        // Widths below one group of four, a three-row layer (one-row passes only), the
        // widest layer exactly (the whole unrolled body), a two-row output.
        with_input_gain(&fixture_blob(&shape(1, 2, &[3, 512], 1, 104)), 100.0),
        // int16 first and output layers, as the exporter writes them: ragged widths, a
        // three-row output, the widest output layer; then the shipped shape.
        with_int16_edge_layers(&fixture_blob(&shape(30, 3, &[9, 64, 511], 2, 105)), 1),
        with_int16_edge_layers(&fixture_blob(&shape(1, 2, &[3, 512], 1, 106)), 2),
        with_int16_edge_layers(&fixture_blob(&shape(17, 6, &[256, 256, 256], 1, 107)), 3),
    ];
    for (i, blob) in blobs.iter().enumerate() {
        let policy = Policy::from_bytes(blob).unwrap();
        let (mut link, first) = boot(blob, None);
        expect_info(&first, blob);
        let (det, sto) = check_bit_exact(&mut link, blob, 40, 50 + i as u64);
        let widths: Vec<u16> = policy.blob().hidden.iter().map(|l| l.out_dim).collect();
        let (d, macs) = (summary(det), policy.macs_per_action());
        eprintln!(
            "blob {i}: obs {} act {} hidden {widths:?} nfe {}: {macs} MACs, instructions per \
             action deterministic {d:?} ({:.3}/MAC), stochastic {:?}",
            policy.obs_dim(),
            policy.act_dim(),
            policy.blob().meta.nfe,
            d.1 as f64 / macs as f64,
            summary(sto)
        );
    }
}
