//! The training loop's promises on a tiny budget: a killed run resumes from its last
//! checkpoint and continues exactly as the uninterrupted run (same evaluations, same
//! losses, same weights); a NaN/Inf loss stops the run naming the step and leaves the
//! last good checkpoint resumable; the run directory has its outputs; the thread count
//! (which `--threads auto` changes while training) does not change the numbers.

use sim::run_dir::Algo;
use trainer::threads::Threads;
use trainer::train::{checkpoint_dir, EvalRow, TrainConfig, Trainer};

#[path = "common/in_process.rs"]
mod in_process;
use in_process::{agent_state, scratch, serial, timeless};

/// SAC on InvertedPendulum with small networks, 700 steps, evaluations at 350 and 700.
fn tiny() -> TrainConfig {
    let mut c = in_process::tiny(Algo::Sac);
    c.steps = 700;
    c.eval_every = 350;
    c
}

#[test]
fn resumed_run_continues_the_same_curve() {
    let _rng = serial();
    let (a, b) = (scratch("uninterrupted"), scratch("killed"));
    let mut full = Trainer::new(tiny(), Some(&a)).unwrap();
    let full_summary = full.run().unwrap();

    // Same run, "killed" at 450 env steps: the checkpoint at 300 survives, the evaluation
    // at 350 and everything after the checkpoint is lost.
    let mut first = Trainer::new(tiny(), Some(&b)).unwrap();
    first.run_until(450, true).unwrap();
    assert_eq!(first.state.evals.len(), 1);
    drop(first);
    let mut resumed = Trainer::resume(&b, None, None, None).unwrap();
    assert_eq!(
        resumed.state.env_steps, 300,
        "resumes from the last checkpoint"
    );
    assert!(
        resumed.state.evals.is_empty(),
        "the lost evaluation is not kept"
    );
    let summary = resumed.run().unwrap();

    assert_eq!(summary.env_steps, full_summary.env_steps);
    assert_eq!(summary.updates, full_summary.updates);
    assert_eq!(summary.episodes, full_summary.episodes);
    assert_eq!(timeless(&resumed.state.evals), timeless(&full.state.evals));
    assert_eq!(
        resumed.state.last_stats, full.state.last_stats,
        "same losses"
    );
    assert!(!full.state.last_stats.is_empty());
    let (x, y) = (agent_state(&full), agent_state(&resumed));
    assert_eq!(x.len(), y.len());
    for (k, v) in &x {
        assert!(v.equal(&y[k]), "{k} differs after resume");
    }
    // The metrics file on disk has the evaluations of the uninterrupted run.
    let jsonl = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = jsonl
        .lines()
        .map(|l| serde_json::from_str::<EvalRow>(l).unwrap().step)
        .collect();
    assert_eq!(steps, vec![350, 700]);
    for f in [
        "config.json",
        "normalizer.json",
        "policy.safetensors",
        "states.bin",
        "metrics.csv",
        "learning_curve.png",
        "summary.json",
        "checkpoint/agent.safetensors",
        "checkpoint/replay.bin",
        "checkpoint/state.json",
    ] {
        assert!(b.join(f).is_file(), "{f} missing");
    }
    let png = std::fs::read(b.join("learning_curve.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint() {
    let _rng = serial();
    let dir = scratch("nan");
    let mut c = tiny();
    // Update u runs at env step learning_starts + u: update 150 at step 350, after the
    // checkpoint at 300.
    c.inject_nan_at_update = Some(150);
    let mut t = Trainer::new(c, Some(&dir)).unwrap();
    let err = format!("{:#}", t.run().unwrap_err());
    assert!(err.contains("NaN") && err.contains("env step 350"), "{err}");
    assert!(err.contains("last good checkpoint"), "{err}");
    drop(t);
    let ckpt = checkpoint_dir(&dir).expect("checkpoint kept");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["env_steps"], 300);
    // The kept checkpoint resumes (the injected fault is part of the saved config, so it
    // fires again at the same update).
    let mut resumed = Trainer::resume(&dir, None, None, None).unwrap();
    assert_eq!(resumed.state.env_steps, 300);
    let err = format!("{:#}", resumed.run().unwrap_err());
    assert!(err.contains("env step 350"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_refuses_what_is_not_a_training_run() {
    let _rng = serial();
    let dir = scratch("notrun");
    std::fs::create_dir_all(&dir).unwrap();
    let err = format!(
        "{:#}",
        Trainer::resume(&dir, None, None, None).err().unwrap()
    );
    assert!(err.contains("not a training run"), "{err}");
    let err = format!(
        "{:#}",
        Trainer::resume(&dir.join("nope"), None, None, None)
            .err()
            .unwrap()
    );
    assert!(err.contains("no such directory"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_crash_between_the_checkpoint_renames_still_resumes() {
    let _rng = serial();
    let dir = scratch("swap");
    let mut c = tiny();
    c.steps = 300;
    Trainer::new(c, Some(&dir)).unwrap().run().unwrap();
    // As if killed after checkpoint/ became checkpoint.old/ and while checkpoint.tmp/
    // was still being written.
    std::fs::rename(dir.join("checkpoint"), dir.join("checkpoint.old")).unwrap();
    std::fs::create_dir_all(dir.join("checkpoint.tmp")).unwrap();
    std::fs::write(dir.join("checkpoint.tmp/state.json"), "{ half").unwrap();
    let mut t = Trainer::resume(&dir, Some(400), None, None).unwrap();
    assert_eq!(t.state.env_steps, 300);
    t.run().unwrap();
    assert!(dir.join("checkpoint/state.json").is_file());
    assert!(!dir.join("checkpoint.old").exists() && !dir.join("checkpoint.tmp").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--threads auto` moves between thread counts while training; a run keeps its seed's
/// curve (and resumes onto it) only if the count does not change the numbers. At the
/// default network sizes on HalfCheetah (SAC 256×256 ReLU, FLAME-M 3×256 mish, its 100
/// candidates and 500 particles), every count `auto` may pick on this machine, and two,
/// gives bit-identical agents.
#[test]
fn thread_count_does_not_change_the_numbers() {
    let _guard = serial();
    let mut counts = trainer::threads::candidates(trainer::threads::cores());
    counts.push(2);
    counts.sort_unstable();
    counts.dedup();
    for algo in [Algo::Sac, Algo::FlameM] {
        let states: Vec<_> = counts
            .iter()
            .map(|&n| {
                let mut c = TrainConfig::defaults(algo, "HalfCheetah-v5");
                c.num_envs = 1;
                c.learning_starts = 256;
                c.steps = 256 + 12;
                c.buffer_size = 1000;
                c.progress_secs = 0.0;
                c.threads = Threads::Fixed(n);
                let mut t = Trainer::new(c, None).unwrap();
                t.run_until(256 + 12, false).unwrap();
                assert_eq!(t.state.updates, 13);
                agent_state(&t)
            })
            .collect();
        let (one, rest) = states.split_first().unwrap();
        for (other, &n) in rest.iter().zip(&counts[1..]) {
            assert_eq!(one.len(), other.len());
            for (k, v) in one {
                assert!(
                    v.equal(&other[k]),
                    "{}: {k} differs between one and {n} threads",
                    algo.name()
                );
            }
        }
    }
}
