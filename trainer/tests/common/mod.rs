//! The InvertedPendulum-v5 learning check shared by `sac_learns.rs` and
//! `flame_learns.rs`. Each agent's check is its own test binary so cargo runs it alone:
//! the FLAME-M run spins its two OpenMP threads (active wait, about twice the speed of
//! a passive one) and must not share the cores with another test.

use std::process::Command;
use std::time::Instant;

/// Runs `trainer train --algo ALGO` on InvertedPendulum-v5 for `steps` env steps (seed
/// 0, one env, 1k warm-up, evaluations of 10 episodes) with `extra` flags (which set
/// `--eval-every` and `--threads`) and the OpenMP wait policy `omp_wait`, asserts that
/// the best evaluation reaches 900, and returns every `(step, best-of-N return,
/// deployed z = 0 return)` row. The thread count and the seed fix the trajectory; the
/// wait policy and the load change only its speed.
pub fn train_on_inverted_pendulum(
    algo: &str,
    steps: u32,
    extra: &[&str],
    omp_wait: &str,
) -> Vec<(u64, f64, f64)> {
    let dir = std::env::temp_dir().join(format!("flame-{algo}-ip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = Instant::now();
    let steps = steps.to_string();
    let mut args = vec![
        "train",
        "--algo",
        algo,
        "--env",
        "InvertedPendulum-v5",
        "--steps",
        &steps,
        "--num-envs",
        "1",
        "--learning-starts",
        "1000",
        "--eval-episodes",
        "10",
        "--checkpoint-every",
        "100000",
        "--progress-every",
        "60",
        "--seed",
        "0",
        "--out",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&args)
        .env("OMP_WAIT_POLICY", omp_wait)
        .output()
        .expect("run trainer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let rows: Vec<(u64, f64, f64)> = metrics
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["eval_return"].as_f64().unwrap(),
                v["eval_return_single"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    eprintln!(
        "{algo} InvertedPendulum-v5 evaluations (step, return, z = 0 return) {rows:?} in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let best = rows.iter().map(|r| r.1).fold(f64::MIN, f64::max);
    assert!(
        best >= 900.0,
        "{algo}: best evaluation {best} < 900: {rows:?}\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    rows
}
