//! The walking skeleton end to end, in process: a FLAME-M policy at the paper's shape is
//! initialized (`trainer init`), exported to int8 (`trainer export`), built into the QEMU
//! firmware, and driven through a full 1000-step HalfCheetah-v5 episode by the HIL runner,
//! with every device action checked bit for bit against the host runtime.

use std::time::Duration;

use tools::hil::{run_hil, HilOptions, ModeArg};
use tools::link::DeviceLink;
use tools::qemu::{build_firmware, FirmwareBuild, Qemu, QemuOptions};
use trainer::export::{export, ExportOptions};
use trainer::init::{init, InitOptions};
use trainer::run_dir::Algo;

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
            max_action_error: 0.15,
            golden: 32,
        },
    )
    .unwrap();
    assert!(report.max_action_error <= 0.15 && report.golden_vectors == 32);
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
