//! `trainer results`: the results table (markdown) and the learning curves (PNG), made
//! from training run directories (`trainer train`, see [`crate::train`]) so that no number
//! in them is typed by hand.
//!
//! Per run it reads `config.json` (algorithm, task, seed, device), `metrics.jsonl` (one
//! evaluation per line), `summary.json` when the run finished, and every
//! `*.report.json` fidelity report `trainer export` left in the directory (more with
//! `--blob RUN=BLOB`). Everything is read as generic JSON, so rows with fields this
//! module does not know (or lacks, like `eval_return_single`) parse all the same.
//!
//! It writes `results.md` (one table per task, the paper's numbers beside, and an int8
//! fidelity table) and `learning_curves.png` (one panel per task, one line per run,
//! colour per algorithm, the paper's reference points dashed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::plot::{fmt_steps, learning_curves, Panel, Series, SeriesStyle};
use crate::train::fmt_secs;

/// One number from the paper.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperRef {
    pub env_id: &'static str,
    /// Row label in the table and the plot's legend.
    pub label: &'static str,
    /// Our algorithm it compares with (for the colour).
    pub algo: &'static str,
    pub step: u64,
    pub mean: f64,
    pub std: Option<f64>,
}

const fn paper(
    env_id: &'static str,
    label: &'static str,
    algo: &'static str,
    step: u64,
    mean: f64,
    std: Option<f64>,
) -> PaperRef {
    PaperRef {
        env_id,
        label,
        algo,
        step,
        mean,
        std,
    }
}

const SAC_V3: &str = "SAC v3 (Tianshou)";

/// The paper's numbers as `shared/DESIGN.md` §5 ("Targets from the paper") quotes them:
/// HalfCheetah-v5 at 1M env steps (FLAME-R, SAC, SDAC; mean ± std over seeds), and the
/// SAC reference curves (MuJoCo v3, Tianshou, 10 seeds) at 100k / 300k / 1M steps.
#[rustfmt::skip]
pub const PAPER: &[PaperRef] = &[
    paper("HalfCheetah-v5", "FLAME-R (paper)", "flame-r", 1_000_000, 11945.0, Some(461.0)),
    paper("HalfCheetah-v5", "SAC (paper)", "sac", 1_000_000, 11380.0, Some(475.0)),
    paper("HalfCheetah-v5", "SDAC (paper)", "sdac", 1_000_000, 11166.0, Some(164.0)),
    paper("HalfCheetah-v5", SAC_V3, "sac", 100_000, 6515.0, None),
    paper("HalfCheetah-v5", SAC_V3, "sac", 300_000, 9059.0, None),
    paper("HalfCheetah-v5", SAC_V3, "sac", 1_000_000, 12122.0, None),
    paper("Hopper-v5", SAC_V3, "sac", 100_000, 2613.0, None),
    paper("Hopper-v5", SAC_V3, "sac", 300_000, 3388.0, None),
    paper("Hopper-v5", SAC_V3, "sac", 1_000_000, 3532.0, None),
    paper("Walker2d-v5", SAC_V3, "sac", 100_000, 1305.0, None),
    paper("Walker2d-v5", SAC_V3, "sac", 300_000, 3387.0, None),
    paper("Walker2d-v5", SAC_V3, "sac", 1_000_000, 4961.0, None),
    paper("Ant-v5", SAC_V3, "sac", 100_000, 1020.0, None),
    paper("Ant-v5", SAC_V3, "sac", 300_000, 3561.0, None),
    paper("Ant-v5", SAC_V3, "sac", 1_000_000, 5714.0, None),
    paper("Humanoid-v5", SAC_V3, "sac", 100_000, 629.0, None),
    paper("Humanoid-v5", SAC_V3, "sac", 300_000, 2045.0, None),
    paper("Humanoid-v5", SAC_V3, "sac", 1_000_000, 5416.0, None),
];

/// Issue 7's goal: FLAME-M on HalfCheetah-v5 at 1M env steps at least the paper's FLAME-R
/// (DESIGN §5), with the int8 policy within [`GOAL_INT8_PCT`] of the float one.
pub const GOAL: (&str, &str, u64, f64) = ("HalfCheetah-v5", "flame-m", 1_000_000, 11945.0);
pub const GOAL_INT8_PCT: f64 = 2.0;

/// Default return columns (env steps).
pub const DEFAULT_MILESTONES: &[u64] = &[25_000, 50_000, 100_000, 300_000, 1_000_000];

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

