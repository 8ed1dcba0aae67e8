//! `trainer results`: the results table (markdown) and the learning curves (PNG), made
//! from training run directories (`trainer train`, see [`crate::train`]) so that no number
//! in them is typed by hand.
//!
//! A seed group's directory (`trainer train --seeds`) stands for its `seed-N` runs. Per
//! run it reads `config.json` (algorithm, task, seed, device), `metrics.jsonl` (one
//! evaluation per line), `summary.json` when the run finished, and every
//! `*.report.json` fidelity report `trainer export` left in the directory (more with
//! `--blob RUN=BLOB`). Everything is read as generic JSON, so rows with fields this
//! module does not know (or lacks, like `eval_return_single`) parse all the same.
//!
//! It writes `results.md` (one table per task, the paper's numbers beside, the learning
//! diagnostics at each milestone, and an int8 fidelity table), `learning_curves.png` (one
//! panel per task, one line per run, colour per algorithm, the paper's reference points
//! dashed) and `diagnostics.png` (per task: α, entropy, Q-weight ESS and flow loss over
//! env steps, where runs logged them).
//!
//! Reading the runs is `runs`, the markdown `markdown`, the PNG's panels `curves`,
//! and the numbers they are measured against `paper`.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};

use crate::plot::learning_curves;

mod curves;
mod markdown;
mod paper;
mod runs;
#[cfg(test)]
mod tests;

use markdown::render_markdown;
use runs::load_run;

/// Default return columns (env steps).
pub const DEFAULT_MILESTONES: &[u64] = &[25_000, 50_000, 100_000, 300_000, 1_000_000];

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

/// Reads the runs, writes `out/results.md`, `out/learning_curves.png` and (when runs
/// logged diagnostics) `out/diagnostics.png`, and returns the markdown.
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
    let mut loaded = expand_groups(runs)?
        .iter()
        .map(|d| load_run(d))
        .collect::<Result<Vec<_>>>()?;
    for (run, blob) in &opts.blobs {
        runs::attach_blob(&mut loaded, run, blob)?;
    }
    let mut milestones = opts.milestones.clone();
    milestones.sort_unstable();
    milestones.dedup();
    let md = render_markdown(&loaded, &milestones, opts.tolerance);
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let md_path = opts.out.join("results.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    learning_curves(
        &opts.out.join("learning_curves.png"),
        &curves::panels(&loaded),
    )?;
    let diagnostics = curves::diagnostic_panels(&loaded);
    if !diagnostics.is_empty() {
        learning_curves(&opts.out.join("diagnostics.png"), &diagnostics)?;
    }
    Ok(md)
}

/// The run directories: each seed group (`trainer train --seeds`) stands for its seed
/// runs, which are then averaged like any runs of one setup.
fn expand_groups(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut runs = Vec::new();
    for dir in dirs {
        let members = sim::run_dir::group_runs(dir)?;
        if dir.join("config.json").is_file() || members.is_empty() {
            runs.push(dir.clone());
        } else {
            runs.extend(members);
        }
    }
    Ok(runs)
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
