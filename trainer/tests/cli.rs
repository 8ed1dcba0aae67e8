//! Bad input to the `trainer` CLI: one line naming the problem, exit code ≠ 0.

use std::process::Command;

fn trainer(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("run trainer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flame-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn unknown_env_lists_the_valid_ids() {
    let dir = scratch_dir("env");
    let (ok, err) = trainer(&["init", "--env", "Nope-v5", "--out", dir.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("Nope-v5") && err.contains("HalfCheetah-v5") && err.contains("Humanoid-v5"),
        "{err}"
    );
}

#[test]
fn export_refuses_a_directory_that_is_not_a_run() {
    let dir = scratch_dir("notrun");
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, err) = trainer(&["export", dir.to_str().unwrap(), "--out", "/dev/null"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("is not a run directory") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn invalid_values_are_refused() {
    let dir = scratch_dir("values");
    let out = dir.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["init", "--nfe", "0", "--algo", "flame-r", "--out", out],
            "--nfe",
        ),
        (vec!["init", "--nfe", "4", "--out", out], "--nfe must be 1"),
        (vec!["init", "--states", "3", "--out", out], "--states"),
        (vec!["init", "--hidden", "0", "--out", out], "--hidden"),
        (vec!["init", "--algo", "ppo", "--out", out], "ppo"),
        (vec!["init", "--seed", "-1", "--out", out], "-1"),
    ] {
        let (ok, err) = trainer(&args);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn devices_include_the_cpu() {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .arg("devices")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l == "cpu"));
}

#[test]
fn envs_lists_and_benchmarks_every_task() {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["envs", "--bench", "--bench-steps", "200"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for id in [
        "HalfCheetah-v5",
        "Hopper-v5",
        "Walker2d-v5",
        "Ant-v5",
        "Humanoid-v5",
        "InvertedPendulum-v5",
    ] {
        let bench_line = text
            .lines()
            .find(|l| l.starts_with(id) && l.contains("steps/s"));
        assert!(
            bench_line.is_some_and(|l| l.contains("VecEnv(5)")),
            "{id}: {text}"
        );
    }
}

#[test]
fn results_refuses_a_directory_that_is_not_a_run() {
    let dir = scratch_dir("results-notrun");
    std::fs::create_dir_all(&dir).unwrap();
    let out = scratch_dir("results-out");
    let (ok, err) = trainer(&[
        "results",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(dir.to_str().unwrap())
            && err.contains("is not a run directory")
            && err.contains("config.json"),
        "{err}"
    );
    assert!(!out.exists(), "nothing is written for bad input");
    let (ok, err) = trainer(&[
        "results",
        "/nonexistent/run",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/run") && err.contains("does not exist"),
        "{err}"
    );
}