/// `trainer results` settings.
#[derive(Debug, Clone)]
pub struct ResultsOptions {
    /// Directory for results.md and learning_curves.png (created if missing).
    pub out: PathBuf,
    /// Env steps of the return columns.
    pub milestones: Vec<u64>,
    /// An evaluation stands for a milestone if it is at most this fraction of the
    /// milestone before it.
    pub tolerance: f64,
    /// (run directory, blob or report): extra fidelity reports.
    pub blobs: Vec<(PathBuf, PathBuf)>,
}

impl ResultsOptions {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            milestones: DEFAULT_MILESTONES.to_vec(),
            tolerance: 0.05,
            blobs: Vec::new(),
        }
    }
}

/// Reads the runs, writes `out/results.md` and `out/learning_curves.png`, and returns
/// the markdown.
pub fn results(runs: &[PathBuf], opts: &ResultsOptions) -> Result<String> {
    ensure!(!runs.is_empty(), "no run directories given");
    ensure!(
        opts.tolerance.is_finite() && (0.0..1.0).contains(&opts.tolerance),
        "--tolerance must be in [0, 1), got {}",
        opts.tolerance
    );
    ensure!(
        !opts.milestones.is_empty() && opts.milestones.iter().all(|&m| m > 0),
        "--milestones must be positive env-step counts"
    );
    let mut loaded = runs
        .iter()
        .map(|d| load_run(d))
        .collect::<Result<Vec<_>>>()?;
    for (run, blob) in &opts.blobs {
        attach_blob(&mut loaded, run, blob)?;
    }
    let mut milestones = opts.milestones.clone();
    milestones.sort_unstable();
    milestones.dedup();
    let md = render_markdown(&loaded, &milestones, opts.tolerance);
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let md_path = opts.out.join("results.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    learning_curves(&opts.out.join("learning_curves.png"), &panels(&loaded))?;
    Ok(md)
}

/// `--blob RUN=BLOB`.
pub fn parse_blob_arg(s: &str) -> Result<(PathBuf, PathBuf)> {
    match s.split_once('=') {
        Some((run, blob)) if !run.is_empty() && !blob.is_empty() => {
            Ok((PathBuf::from(run), PathBuf::from(blob)))
        }
        _ => bail!("--blob expects RUN=BLOB (a run directory and its exported blob), got {s:?}"),
    }
}

/// Env-step counts with an optional k/M suffix: `25000`, `25k`, `1M`, `1.5M`.
pub fn parse_steps(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('m' | 'M') => (&t[..t.len() - 1], 1e6),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a step count (e.g. 25000, 25k, 1M)"))?;
    let steps = v * mul;
    if !(steps.is_finite() && steps >= 1.0 && steps.fract() == 0.0) {
        return Err(format!("{s:?} is not a positive whole number of steps"));
    }
    Ok(steps as u64)
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

fn read_value(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn get_u64(v: &Value, key: &str) -> Option<u64> {
    let x = v.get(key)?;
    x.as_u64()
        .or_else(|| x.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64))
}

fn get_f64(v: &Value, key: &str) -> Option<f64> {
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

fn attach_blob(runs: &mut [Run], run: &Path, blob: &Path) -> Result<()> {
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

fn run_eval_at(run: &Run, milestone: u64, tolerance: f64) -> Option<&Eval> {
    eval_at(&run.evals, milestone, tolerance, run.num_envs - 1)
}

/// Tasks in the registry's order (the paper's), others after them by name.
fn env_order(runs: &[Run]) -> Vec<String> {
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

fn algo_rank(algo: &str) -> usize {
    ["flame-m", "flame-r", "sac"]
        .iter()
        .position(|a| *a == algo)
        .unwrap_or(3)
}

/// Runs of `env`, by algorithm, seed, directory.
fn runs_of<'a>(runs: &'a [Run], env: &str) -> Vec<&'a Run> {
    let mut v: Vec<&Run> = runs.iter().filter(|r| r.env_id == env).collect();
    v.sort_by_key(|r| (algo_rank(&r.algo), r.algo.clone(), r.seed, r.dir.clone()));
    v
}

const DASH: &str = "–";

fn fmt_ret(mean: f64, std: f64) -> String {
    if std.is_finite() {
        format!("{mean:.1} ± {std:.1}")
    } else {
        format!("{mean:.1}")
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn milestone_cell(e: Option<&Eval>, milestone: u64) -> String {
    match e {
        None => DASH.into(),
        Some(e) => {
            let mut s = fmt_ret(e.ret, e.std);
            if fmt_steps(e.step as f64) != fmt_steps(milestone as f64) {
                s += &format!(" @{}", fmt_steps(e.step as f64));
            }
            s
        }
    }
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let std = if xs.len() > 1 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        f64::NAN
    };
    (mean, std)
}

fn table_row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

/// The whole results.md.
pub fn render_markdown(runs: &[Run], milestones: &[u64], tolerance: f64) -> String {
    let mut md = String::new();
    let n = runs.len();
    let _ = writeln!(md, "# Results\n");
    let _ = writeln!(
        md,
        "Made by `trainer results` from {n} run director{} (no number typed by hand). \
         Returns are mean ± std over the evaluation episodes, acting without exploration \
         noise. A step column shows the last evaluation at or before that step (or up to \
         num_envs − 1 steps after it, where the evaluation was due) if one lies within \
         {:.0}% of it, else {DASH}; \"@k\" marks an evaluation not exactly at the column's \
         step. Paper rows quote `shared/DESIGN.md` §5.\n",
        if n == 1 { "y" } else { "ies" },
        tolerance * 100.0
    );
    let _ = writeln!(md, "![learning curves](learning_curves.png)\n");
    for env in env_order(runs) {
        render_env(&mut md, runs, &env, milestones, tolerance);
    }
    render_fidelity(&mut md, runs);
    render_deployment(&mut md, runs);
    md
}

/// A column of the last evaluation's other returns, shown where some run has them.
struct FinalColumn {
    header: &'static str,
    value: fn(&Eval) -> Option<f64>,
    meaning: &'static str,
}

const FINAL_COLUMNS: [FinalColumn; 2] = [
    FinalColumn {
        header: "final single (z=0)",
        value: |e| e.single,
        meaning: "the last evaluation acting with one float sample from z = 0 and no critic, \
                  as the MCU does (the return columns use the training-time acting rule).",
    },
    FinalColumn {
        header: "final int8 (z=0)",
        value: |e| e.int8,
        meaning: "the same from the int8 runtime, on the policy quantized at that evaluation \
                  as `trainer export` quantizes it.",
    },
];

fn render_env(md: &mut String, runs: &[Run], env: &str, milestones: &[u64], tolerance: f64) {
    let rows = runs_of(runs, env);
    let extras: Vec<&FinalColumn> = FINAL_COLUMNS
        .iter()
        .filter(|c| {
            rows.iter()
                .any(|r| r.evals.iter().any(|e| (c.value)(e).is_some()))
        })
        .collect();
    let _ = writeln!(md, "## {env}\n");
    let mut header: Vec<String> = [
        "run",
        "algo",
        "seed",
        "device",
        "env steps",
        "wall",
        "updates/s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(milestones.iter().map(|&m| fmt_steps(m as f64)));
    header.push("final".into());
    header.push("best".into());
    header.extend(extras.iter().map(|c| c.header.to_string()));
    md.push_str(&table_row(&header));
    md.push_str(&table_row(&vec!["---".to_string(); header.len()]));

    for r in &rows {
        let mut c = vec![
            cell(&r.dir.display().to_string()),
            cell(&r.algo),
            r.seed.map_or(DASH.into(), |s| s.to_string()),
            cell(r.device.as_deref().unwrap_or(DASH)),
            r.env_steps.to_string(),
            r.wall_s.map_or(DASH.into(), fmt_secs),
            r.updates_per_s.map_or(DASH.into(), |u| format!("{u:.1}")),
        ];
        c.extend(
            milestones
                .iter()
                .map(|&m| milestone_cell(run_eval_at(r, m, tolerance), m)),
        );
        match (r.last(), r.best()) {
            (Some(last), best) => {
                c.push(format!(
                    "{} @{}",
                    fmt_ret(last.ret, last.std),
                    fmt_steps(last.step as f64)
                ));
                c.push(best.map_or(DASH.into(), |b| {
                    format!("{:.1} @{}", b.ret, fmt_steps(b.step as f64))
                }));
            }
            (None, _) => {
                c.push("no evaluation yet".into());
                c.push(DASH.into());
            }
        }
        for extra in &extras {
            c.push(
                r.last()
                    .and_then(extra.value)
                    .map_or(DASH.into(), |s| format!("{s:.1}")),
            );
        }
        md.push_str(&table_row(&c));
    }

    // Mean over the seeds of one experiment (same algorithm and setup), where it has more
    // than one evaluated run.
    let mut experiments: Vec<(&str, &str)> = Vec::new();
    for r in &rows {
        if !experiments.contains(&(r.algo.as_str(), r.setup.as_str())) {
            experiments.push((r.algo.as_str(), r.setup.as_str()));
        }
    }
    for (algo, setup) in experiments {
        let group: Vec<&Run> = rows
            .iter()
            .copied()
            .filter(|r| r.algo == algo && r.setup == setup && !r.evals.is_empty())
            .collect();
        if group.len() < 2 {
            continue;
        }
        let agg = |xs: Vec<f64>| -> String {
            if xs.is_empty() {
                return DASH.into();
            }
            let k = xs.len();
            let (m, s) = mean_std(&xs);
            let mut out = fmt_ret(m, s);
            if k < group.len() {
                out += &format!(" (n={k})");
            }
            out
        };
        let mut c = vec![
            format!("mean of {} runs", group.len()),
            cell(algo),
            DASH.into(),
            DASH.into(),
            DASH.into(),
            DASH.into(),
            DASH.into(),
        ];
        for &m in milestones {
            c.push(agg(group
                .iter()
                .filter_map(|r| run_eval_at(r, m, tolerance).map(|e| e.ret))
                .collect()));
        }
        c.push(agg(group
            .iter()
            .filter_map(|r| r.last())
            .map(|e| e.ret)
            .collect()));
        c.push(agg(group
            .iter()
            .filter_map(|r| r.best())
            .map(|e| e.ret)
            .collect()));
        for extra in &extras {
            c.push(agg(group
                .iter()
                .filter_map(|r| r.last().and_then(extra.value))
                .collect()));
        }
        md.push_str(&table_row(&c));
    }

    // The paper's numbers in the same columns.
    let refs: Vec<&PaperRef> = PAPER.iter().filter(|p| p.env_id == env).collect();
    let mut labels: Vec<&str> = refs.iter().map(|p| p.label).collect();
    labels.dedup();
    for label in &labels {
        let of: Vec<&&PaperRef> = refs.iter().filter(|p| p.label == *label).collect();
        if !of.iter().any(|p| milestones.contains(&p.step)) {
            continue;
        }
        let mut c = vec![
            "paper".to_string(),
            cell(label),
            DASH.into(),
            DASH.into(),
            DASH.into(),
            DASH.into(),
            DASH.into(),
        ];
        for &m in milestones {
            c.push(
                of.iter()
                    .find(|p| p.step == m)
                    .map_or(DASH.into(), |p| match p.std {
                        Some(s) => format!("{:.0} ± {s:.0}", p.mean),
                        None => format!("{:.0}", p.mean),
                    }),
            );
        }
        c.push(DASH.into());
        c.push(DASH.into());
        c.extend(extras.iter().map(|_| DASH.to_string()));
        md.push_str(&table_row(&c));
    }
    md.push('\n');
    for extra in &extras {
        let _ = writeln!(md, "\"{}\": {}\n", extra.header, extra.meaning);
    }
    let hidden: Vec<&&PaperRef> = refs
        .iter()
        .filter(|p| !milestones.contains(&p.step))
        .collect();
    if !hidden.is_empty() {
        let quoted: Vec<String> = hidden
            .iter()
            .map(|p| {
                let v = match p.std {
                    Some(s) => format!("{:.0} ± {s:.0}", p.mean),
                    None => format!("{:.0}", p.mean),
                };
                format!("{} {v} @{}", p.label, fmt_steps(p.step as f64))
            })
            .collect();
        let _ = writeln!(
            md,
            "Paper numbers outside these columns (DESIGN §5): {}.\n",
            quoted.join("; ")
        );
    }
    let (goal_env, goal_algo, goal_step, goal_value) = GOAL;
    if env == goal_env {
        let _ = writeln!(
            md,
            "{}\n",
            goal_line(&rows, goal_algo, goal_step, goal_value, tolerance)
        );
    }
}

fn goal_line(rows: &[&Run], algo: &str, step: u64, goal: f64, tolerance: f64) -> String {
    let head = format!(
        "Goal (issue 7): {algo} at {} env steps ≥ {goal:.0} (the paper's FLAME-R).",
        fmt_steps(step as f64)
    );
    let runs: Vec<&&Run> = rows.iter().filter(|r| r.algo == algo).collect();
    let pct = |v: f64| 100.0 * v / goal;
    let at_goal = runs
        .iter()
        .filter_map(|r| run_eval_at(r, step, tolerance))
        .map(|e| e.ret)
        .fold(f64::NAN, f64::max);
    if at_goal.is_finite() {
        return format!(
            "{head} Best {algo} run at {}: {at_goal:.1} ({:.0}% of the goal).",
            fmt_steps(step as f64),
            pct(at_goal)
        );
    }
    match runs
        .iter()
        .filter_map(|r| r.best())
        .max_by(|a, b| a.ret.total_cmp(&b.ret))
    {
        Some(b) => format!(
            "{head} No {algo} run has reached {} yet; its best evaluation so far: {:.1} at {} \
             steps ({:.0}% of the goal).",
            fmt_steps(step as f64),
            b.ret,
            fmt_steps(b.step as f64),
            pct(b.ret)
        ),
        None => format!("{head} No evaluated {algo} run here."),
    }
}

/// The deployed policies on the MCU: `tools hil --report` (return, bit-exactness, cost
/// per action) and `tools size --report` (flash, RAM, stack) files in the run directories.
fn render_deployment(md: &mut String, runs: &[Run]) {
    let with: Vec<&Run> = runs
        .iter()
        .filter(|r| r.hil.is_some() || r.size.is_some())
        .collect();
    if with.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## On the MCU (`tools hil --qemu --report`, `tools size --report`)\n"
    );
    let header: Vec<String> = [
        "run",
        "algo",
        "NFE",
        "HIL steps",
        "bit-exact",
        "link errors",
        "MCU return",
        "cost/action",
        "flash B",
        "static RAM B",
        "peak stack B",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    md.push_str(&table_row(&header));
    md.push_str(&table_row(&vec!["---".to_string(); header.len()]));
    let opt_u = |v: Option<u64>| v.map_or(DASH.into(), |x| x.to_string());
    for r in with {
        let episodes: Vec<&Value> = r
            .hil
            .as_ref()
            .and_then(|h| h.get("episodes"))
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let sum = |key: &str| -> Option<u64> {
            (!episodes.is_empty()).then(|| episodes.iter().filter_map(|e| get_u64(e, key)).sum())
        };
        let returns: Vec<f64> = episodes
            .iter()
            .filter_map(|e| get_f64(e, "total_return"))
            .collect();
        let mcu_return = (!returns.is_empty()).then(|| {
            let mean = returns.iter().sum::<f64>() / returns.len() as f64;
            format!("{mean:.1}")
        });
        let cost = r.hil.as_ref().and_then(|h| {
            let unit = h.get("cost_unit").and_then(Value::as_str).unwrap_or("");
            get_u64(h, "cost_median").map(|c| format!("{c} {unit}"))
        });
        let size = |key: &str| r.size.as_ref().and_then(|s| get_u64(s, key));
        md.push_str(&table_row(&[
            cell(&r.dir.display().to_string()),
            cell(&r.algo),
            opt_u(r.nfe),
            opt_u(sum("steps")),
            opt_u(sum("bit_exact_steps")),
            opt_u(sum("link_errors")),
            mcu_return.unwrap_or_else(|| DASH.into()),
            cost.unwrap_or_else(|| DASH.into()),
            opt_u(size("flash")),
            opt_u(size("static_ram")),
            opt_u(size("peak_stack")),
        ]));
    }
    let _ = writeln!(
        md,
        "\nQEMU `netduinoplus2` (Cortex-M4F), cost as the TIM2 count under `-icount shift=0` \
         (instructions). Budgets (issue 6): flash ≤ 256 KiB, static RAM + stack ≤ 16 KiB.\n"
    );
}

fn render_fidelity(md: &mut String, runs: &[Run]) {
    let _ = writeln!(md, "## Int8 vs float (`trainer export` fidelity reports)\n");
    let with: Vec<&Run> = runs.iter().filter(|r| !r.fidelity.is_empty()).collect();
    if with.is_empty() {
        let _ = writeln!(
            md,
            "No fidelity report in these runs (`trainer export RUN --out RUN/policy.blob` \
             writes RUN/policy.report.json; `--blob RUN=BLOB` adds one from elsewhere).\n"
        );
        return;
    }
    let header = [
        "run",
        "report",
        "env",
        "algo",
        "episodes",
        "float return",
        "int8 return",
        "int8 vs float",
        "max action err",
        "mean action err",
        "bound",
        "blob bytes",
        "MACs/action",
    ];
    let header: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    md.push_str(&table_row(&header));
    md.push_str(&table_row(&vec!["---".to_string(); header.len()]));
    let opt_f = |v: Option<f64>, digits: usize| v.map_or(DASH.into(), |x| format!("{x:.digits$}"));
    let opt_u = |v: Option<u64>| v.map_or(DASH.into(), |x| x.to_string());
    for r in with {
        for f in &r.fidelity {
            let name = f
                .report
                .strip_prefix(&r.dir)
                .unwrap_or(&f.report)
                .display()
                .to_string();
            md.push_str(&table_row(&[
                cell(&r.dir.display().to_string()),
                cell(&name),
                cell(&r.env_id),
                cell(&r.algo),
                opt_u(f.episodes),
                opt_f(f.float_return, 1),
                opt_f(f.int8_return, 1),
                int8_vs_float(f.float_return, f.int8_return),
                opt_f(f.max_action_error, 4),
                opt_f(f.mean_action_error, 4),
                opt_f(f.action_error_bound, 2),
                opt_u(f.blob_bytes),
                opt_u(f.macs_per_action),
            ]));
        }
    }
    let _ = writeln!(
        md,
        "\nAction errors in half-range units on held-out states; returns over the same \
         episode seeds. Goal (issue 7): int8 within {GOAL_INT8_PCT:.0}% of float.\n"
    );
}

/// (int8 − float) / |float| in percent.
fn int8_vs_float(float: Option<f64>, int8: Option<f64>) -> String {
    match (float, int8) {
        (Some(f), Some(q)) if f != 0.0 => format!("{:+.2}%", 100.0 * (q - f) / f.abs()),
        (Some(f), Some(q)) => format!("{:+.1}", q - f),
        _ => DASH.into(),
    }
}

fn algo_color(algo: &str) -> (u8, u8, u8) {
    match algo {
        "flame-m" => (30, 100, 220),
        "flame-r" => (30, 160, 70),
        "sac" => (230, 120, 20),
        "sdac" => (150, 60, 180),
        _ => (110, 110, 110),
    }
}

/// One panel per task: a line per run (colour per algorithm), and the paper's numbers
/// that lie within the steps the runs reached.
fn panels(runs: &[Run]) -> Vec<Panel> {
    env_order(runs)
        .into_iter()
        .map(|env| {
            let rows = runs_of(runs, &env);
            let mut series: Vec<Series> = rows
                .iter()
                .filter(|r| !r.evals.is_empty())
                .map(|r| {
                    let seed = r.seed.map_or(String::new(), |s| format!(" s{s}"));
                    let mut label = format!("{}{seed}", r.algo);
                    let same = rows
                        .iter()
                        .filter(|o| o.algo == r.algo && o.seed == r.seed && !o.evals.is_empty())
                        .count();
                    if same > 1 {
                        let dir = r.dir.file_name().map_or_else(
                            || r.dir.display().to_string(),
                            |n| n.to_string_lossy().into_owned(),
                        );
                        label += &format!(" {dir}");
                    }
                    Series {
                        label,
                        color: algo_color(&r.algo),
                        style: SeriesStyle::Measured,
                        points: r.evals.iter().map(|e| (e.step as f64, e.ret)).collect(),
                    }
                })
                .collect();
            let reached = rows
                .iter()
                .filter_map(|r| r.last())
                .map(|e| e.step)
                .max()
                .unwrap_or(0) as f64;
            let mut by_label: BTreeMap<&str, Vec<&PaperRef>> = BTreeMap::new();
            for p in PAPER.iter().filter(|p| p.env_id == env) {
                if p.step as f64 <= reached * 1.05 {
                    by_label.entry(p.label).or_default().push(p);
                }
            }
            for (label, refs) in by_label {
                series.push(Series {
                    label: label.to_string(),
                    color: algo_color(refs[0].algo),
                    style: SeriesStyle::Reference,
                    points: refs.iter().map(|p| (p.step as f64, p.mean)).collect(),
                });
            }
            Panel {
                title: format!("{env}: eval return"),
                series,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
}
