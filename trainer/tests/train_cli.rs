//! `trainer train` / `trainer bench` / `trainer export` on bad input and on a tiny SAC
//! run: one-line errors naming the problem, exit code ≠ 0; a SAC run has every output
//! and export refuses it clearly.

use std::path::{Path, PathBuf};
use std::process::Command;

fn trainer(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("run trainer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flame-train-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The run's config.json as JSON, so a test can tell a field left out from one set.
fn config_json(dir: &Path) -> serde_json::Value {
    sim::run_dir::read_json(&dir.join("config.json")).unwrap()
}

/// `trainer train --algo ALGO` on InvertedPendulum-v5 at a tiny size (16×16 networks,
/// batch 16, 300 steps, 100 warm-up, an evaluation every 150), quiet, into `out`.
fn tiny_train(algo: &str, extra: &[&str], out: &str) -> (bool, String, String) {
    let mut args = vec![
        "train",
        "--algo",
        algo,
        "--env",
        "InvertedPendulum-v5",
        "--steps",
        "300",
        "--learning-starts",
        "100",
        "--batch-size",
        "16",
        "--hidden",
        "16,16",
        "--critic-hidden",
        "16,16",
        "--eval-every",
        "150",
        "--threads",
        "1",
        "--progress-every",
        "0",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    trainer(&args)
}

#[test]
fn invalid_train_flags_are_refused() {
    let dir = scratch("values");
    let out = dir.to_str().unwrap();
    for (args, needle) in [
        (vec!["train", "--steps", "-5", "--out", out], "-5"),
        (
            vec!["train", "--steps", "0", "--out", out],
            "--steps must be positive",
        ),
        (vec!["train", "--algo", "ppo", "--out", out], "ppo"),
        (vec!["train", "--env", "Nope-v5", "--out", out], "Nope-v5"),
        (
            vec!["train", "--batch-size", "0", "--out", out],
            "--batch-size",
        ),
        (vec!["train", "--num-envs", "0", "--out", out], "--num-envs"),
        (vec!["train", "--gamma", "1.5", "--out", out], "--gamma"),
        (vec!["train", "--q-lr", "nan", "--out", out], "--q-lr"),
        (
            vec!["train", "--device", "tpu", "--out", out],
            "--device tpu",
        ),
        (vec!["train", "--steps", "10"], "--out"),
        (
            vec!["train", "--cuda-graph", "--out", out],
            "--cuda-graph records the update's CUDA kernels, and this run is on --device cpu: use --device cuda",
        ),
        (
            vec![
                "train",
                "--algo",
                "flame-m",
                "--candidates",
                "0",
                "--out",
                out,
            ],
            "--candidates (K) must be at least 1",
        ),
        (
            vec!["train", "--algo", "flame-r", "--nfe", "0", "--out", out],
            "--nfe must be at least 1",
        ),
        (
            vec!["train", "--algo", "flame-m", "--nfe", "20", "--out", out],
            "--algo flame-r",
        ),
        (
            vec!["train", "--algo", "sac", "--candidates", "8", "--out", out],
            "--candidates is a flag of --algo flame-m and flame-r",
        ),
        (
            vec![
                "train",
                "--algo",
                "flame-m",
                "--policy-lr",
                "1e-3",
                "--out",
                out,
            ],
            "--policy-lr is a flag of --algo sac",
        ),
        (
            vec![
                "train",
                "--algo",
                "flame-r",
                "--max-wall",
                "0",
                "--out",
                out,
            ],
            "--max-wall must be a positive number",
        ),
        (
            vec![
                "train",
                "--algo",
                "flame-m",
                "--noise-std",
                "0",
                "--out",
                out,
            ],
            "--noise-std must be a positive number",
        ),
        (vec!["train", "--threads", "0", "--out", out], "--threads"),
        (vec!["train", "--threads", "many", "--out", out], "`many`"),
        (vec!["bench", "--threads", "0"], "--threads"),
        (vec!["bench", "--updates", "0"], "--updates"),
        (vec!["bench", "--seeds", "0"], "--seeds must be positive"),
        (
            vec!["init", "--algo", "sac", "--out", out],
            "flame-m or flame-r",
        ),
    ] {
        let (ok, _, err) = trainer(&args);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(
        !dir.join("config.json").exists(),
        "nothing written for refused input"
    );
}

#[test]
fn resume_refuses_a_directory_that_is_not_a_run() {
    let dir = scratch("notrun");
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, _, err) = trainer(&["train", "--resume", dir.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not a training run"), "{err}");
    let (ok, _, err) = trainer(&["train", "--resume", "/nonexistent/run"]);
    assert!(!ok);
    assert!(err.contains("no such directory"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sac_run_has_its_outputs_resumes_and_is_refused_by_export() {
    let dir = scratch("sac");
    let out = dir.to_str().unwrap();
    let (ok, stdout, err) = tiny_train(
        "sac",
        &["--eval-episodes", "2", "--checkpoint-every", "150"],
        out,
    );
    assert!(ok, "{err}");
    assert!(stdout.contains("final eval return"), "{stdout}");
    for f in [
        "config.json",
        "metrics.csv",
        "metrics.jsonl",
        "learning_curve.png",
        "summary.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    // config.json names the revision this binary was built from.
    let config = config_json(&dir);
    let revision = config["git_revision"].as_str().unwrap();
    let (ok, version, err) = trainer(&["--version"]);
    assert!(ok, "{err}");
    assert!(
        !revision.is_empty() && version.ends_with(&format!("({revision})")),
        "config.json's git_revision {revision:?}, trainer --version {version:?}"
    );
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "header + 2 evaluations:\n{csv}");
    assert!(csv.lines().next().unwrap().contains("q_loss"), "{csv}");

    // A second `train` into the same directory is refused; resume with flags too.
    let (ok, _, err) = trainer(&["train", "--env", "InvertedPendulum-v5", "--out", out]);
    assert!(!ok && err.contains("already holds a run"), "{err}");
    let (ok, _, err) = trainer(&["train", "--resume", out, "--seed", "3"]);
    assert!(
        !ok && err.contains("--seed cannot be combined with --resume"),
        "{err}"
    );
    // CUDA graphs may be asked for on resume, and are refused on this CPU run.
    let (ok, _, err) = trainer(&["train", "--resume", out, "--cuda-graph"]);
    assert!(
        !ok && err.contains("--cuda-graph records the update's CUDA kernels"),
        "{err}"
    );
    // Extending the budget continues the run, on another thread count if asked; a wall
    // budget given now is the run's, and the resume says what is left of it.
    let (ok, stdout, err) = trainer(&[
        "train",
        "--resume",
        out,
        "--steps",
        "450",
        "--threads",
        "1",
        "--max-wall",
        "3600",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("450 env steps"), "{stdout}");
    assert!(
        err.contains("its wall budget (--max-wall 3600 s over all sessions) has 3")
            && err.contains(" s left; give --max-wall to change it"),
        "{err}"
    );

    // A checkpoint whose replay header has its dimension words overwritten with 0xff
    // (once an arithmetic-overflow panic) is refused in one line; the run is untouched.
    let replay = dir.join("checkpoint").join("replay.bin");
    let mut bytes = std::fs::read(&replay).unwrap();
    bytes[8..24].fill(0xff);
    std::fs::write(&replay, &bytes).unwrap();
    let (ok, _, err) = trainer(&["train", "--resume", out, "--steps", "600"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("corrupt replay header") && err.contains("replay.bin"),
        "{err}"
    );

    let (ok, _, err) = trainer(&["export", out, "--out", dir.join("p.blob").to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("SAC runs cannot be exported"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--seeds 0,1`: one process trains both seeds, each a run of its own in OUT/seed-N;
/// `--resume OUT` continues both; `trainer results OUT` averages them.
#[test]
fn seeds_train_in_one_process_resume_together_and_average() {
    let dir = scratch("seeds");
    let out = dir.to_str().unwrap();
    let (ok, _, err) = tiny_train("sac", &["--seeds", "0,0"], out);
    assert!(!ok && err.contains("names a seed twice"), "{err}");
    let (ok, _, err) = tiny_train("sac", &["--seeds", "0,1", "--seed", "2"], out);
    assert!(!ok && err.contains("--seed"), "{err}");
    let (ok, stdout, err) = tiny_train(
        "sac",
        &[
            "--seeds",
            "0,1",
            "--eval-episodes",
            "2",
            "--checkpoint-every",
            "150",
        ],
        out,
    );
    assert!(ok, "{err}");
    assert_eq!(stdout.matches("final eval return").count(), 2, "{stdout}");
    for seed in [0, 1] {
        let run = dir.join(format!("seed-{seed}"));
        let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
        assert!(summary.contains(&format!("\"seed\": {seed}")), "{summary}");
    }
    let (ok, _, err) = trainer(&["train", "--resume", out, "--seeds", "0,1"]);
    assert!(
        !ok && err.contains("--seeds cannot be combined with --resume"),
        "{err}"
    );
    let (ok, stdout, err) = trainer(&["train", "--resume", out, "--steps", "450"]);
    assert!(ok, "{err}");
    assert_eq!(stdout.matches("450 env steps").count(), 2, "{stdout}");
    assert_eq!(err.matches("resuming").count(), 2, "{err}");
    let (ok, _, err) = trainer(&["export", out, "--out", dir.join("p.blob").to_str().unwrap()]);
    assert!(!ok && err.contains("is a seed group"), "{err}");
    let results = dir.join("results");
    let (ok, stdout, err) = trainer(&["results", out, "--out", results.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(stdout.contains("mean of 2 runs"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A FLAME run's evaluations report the int8 runtime beside the float policy: the
/// acting policy quantized at each evaluation and run from z = 0 on the same episodes.
#[test]
fn flame_run_evaluates_the_int8_runtime_beside_the_float_policy() {
    let dir = scratch("flame-int8");
    let out = dir.to_str().unwrap();
    let (ok, _, err) = tiny_train(
        "flame-m",
        &[
            "--num-envs",
            "1",
            "--candidates",
            "8",
            "--particles",
            "4",
            "--entropy-states",
            "8",
            "--eval-episodes",
            "3",
        ],
        out,
    );
    assert!(ok, "{err}");
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert!(
        csv.lines().next().unwrap().contains("eval_return_int8"),
        "{csv}"
    );
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{metrics}");
    for row in &rows {
        let float = row["eval_return_single"].as_f64().expect("float return");
        let int8 = row["eval_return_int8"].as_f64().expect("int8 return");
        assert!(
            (int8 - float).abs() <= 0.2 * float.max(10.0),
            "int8 {int8} vs float {float}: {row}"
        );
    }
    // FLAME-M's default network has the time MLPs (folded into the blob's biases);
    // --no-time-mlp leaves them out, and config.json then does not name them.
    let time_mlp = |dir: &Path| config_json(dir)["shape"]["time_mlp"].as_bool();
    assert_eq!(time_mlp(&dir), Some(true));
    let plain = scratch("flame-no-time-mlp");
    let (ok, _, err) = tiny_train(
        "flame-m",
        &["--no-time-mlp", "--candidates", "8", "--particles", "4"],
        plain.to_str().unwrap(),
    );
    assert!(ok, "{err}");
    assert_eq!(time_mlp(&plain), None);
    let _ = std::fs::remove_dir_all(&plain);
    let _ = std::fs::remove_dir_all(&dir);
}
