//! The walking skeleton end to end, in process: a FLAME-M policy at the paper's shape is
//! initialized (`trainer init`), exported to int8 (`trainer export`), built into the QEMU
//! firmware, and driven through a full 1000-step HalfCheetah-v5 episode by the HIL runner,
//! with every device action checked bit for bit against the host runtime. A second test
//! runs the shipped policy with faults injected into the link by the HIL runner.

use std::io::{Read, Write};
use std::time::Duration;

use sim::run_dir::Algo;
use tools::hil::{run_hil, FaultKind, FaultPlan, HilOptions, ModeArg};
use tools::link::DeviceLink;
use tools::qemu::{build_firmware, FirmwareBuild, Qemu, QemuOptions};
use trainer::export::{export, ExportOptions};
use trainer::init::{init, InitOptions};

#[test]
fn exported_flame_m_policy_runs_bit_exact_in_qemu_for_a_full_episode() {
    let dir = std::env::temp_dir().join(format!("flame-hil-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    init(
        &dir,
        &InitOptions {
            algo: Algo::FlameM,
            env_id: "HalfCheetah-v5".into(),
            seed: 1,
            hidden: vec![256, 256, 256],
            time_dim: 16,
            nfe: 1,
            states: 1500,
        },
    )
    .unwrap();
    let blob_path = dir.join("policy.blob");
    let report = export(
        &dir,
        &ExportOptions {
            out: blob_path.clone(),
            episodes: 1,
            max_action_error: 0.05,
            golden: 32,
        },
    )
    .unwrap();
    assert!(report.max_action_error <= 0.05 && report.golden_vectors == 32);
    assert!(report.float_return.is_some() && report.int8_return.is_some());

    let blob = std::fs::read(&blob_path).unwrap();
    let elf = build_firmware(&FirmwareBuild::qemu(Some(&blob_path))).unwrap();
    let qemu = Qemu::start(&QemuOptions::new(&elf)).unwrap();
    let mut link = DeviceLink::new(qemu).with_timeout(Duration::from_secs(5));

    let deterministic = run_hil(
        &mut link,
        &blob,
        &HilOptions {
            episodes: 1,
            seed: 7,
            mode: ModeArg::Deterministic,
            max_steps: None,
            attempts: 1,
            float_run: Some(dir.clone()),
            faults: None,
        },
    )
    .unwrap();
    let episode = &deterministic.episodes[0];
    assert_eq!(
        episode.steps, 1000,
        "HalfCheetah never terminates: the episode is truncated at 1000"
    );
    assert_eq!(episode.bit_exact_steps, 1000, "{deterministic}");
    assert_eq!(episode.link_errors, 0);
    assert!(episode.float_return.is_some());
    assert!(deterministic.cost_min > 0 && deterministic.cost_max >= deterministic.cost_median);
    assert_eq!(deterministic.cost_unit.as_deref(), Some("instructions"));

    let stochastic = run_hil(
        &mut link,
        &blob,
        &HilOptions {
            episodes: 2,
            seed: 11,
            mode: ModeArg::Stochastic,
            max_steps: Some(100),
            attempts: 1,
            float_run: None,
            faults: None,
        },
    )
    .unwrap();
    assert!(stochastic.bit_exact(), "{stochastic}");
    assert!(stochastic.episodes.iter().all(|e| e.steps == 100));
    // Different seeds drive different actions: the returns differ.
    assert_ne!(
        stochastic.episodes[0].total_return,
        stochastic.episodes[1].total_return
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A transport that keeps a copy of everything the host sends.
struct Tap<T> {
    inner: T,
    sent: Vec<u8>,
}

impl<T: Read> Read for Tap<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<T: Write> Write for Tap<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Fault injection through the HIL runner (`tools hil --inject-faults`): a few hundred
/// steps of the shipped 3×256 policy in QEMU with one step in eight corrupted. Every fault
/// kind occurs; each one is reported with the firmware's answer, which is exactly the frame
/// errors a correct firmware sends; the runner retries the step, so the episode completes
/// and every step's action is still bit-exact. Independently of the runner's own report,
/// every damaged frame the host put on the line is accounted for, and the firmware logged
/// each one (defmt over semihosting).
#[test]
fn injected_link_faults_are_reported_and_the_episode_stays_bit_exact() {
    let blob_path = tests::repo_root().join("models/default.blob");
    let blob = std::fs::read(&blob_path).unwrap();
    let elf = build_firmware(&FirmwareBuild::qemu(Some(&blob_path))).unwrap();
    let qemu = Qemu::start(&QemuOptions::new(&elf)).unwrap();
    let tap = Tap {
        inner: qemu,
        sent: Vec::new(),
    };
    let mut link = DeviceLink::new(tap).with_timeout(Duration::from_secs(5));
    let plan = FaultPlan {
        seed: 5,
        rate: 0.125,
    };
    let steps = 240;
    let report = run_hil(
        &mut link,
        &blob,
        &HilOptions {
            episodes: 1,
            seed: 3,
            mode: ModeArg::Stochastic,
            max_steps: Some(steps),
            // A clean request after a fault must be answered at the first attempt.
            attempts: 1,
            float_run: None,
            faults: Some(plan),
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\nQEMU log:\n{}", link.get_ref().inner.log()));
    eprintln!("{report}");

    let episode = &report.episodes[0];
    assert_eq!(episode.steps, steps, "the episode completes");
    assert_eq!(episode.bit_exact_steps, steps, "{report}");
    assert_eq!(episode.link_errors, 0, "{report}");
    assert!(report.passed(), "{report}");

    // About one step in eight, and every kind of fault.
    let n = report.faults.len();
    assert!(
        (steps / 16..=steps / 4).contains(&n),
        "{n} faults in {steps} steps"
    );
    for kind in FaultKind::ALL {
        assert!(
            report.faults.iter().any(|f| f.kind == kind),
            "{kind:?} never injected"
        );
    }
    let mut last_step = None;
    for f in &report.faults {
        assert!(f.as_expected(), "{f:?}");
        assert!(
            !f.answered.is_empty(),
            "every fault gets an error reply: {f:?}"
        );
        assert!(f.step < steps);
        assert!(Some(f.step) > last_step, "one fault per step, in order");
        last_step = Some(f.step);
    }

    // The host's side of the line, split with the firmware's frame reader: every frame
    // that is not a valid request is a fault the report accounts for, and the valid ones are
    // the clean requests (one `Act` per step plus the resynchronizing `Info`s).
    let sent = &link.get_ref().sent;
    let on_the_line = tools::hil::census(sent);
    let reported: usize = report.faults.iter().map(|f| f.answered.len()).sum();
    assert_eq!(
        on_the_line.errors, reported,
        "damaged frames vs reported frame errors"
    );
    assert_eq!(on_the_line.acts, steps, "one clean Act per step");
    assert!(link.get_mut().inner.is_running());

    // The firmware's defmt log (semihosting, decoded with the ELF): the boot line with the
    // blob's CRC, then one warning per dropped frame.
    let log = link.get_ref().inner.firmware_log();
    let crc = format!("crc {:#010x}", runtime::blob::blob_hash(&blob));
    assert!(
        log[0].starts_with("INFO flame-firmware") && log[0].contains(&crc),
        "{log:?}"
    );
    let dropped = log
        .iter()
        .filter(|l| l.starts_with("WARN frame dropped"))
        .count();
    assert_eq!(dropped, reported, "one log line per dropped frame: {log:?}");
    assert!(
        !log.iter().any(|l| l.starts_with('?')),
        "undecodable: {log:?}"
    );
}
