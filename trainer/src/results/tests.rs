use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use super::markdown::*;
use super::paper::SAC_V3;
use super::runs::*;
use super::*;

fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "flame-results-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A run directory like `trainer train` writes: config.json, metrics.jsonl with one
/// row per (step, return), and summary.json when `finished`.
fn write_run(
    root: &Path,
    name: &str,
    algo: &str,
    env: &str,
    seed: u64,
    evals: &[(u64, f64)],
    finished: bool,
) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let last = evals.last().map_or(0, |e| e.0);
    let config = serde_json::json!({
        "algo": algo, "env_id": env, "seed": seed,
        "shape": {"obs_dim": 17, "act_dim": 6, "hidden": [256, 256], "time_dim": 0},
        "nfe": 1, "noise_std": 0.5, "obs_clip": 1e6,
        "env_steps": if finished { last } else { 0 },
        "git_revision": "abc",
        "train": {"device": "cpu", "num_envs": 5, "eval_every": 25000}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut text = String::new();
    for (i, &(step, ret)) in evals.iter().enumerate() {
        let row = serde_json::json!({
            "step": step, "updates": step / 5, "wall_s": 10.0 * (i + 1) as f64,
            "eval_return": ret, "eval_return_std": 2.0, "eval_length": 1000.0,
            "train_return": null, "alpha": 0.2, "updates_per_s": 50.0,
            "env_steps_per_s": 250.0, "stats": {"q_loss": 1.0},
            "some_future_field": [1, 2, 3]
        });
        text += &row.to_string();
        text.push('\n');
    }
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    if finished {
        let summary = serde_json::json!({
            "algo": algo, "env_id": env, "seed": seed, "env_steps": last,
            "updates": last / 5, "episodes": 10, "wall_s": 3725.0,
            "final_eval_return": evals.last().unwrap().1, "final_eval_return_std": 2.0,
            "best_eval_return": 0.0, "best_eval_step": 0,
            "updates_per_s": 42.5, "env_steps_per_s": 212.5, "run_dir": dir
        });
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
    }
    dir
}

/// The rows of the first table under `## heading`, as header → cell maps.
fn table(md: &str, heading: &str) -> Vec<BTreeMap<String, String>> {
    let start = md
        .find(&format!("## {heading}\n"))
        .unwrap_or_else(|| panic!("no section {heading} in\n{md}"));
    let lines: Vec<&str> = md[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect();
    let split = |l: &str| -> Vec<String> {
        l.trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_string())
            .collect()
    };
    let header = split(lines[0]);
    lines[2..]
        .iter()
        .map(|l| header.iter().cloned().zip(split(l)).collect())
        .collect()
}

fn ev(step: u64, ret: f64) -> Eval {
    Eval {
        step,
        ret,
        std: 1.0,
        single: None,
        int8: None,
        wall_s: None,
        updates: None,
        alpha: None,
        diagnostics: Default::default(),
    }
}

#[test]
fn milestone_takes_the_last_eval_within_tolerance() {
    let evals = [
        ev(20_000, 1.0),
        ev(24_000, 2.0),
        ev(26_000, 3.0),
        ev(96_000, 4.0),
    ];
    // Exact or slightly before: the last at or before the milestone.
    assert_eq!(eval_at(&evals, 25_000, 0.05, 0).unwrap().ret, 2.0);
    // 24k is 4% before 25k: outside a 2% tolerance.
    assert!(eval_at(&evals, 25_000, 0.02, 0).is_none());
    // 96k is 4% before 100k.
    assert_eq!(eval_at(&evals, 100_000, 0.05, 0).unwrap().ret, 4.0);
    // Nothing near 300k; nothing before 10k.
    assert!(eval_at(&evals, 300_000, 0.05, 0).is_none());
    assert!(eval_at(&evals, 10_000, 0.05, 0).is_none());
    // An eval due at the milestone but run a few steps late (num_envs − 1) counts.
    let late = [ev(25_003, 5.0)];
    assert!(eval_at(&late, 25_000, 0.0, 0).is_none());
    assert_eq!(eval_at(&late, 25_000, 0.0, 4).unwrap().ret, 5.0);
}

#[test]
fn table_has_the_right_numbers() {
    let root = scratch("table");
    let fm = write_run(
        &root,
        "fm",
        "flame-m",
        "HalfCheetah-v5",
        0,
        &[
            (25_000, 100.0),
            (50_000, 200.5),
            (100_000, 900.25),
            (125_000, 800.0),
        ],
        true,
    );
    let sac = write_run(
        &root,
        "sac",
        "sac",
        "HalfCheetah-v5",
        1,
        &[(24_000, -5.0), (48_000, 50.0)],
        false,
    );
    let md = render_markdown(
        &[load_run(&sac).unwrap(), load_run(&fm).unwrap()],
        DEFAULT_MILESTONES,
        0.05,
    );
    let rows = table(&md, "HalfCheetah-v5");
    // flame-m first (algorithm order), then sac, then the paper's rows.
    let fm_row = &rows[0];
    assert_eq!(fm_row["algo"], "flame-m");
    assert_eq!(fm_row["seed"], "0");
    assert_eq!(fm_row["device"], "cpu");
    assert_eq!(fm_row["env steps"], "125000");
    assert_eq!(fm_row["wall"], "1h02m"); // summary.json's 3725 s
    assert_eq!(fm_row["updates/s"], "42.5"); // summary.json's
    assert_eq!(fm_row["25k"], "100.0 ± 2.0");
    assert_eq!(fm_row["50k"], "200.5 ± 2.0");
    assert_eq!(fm_row["100k"], "900.2 ± 2.0");
    assert_eq!(fm_row["300k"], DASH);
    assert_eq!(fm_row["1M"], DASH);
    assert_eq!(fm_row["final"], "800.0 ± 2.0 @125k");
    assert_eq!(fm_row["best"], "900.2 @100k");
    assert!(!fm_row.contains_key("final single (z=0)"));

    let sac_row = &rows[1];
    assert_eq!(sac_row["algo"], "sac");
    assert_eq!(sac_row["env steps"], "48000");
    // No summary: wall and rate from the last row (20 s, 9600 updates).
    assert_eq!(sac_row["wall"], "20s");
    assert_eq!(sac_row["updates/s"], "480.0");
    assert_eq!(sac_row["25k"], "-5.0 ± 2.0 @24k");
    assert_eq!(sac_row["50k"], "50.0 ± 2.0 @48k");
    assert_eq!(sac_row["100k"], DASH);

    let paper: Vec<_> = rows.iter().filter(|r| r["run"] == "paper").collect();
    let find = |label: &str| paper.iter().find(|r| r["algo"] == label).unwrap();
    assert_eq!(find("FLAME-R (paper)")["1M"], "11945 ± 461");
    assert_eq!(find("SAC (paper)")["1M"], "11380 ± 475");
    assert_eq!(find("SDAC (paper)")["1M"], "11166 ± 164");
    let v3 = find(SAC_V3);
    assert_eq!(
        (v3["100k"].as_str(), v3["300k"].as_str(), v3["1M"].as_str()),
        ("6515", "9059", "12122")
    );
    assert!(
        !md.contains("Paper numbers outside"),
        "all in the columns: {md}"
    );
    assert!(md.contains("Goal (issue 7)"));
    assert!(md.contains("No flame-m run has reached 1M yet"), "{md}");
    assert!(md.contains("No fidelity report"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn empty_metrics_single_column_and_seed_means() {
    let root = scratch("empty");
    let a = write_run(&root, "a", "sac", "Hopper-v5", 0, &[(1000, 10.0)], true);
    let b = write_run(&root, "b", "sac", "Hopper-v5", 1, &[(1000, 20.0)], true);
    let empty = write_run(&root, "e", "flame-m", "Hopper-v5", 2, &[], false);
    // A run that never wrote metrics.jsonl either (e.g. `trainer init`).
    let bare = write_run(&root, "bare", "flame-m", "Walker2d-v5", 0, &[], false);
    std::fs::remove_file(bare.join("metrics.jsonl")).unwrap();
    // One row carries the new optional field.
    let mut text = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    text = text.replace(
        "\"eval_length\"",
        "\"eval_return_single\":17.5,\"eval_return_int8\":16.25,\"eval_length\"",
    );
    std::fs::write(b.join("metrics.jsonl"), text).unwrap();

    let runs: Vec<Run> = [&a, &b, &empty, &bare]
        .iter()
        .map(|d| load_run(d).unwrap())
        .collect();
    let md = render_markdown(&runs, &[1000, 2000], 0.05);
    let rows = table(&md, "Hopper-v5");
    let e = rows.iter().find(|r| r["run"].ends_with("/e")).unwrap();
    assert_eq!(e["final"], "no evaluation yet");
    assert_eq!(e["1k"], DASH);
    assert_eq!(e["wall"], DASH);
    let b_row = rows.iter().find(|r| r["run"].ends_with("/b")).unwrap();
    assert_eq!(b_row["final single (z=0)"], "17.5");
    assert_eq!(b_row["final int8 (z=0)"], "16.2");
    let a_row = rows.iter().find(|r| r["run"].ends_with("/a")).unwrap();
    assert_eq!(a_row["final single (z=0)"], DASH);
    assert_eq!(a_row["final int8 (z=0)"], DASH);
    assert!(
        md.contains("\"final int8 (z=0)\": the same from the int8 runtime"),
        "{md}"
    );
    let mean = rows.iter().find(|r| r["run"] == "mean of 2 runs").unwrap();
    assert_eq!(mean["algo"], "sac");
    assert_eq!(mean["1k"], "15.0 ± 7.1");
    assert_eq!(mean["2k"], DASH);
    assert_eq!(mean["final single (z=0)"], "17.5 (n=1)");
    assert_eq!(mean["final int8 (z=0)"], "16.2 (n=1)");
    // Hopper's paper curve sits at 100k/300k/1M: not among these columns.
    assert!(!rows.iter().any(|r| r["run"] == "paper"));
    assert!(
        md.contains("(DESIGN §5): SAC v3 (Tianshou) 2613 @100k"),
        "{md}"
    );
    let w = table(&md, "Walker2d-v5");
    assert_eq!(w[0]["final"], "no evaluation yet");

    // A third SAC run with another setup (a different batch size) is not averaged in;
    // a different seed, device or budget would be.
    let c = write_run(&root, "c", "sac", "Hopper-v5", 2, &[(1000, 90.0)], true);
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(c.join("config.json")).unwrap()).unwrap();
    config["train"]["batch_size"] = 64.into();
    std::fs::write(c.join("config.json"), config.to_string()).unwrap();
    let runs: Vec<Run> = [&a, &b, &c].iter().map(|d| load_run(d).unwrap()).collect();
    let rows = table(&render_markdown(&runs, &[1000], 0.05), "Hopper-v5");
    let mean = rows.iter().find(|r| r["run"] == "mean of 2 runs").unwrap();
    assert_eq!(mean["1k"], "15.0 ± 7.1");
    assert!(!rows.iter().any(|r| r["run"] == "mean of 3 runs"));
    // Task order follows the registry: Hopper before Walker2d.
    assert!(md.find("## Hopper-v5").unwrap() < md.find("## Walker2d-v5").unwrap());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn bad_directories_are_named() {
    let root = scratch("bad");
    let missing = root.join("nope");
    let err = load_run(&missing).unwrap_err().to_string();
    assert!(err.contains(&missing.display().to_string()) && err.contains("does not exist"));
    let not_run = root.join("plain");
    std::fs::create_dir_all(&not_run).unwrap();
    let err = format!("{:#}", load_run(&not_run).unwrap_err());
    assert_eq!(
        err,
        format!(
            "{} is not a run directory: config.json is missing",
            not_run.display()
        )
    );
    let file = root.join("file.txt");
    std::fs::write(&file, "x").unwrap();
    assert!(load_run(&file)
        .unwrap_err()
        .to_string()
        .contains("not a directory"));
    // A broken metrics line is named with its line number.
    let run = write_run(&root, "r", "sac", "Ant-v5", 0, &[(1000, 1.0)], false);
    let mut text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text += "{\"step\": 2000}\n";
    std::fs::write(run.join("metrics.jsonl"), text).unwrap();
    let err = format!("{:#}", load_run(&run).unwrap_err());
    assert!(
        err.contains("metrics.jsonl:2") && err.contains("eval_return"),
        "{err}"
    );
    // results() refuses the whole set with the same error.
    let opts = ResultsOptions::new(root.join("out"));
    let err = format!(
        "{:#}",
        results(std::slice::from_ref(&not_run), &opts).unwrap_err()
    );
    assert!(err.contains("is not a run directory"), "{err}");
    assert!(!root.join("out").exists());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn mcu_table_from_hil_and_size_reports() {
    let root = scratch("mcu");
    let run = write_run(
        &root,
        "fm",
        "flame-m",
        "HalfCheetah-v5",
        0,
        &[(1000, 5.0)],
        true,
    );
    let hil = serde_json::json!({
        "env_id": "HalfCheetah-v5", "blob_hash": 1, "mode": "deterministic",
        "cost_unit": "instructions", "cost_min": 214000, "cost_median": 214269,
        "cost_max": 215000, "fault_plan": null, "faults": [],
        "episodes": [
            {"seed": 0, "steps": 1000, "total_return": 4000.0, "terminated": false,
             "bit_exact_steps": 1000, "link_errors": 0, "float_return": 4010.0},
            {"seed": 1, "steps": 500, "total_return": 3000.0, "terminated": true,
             "bit_exact_steps": 499, "link_errors": 2, "float_return": 3010.0}
        ]
    });
    std::fs::write(run.join("policy.hil.json"), hil.to_string()).unwrap();
    let size = serde_json::json!({"flash": 230056, "static_ram": 3624, "peak_stack": 6172});
    std::fs::write(run.join("policy.size.json"), size.to_string()).unwrap();
    let md = render_markdown(&[load_run(&run).unwrap()], &[1000], 0.05);
    let rows = table(
        &md,
        "On the MCU (`tools hil --qemu --report`, `tools size --report`)",
    );
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r["NFE"], "1");
    assert_eq!(r["HIL steps"], "1500");
    assert_eq!(r["bit-exact"], "1499");
    assert_eq!(r["link errors"], "2");
    assert_eq!(r["MCU return"], "3500.0");
    assert_eq!(r["cost/action"], "214269 instructions");
    assert_eq!(r["flash B"], "230056");
    assert_eq!(r["static RAM B"], "3624");
    assert_eq!(r["peak stack B"], "6172");
}

#[test]
fn fidelity_reports_and_outputs() {
    let root = scratch("fidelity");
    let run = write_run(
        &root,
        "fm",
        "flame-m",
        "HalfCheetah-v5",
        0,
        &[(25_000, 1000.0), (1_000_000, 12000.0)],
        true,
    );
    let report = |float: f64, int8: f64| {
        serde_json::json!({
            "blob": "x.blob", "blob_bytes": 146644, "blob_hash": 1,
            "macs_per_action": 138496, "calibration_states": 4000,
            "held_out_states": 1000, "max_action_error": 0.0125,
            "mean_action_error": 0.0018, "action_error_bound": 0.15, "episodes": 3,
            "float_return": float, "int8_return": int8, "golden_vectors": 64
        })
        .to_string()
    };
    std::fs::write(run.join("policy.report.json"), report(12000.0, 11880.0)).unwrap();
    let elsewhere = root.join("models");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("default.report.json"), report(-50.0, -60.0)).unwrap();

    let mut opts = ResultsOptions::new(root.join("out"));
    opts.blobs = vec![parse_blob_arg(&format!(
        "{}={}",
        run.display(),
        elsewhere.join("default.blob").display()
    ))
    .unwrap()];
    let md = results(std::slice::from_ref(&run), &opts).unwrap();
    let rows = table(&md, "Int8 vs float (`trainer export` fidelity reports)");
    assert_eq!(rows.len(), 2);
    assert!(
        !md.contains("## On the MCU"),
        "no HIL/size report, no MCU table"
    );
    assert_eq!(rows[0]["report"], "policy.report.json");
    assert_eq!(rows[0]["float return"], "12000.0");
    assert_eq!(rows[0]["int8 return"], "11880.0");
    assert_eq!(rows[0]["int8 vs float"], "-1.00%");
    assert_eq!(rows[0]["max action err"], "0.0125");
    assert_eq!(rows[0]["mean action err"], "0.0018");
    assert_eq!(rows[0]["MACs/action"], "138496");
    assert!(rows[1]["report"].ends_with("default.report.json"));
    assert_eq!(rows[1]["int8 vs float"], "-20.00%");
    // The goal line sees the 1M evaluation.
    assert!(
        md.contains("Best flame-m run at 1M: 12000.0 (100% of the goal)"),
        "{md}"
    );
    let hc = table(&md, "HalfCheetah-v5");
    assert_eq!(hc[0]["1M"], "12000.0 ± 2.0");
    // Both files are written; the markdown on disk is what was returned.
    assert_eq!(
        std::fs::read_to_string(root.join("out/results.md")).unwrap(),
        md
    );
    let png = std::fs::read(root.join("out/learning_curves.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // --blob naming a run that was not given, or a blob without report.
    opts.blobs = vec![(root.join("other"), elsewhere.join("default.blob"))];
    let err = results(std::slice::from_ref(&run), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not one of the run directories given"),
        "{err}"
    );
    opts.blobs = vec![(run.clone(), root.join("none.blob"))];
    let err = results(std::slice::from_ref(&run), &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no fidelity report at") && err.contains("none.report.json"));
    assert!(parse_blob_arg("no-equals").is_err());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn step_counts_parse() {
    assert_eq!(parse_steps("25000"), Ok(25_000));
    assert_eq!(parse_steps("25k"), Ok(25_000));
    assert_eq!(parse_steps("1M"), Ok(1_000_000));
    assert_eq!(parse_steps("1.5m"), Ok(1_500_000));
    assert!(parse_steps("0").is_err());
    assert!(parse_steps("-5k").is_err());
    assert!(parse_steps("lots").is_err());
    assert_eq!(
        report_path(Path::new("r/policy.blob")),
        Path::new("r/policy.report.json")
    );
    assert_eq!(
        report_path(Path::new("r/p.report.json")),
        Path::new("r/p.report.json")
    );
}

/// The learning diagnostics: the window means (`stats_mean`) win over the last update's
/// values, α comes from the row, a run without them is left out, and the figure is
/// written.
#[test]
fn diagnostics_table_uses_the_window_means() {
    let root = scratch("diagnostics");
    let run = write_run(
        &root,
        "fm",
        "flame-m",
        "HalfCheetah-v5",
        0,
        &[(50_000, 10.0)],
        false,
    );
    let row = serde_json::json!({
        "step": 50_000, "eval_return": 10.0, "eval_return_std": 1.0,
        "eval_return_single": 8.0, "alpha": 0.5,
        "stats": {"entropy": 9.0, "q_weight_ess": 1.0, "flow_loss": 9.0},
        "stats_mean": {"entropy": -1.5, "q_weight_ess": 42.0, "flow_loss": 0.25}
    });
    std::fs::write(run.join("metrics.jsonl"), format!("{row}\n")).unwrap();
    let bare = write_run(
        &root,
        "sac",
        "sac",
        "HalfCheetah-v5",
        0,
        &[(50_000, 20.0)],
        false,
    );
    let row = serde_json::json!({"step": 50_000, "eval_return": 20.0});
    std::fs::write(bare.join("metrics.jsonl"), format!("{row}\n")).unwrap();
    let opts = ResultsOptions {
        milestones: vec![50_000],
        ..ResultsOptions::new(root.join("out"))
    };
    let md = results(&[run, bare], &opts).unwrap();
    let rows = table(&md, "HalfCheetah-v5: learning diagnostics");
    assert_eq!(rows.len(), 1, "{md}");
    let r = &rows[0];
    assert_eq!(r["run"], "fm");
    assert_eq!(r["return"], "10.0 ± 1.0");
    assert_eq!(r["single (z=0)"], "8.0");
    assert_eq!(r["α"], "5.000e-1");
    assert_eq!(r["entropy"], "-1.50");
    assert_eq!(r["ESS"], "42.0");
    assert_eq!(r["flow loss"], "0.250");
    assert!(root.join("out").join("diagnostics.png").is_file());
}
