//! Reading run directories: `config.json`, `metrics.jsonl`, `summary.json`, fidelity
//! reports and the lab bench's HIL and size reports, as generic JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// One evaluation (a line of metrics.jsonl).
#[derive(Debug, Clone, PartialEq)]
pub struct Eval {
    pub step: u64,
    /// Mean evaluation return (NaN when the row had none).
    pub ret: f64,
    /// Its standard deviation over episodes (NaN when absent).
    pub std: f64,
    /// `eval_return_single`: one float sample with z = 0, when the row has it.
    pub single: Option<f64>,
    /// `eval_return_int8`: the int8 runtime from z = 0, when the row has it.
    pub int8: Option<f64>,
    pub wall_s: Option<f64>,
    pub updates: Option<u64>,
    /// α at the evaluation.
    pub alpha: Option<f64>,
    /// The agent's update statistics (entropy, flow_loss, q_weight_ess, …): their means
    /// since the previous row (`stats_mean`), else the last update's (`stats`, rows
    /// written before the means were).
    pub diagnostics: BTreeMap<String, f64>,
}

impl Eval {
    /// One diagnostic: `alpha`, or an update statistic by name.
    pub fn diagnostic(&self, name: &str) -> Option<f64> {
        match name {
            "alpha" => self.alpha,
            _ => self.diagnostics.get(name).copied(),
        }
    }
}

/// What a `trainer export` fidelity report (`<blob>.report.json`) says.
#[derive(Debug, Clone, PartialEq)]
pub struct Fidelity {
    pub report: PathBuf,
    pub blob_bytes: Option<u64>,
    pub macs_per_action: Option<u64>,
    pub episodes: Option<u64>,
    pub float_return: Option<f64>,
    pub int8_return: Option<f64>,
    pub max_action_error: Option<f64>,
    pub mean_action_error: Option<f64>,
    pub action_error_bound: Option<f64>,
}

/// One run directory, as the tables need it.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub algo: String,
    pub env_id: String,
    pub seed: Option<u64>,
    pub device: Option<String>,
    /// Envs stepped together: an evaluation due at step M runs up to num_envs − 1 later.
    pub num_envs: u64,
    /// The training configuration without what may differ between seeds of one
    /// experiment (seed, budgets, device, threads, progress): runs are averaged only
    /// when their setups are equal.
    pub setup: String,
    /// In step order.
    pub evals: Vec<Eval>,
    /// Env steps reached (summary, last evaluation or config, whichever is furthest).
    pub env_steps: u64,
    pub wall_s: Option<f64>,
    pub updates_per_s: Option<f64>,
    pub fidelity: Vec<Fidelity>,
    /// Network evaluations per action (config.json's `nfe`).
    pub nfe: Option<u64>,
    /// `tools hil --report` output found in the run directory (`*.hil.json`).
    pub hil: Option<Value>,
    /// `tools size --report` output found in the run directory (`*.size.json`).
    pub size: Option<Value>,
}

impl Run {
    pub fn last(&self) -> Option<&Eval> {
        self.evals.last()
    }

    /// The evaluation with the highest mean return (the first of equals).
    pub fn best(&self) -> Option<&Eval> {
        self.evals
            .iter()
            .filter(|e| !e.ret.is_nan())
            .fold(None, |b: Option<&Eval>, e| match b {
                Some(b) if b.ret >= e.ret => Some(b),
                _ => Some(e),
            })
    }
}

/// The fidelity report `trainer export --out BLOB` writes: `BLOB` with the extension
/// `report.json` (policy.blob → policy.report.json). A path that already is a report is
/// kept.
pub fn report_path(blob: &Path) -> PathBuf {
    if blob.to_string_lossy().ends_with(".report.json") {
        blob.to_path_buf()
    } else {
        blob.with_extension("report.json")
    }
}

pub(super) fn read_value(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub(super) fn get_u64(v: &Value, key: &str) -> Option<u64> {
    let x = v.get(key)?;
    x.as_u64()
        .or_else(|| x.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64))
}

pub(super) fn get_f64(v: &Value, key: &str) -> Option<f64> {
    v.get(key)?.as_f64()
}

