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
