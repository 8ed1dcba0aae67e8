//! `learning_curves.png`: one panel per task, one line per run, the paper's points dashed.

use std::collections::BTreeMap;

use super::paper::{PaperRef, PAPER};
use super::runs::{env_order, runs_of, Run};
use crate::plot::{Panel, Series, SeriesStyle};

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
pub(super) fn panels(runs: &[Run]) -> Vec<Panel> {
    env_order(runs)
        .into_iter()
        .map(|env| {
            let rows = runs_of(runs, &env);
            let mut series: Vec<Series> = rows
                .iter()
                .filter(|r| !r.evals.is_empty())
                .map(|r| Series {
                    label: run_label(r, &rows),
                    color: run_color(r, &rows),
                    style: SeriesStyle::Measured,
                    points: r.evals.iter().map(|e| (e.step as f64, e.ret)).collect(),
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

/// A run's legend label: algorithm and seed, or its directory's name where another run
/// of the task has the same two (seeds of an ablation).
fn run_label(r: &Run, rows: &[&Run]) -> String {
    let same = rows
        .iter()
        .filter(|o| o.algo == r.algo && o.seed == r.seed && !o.evals.is_empty())
        .count();
    if same > 1 {
        return r.dir.file_name().map_or_else(
            || r.dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
    }
    let seed = r.seed.map_or(String::new(), |s| format!(" s{s}"));
    format!("{}{seed}", r.algo)
}

/// Colours for the second and further runs of an algorithm on a task, apart from each
/// other and from the algorithms' own.
const FURTHER_RUNS: [(u8, u8, u8); 8] = [
    (0, 160, 160),
    (200, 40, 150),
    (20, 40, 120),
    (150, 140, 0),
    (140, 80, 40),
    (210, 40, 40),
    (40, 40, 40),
    (110, 160, 240),
];

/// The algorithm's colour for its first run on the task, a distinct one for each further
/// run (seeds and ablations stay apart).
fn run_color(r: &Run, rows: &[&Run]) -> (u8, u8, u8) {
    let nth = rows
        .iter()
        .filter(|o| o.algo == r.algo)
        .position(|o| std::ptr::eq(*o, r))
        .unwrap_or(0);
    match nth {
        0 => algo_color(&r.algo),
        n => FURTHER_RUNS[(n - 1) % FURTHER_RUNS.len()],
    }
}

/// A plotted diagnostic: its name in the metrics, the panel title, the transform of
/// its values.
type Diagnostic = (&'static str, &'static str, fn(f64) -> f64);

/// The learning diagnostics `diagnostics.png` shows per task, in order: (name in the
/// metrics, panel title, transform). A collapse shows here before it shows in the return:
/// α falling by decades, entropy diving, the Q-weights' effective sample size dropping
/// to 1 (an argmax over the K candidates), the flow loss growing.
const DIAGNOSTICS: [Diagnostic; 4] = [
    ("alpha", "log10 alpha", f64::log10),
    ("entropy", "policy entropy estimate", identity),
    ("q_weight_ess", "Q-weight ESS 1/sum w^2 (of K)", identity),
    ("flow_loss", "flow loss |u - target|^2", identity),
];

fn identity(x: f64) -> f64 {
    x
}

/// One panel per (task, diagnostic) that some run logged: a line per run.
pub(super) fn diagnostic_panels(runs: &[Run]) -> Vec<Panel> {
    let mut panels = Vec::new();
    for env in env_order(runs) {
        let rows = runs_of(runs, &env);
        for (name, title, transform) in DIAGNOSTICS {
            let series: Vec<Series> = rows
                .iter()
                .map(|r| Series {
                    label: run_label(r, &rows),
                    color: run_color(r, &rows),
                    style: SeriesStyle::Measured,
                    points: r
                        .evals
                        .iter()
                        .filter_map(|e| Some((e.step as f64, transform(e.diagnostic(name)?))))
                        .filter(|p| p.1.is_finite())
                        .collect(),
                })
                .filter(|s| !s.points.is_empty())
                .collect();
            if !series.is_empty() {
                panels.push(Panel {
                    title: format!("{env}: {title}"),
                    series,
                });
            }
        }
    }
    panels
}