/// Reads one run directory. A path that is not a directory with a `config.json` is
/// refused with an error naming it; a run without `metrics.jsonl` (or with an empty one)
/// has no evaluations.
pub fn load_run(dir: &Path) -> Result<Run> {
    let name = dir.display();
    if !dir.exists() {
        bail!("{name} is not a run directory: it does not exist");
    }
    if !dir.is_dir() {
        bail!("{name} is not a run directory: it is not a directory");
    }
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        bail!("{name} is not a run directory: config.json is missing");
    }
    let config = read_value(&config_path)?;
    let field = |key: &str| -> Result<String> {
        config
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .with_context(|| format!("{}: no {key:?} string", config_path.display()))
    };
    let algo = field("algo")?;
    let env_id = field("env_id")?;
    let train = config.get("train");
    let device = train
        .and_then(|t| t.get("device"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let num_envs = train
        .and_then(|t| get_u64(t, "num_envs"))
        .unwrap_or(1)
        .max(1);
    let setup = train.map_or_else(String::new, |t| {
        let mut t = t.clone();
        if let Some(map) = t.as_object_mut() {
            for key in [
                "seed",
                "steps",
                "max_wall_s",
                "device",
                "threads",
                "progress_secs",
                "checkpoint_every",
            ] {
                map.remove(key);
            }
            // Runs before `td_entropy` wrote `entropy_in_td: false`, which is today's
            // default (`td_entropy` off, left out of config.json).
            if let Some(flame) = map.get_mut("flame").and_then(Value::as_object_mut) {
                if flame.get("entropy_in_td") == Some(&Value::Bool(false)) {
                    flame.remove("entropy_in_td");
                }
            }
        }
        t.to_string()
    });

    let metrics_path = dir.join("metrics.jsonl");
    let evals = if metrics_path.is_file() {
        let text = std::fs::read_to_string(&metrics_path)
            .with_context(|| format!("reading {}", metrics_path.display()))?;
        parse_metrics(&text, &metrics_path)?
    } else {
        Vec::new()
    };

    let summary_path = dir.join("summary.json");
    let summary = if summary_path.is_file() {
        Some(read_value(&summary_path)?)
    } else {
        None
    };
    let last = evals.last();
    let last_step = last.map_or(0, |e| e.step);
    let summary_steps = summary.as_ref().and_then(|s| get_u64(s, "env_steps"));
    let env_steps = [
        get_u64(&config, "env_steps"),
        summary_steps,
        Some(last_step),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0);
    // A summary older than the last evaluation belongs to an earlier leg of a resumed run.
    let (wall_s, updates_per_s) = match &summary {
        Some(s) if summary_steps.unwrap_or(0) >= last_step => {
            (get_f64(s, "wall_s"), get_f64(s, "updates_per_s"))
        }
        _ => {
            let wall = last.and_then(|e| e.wall_s);
            let rate = match (last.and_then(|e| e.updates), wall) {
                (Some(u), Some(w)) if w > 0.0 => Some(u as f64 / w),
                _ => None,
            };
            (wall, rate)
        }
    };

    // The run directory's report files, listed once, in name order.
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {name}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let ending = |suffix: &'static str| {
        files
            .iter()
            .filter(move |p| p.to_string_lossy().ends_with(suffix))
    };
    let fidelity = ending(".report.json")
        .map(|p| parse_report(p))
        .collect::<Result<Vec<_>>>()?;
    let first = |suffix| ending(suffix).next().map(|p| read_value(p)).transpose();
    let (hil, size) = (first(".hil.json")?, first(".size.json")?);

    Ok(Run {
        nfe: get_u64(&config, "nfe"),
        hil,
        size,
        dir: dir.to_path_buf(),
        algo,
        env_id,
        seed: get_u64(&config, "seed"),
        device,
        num_envs,
        setup,
        evals,
        env_steps,
        wall_s,
        updates_per_s,
        fidelity,
    })
}

/// metrics.jsonl: one JSON object per line with at least `step` and `eval_return`
/// (null for NaN); other fields are optional and unknown ones ignored.
pub fn parse_metrics(text: &str, path: &Path) -> Result<Vec<Eval>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).with_context(at)?;
        let step = get_u64(&v, "step").with_context(|| format!("{}: no \"step\"", at()))?;
        let ret = match v.get("eval_return") {
            Some(Value::Null) => f64::NAN,
            Some(x) => x
                .as_f64()
                .with_context(|| format!("{}: \"eval_return\" is not a number", at()))?,
            None => bail!("{}: no \"eval_return\"", at()),
        };
        out.push(Eval {
            step,
            ret,
            std: get_f64(&v, "eval_return_std").unwrap_or(f64::NAN),
            single: get_f64(&v, "eval_return_single"),
            int8: get_f64(&v, "eval_return_int8"),
            wall_s: get_f64(&v, "wall_s"),
            updates: get_u64(&v, "updates"),
            alpha: get_f64(&v, "alpha"),
            diagnostics: ["stats_mean", "stats"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_object))
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, x)| Some((k.clone(), x.as_f64()?)))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    out.sort_by_key(|e| e.step);
    Ok(out)
}

/// A `trainer export` fidelity report (fields read one by one; missing ones are "–").
pub fn parse_report(path: &Path) -> Result<Fidelity> {
    let v = read_value(path)?;
    ensure!(
        v.is_object(),
        "{} is not a fidelity report (not a JSON object)",
        path.display()
    );
    Ok(Fidelity {
        report: path.to_path_buf(),
        blob_bytes: get_u64(&v, "blob_bytes"),
        macs_per_action: get_u64(&v, "macs_per_action"),
        episodes: get_u64(&v, "episodes"),
        float_return: get_f64(&v, "float_return"),
        int8_return: get_f64(&v, "int8_return"),
        max_action_error: get_f64(&v, "max_action_error"),
        mean_action_error: get_f64(&v, "mean_action_error"),
        action_error_bound: get_f64(&v, "action_error_bound"),
    })
}

pub(super) fn attach_blob(runs: &mut [Run], run: &Path, blob: &Path) -> Result<()> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let want = canon(run);
    let Some(r) = runs.iter_mut().find(|r| canon(&r.dir) == want) else {
        bail!(
            "--blob {}={}: {} is not one of the run directories given",
            run.display(),
            blob.display(),
            run.display()
        );
    };
    let report = report_path(blob);
    if !report.is_file() {
        bail!(
            "--blob {}={}: no fidelity report at {} (`trainer export` writes it next to the blob)",
            run.display(),
            blob.display(),
            report.display()
        );
    }
    let known = canon(&report);
    if !r.fidelity.iter().any(|f| canon(&f.report) == known) {
        r.fidelity.push(parse_report(&report)?);
    }
    Ok(())
}

/// The evaluation shown in the column of `milestone`: the last one at or before it, if
/// it is at most `tolerance`·milestone steps before it. "At" allows `overshoot` steps
/// past the milestone, since an evaluation due at step M runs at the first vector step
/// ≥ M (up to num_envs − 1 steps late).
pub fn eval_at(evals: &[Eval], milestone: u64, tolerance: f64, overshoot: u64) -> Option<&Eval> {
    let e = evals
        .iter()
        .rev()
        .find(|e| e.step <= milestone + overshoot)?;
    let slack = (tolerance * milestone as f64).round() as u64;
    (e.step + slack >= milestone).then_some(e)
}

pub(super) fn run_eval_at(run: &Run, milestone: u64, tolerance: f64) -> Option<&Eval> {
    eval_at(&run.evals, milestone, tolerance, run.num_envs - 1)
}

/// Tasks in the registry's order (the paper's), others after them by name.
pub(super) fn env_order(runs: &[Run]) -> Vec<String> {
    let known = sim::env::ids();
    let mut envs: Vec<String> = Vec::new();
    for r in runs {
        if !envs.contains(&r.env_id) {
            envs.push(r.env_id.clone());
        }
    }
    envs.sort_by_key(|e| {
        (
            known.iter().position(|k| k == e).unwrap_or(usize::MAX),
            e.clone(),
        )
    });
    envs
}

pub(super) fn algo_rank(algo: &str) -> usize {
    ["flame-m", "flame-r", "sac"]
        .iter()
        .position(|a| *a == algo)
        .unwrap_or(3)
}

/// Runs of `env`, by algorithm, seed, directory.
pub(super) fn runs_of<'a>(runs: &'a [Run], env: &str) -> Vec<&'a Run> {
    let mut v: Vec<&Run> = runs.iter().filter(|r| r.env_id == env).collect();
    v.sort_by_key(|r| (algo_rank(&r.algo), r.algo.clone(), r.seed, r.dir.clone()));
    v
}
