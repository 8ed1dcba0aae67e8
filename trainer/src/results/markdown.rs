//! `results.md`: one table per task with the paper's numbers beside, the int8 fidelity
//! table and the deployment (MCU) table.

use std::fmt::Write as _;

use super::paper::{PaperRef, GOAL, GOAL_INT8_PCT, PAPER};
use serde_json::Value;

use super::runs::{env_order, get_f64, get_u64, run_eval_at, runs_of, Eval, Run};
use crate::plot::fmt_steps;
use crate::train::fmt_secs;

pub(super) const DASH: &str = "–";

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
        render_diagnostics(&mut md, runs, &env, milestones, tolerance);
    }
    render_fidelity(&mut md, runs);
    render_deployment(&mut md, runs);
    md
}

/// Per run and milestone: the return beside α, the entropy estimate, the Q-weights'
/// effective sample size and the flow loss (their means over the updates before the
/// evaluation), for runs that logged any of them.
fn render_diagnostics(
    md: &mut String,
    runs: &[Run],
    env: &str,
    milestones: &[u64],
    tolerance: f64,
) {
    let rows: Vec<&Run> = runs_of(runs, env)
        .into_iter()
        .filter(|r| r.evals.iter().any(|e| !e.diagnostics.is_empty()))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### {env}: learning diagnostics
"
    );
    let _ = writeln!(
        md,
        "α at the evaluation; entropy, ESS (1/Σw² of the K Q-weights: K uniform, 1 an \
         argmax) and flow loss (‖u − target‖² per state) averaged over the updates since \
         the previous evaluation. ![diagnostics](diagnostics.png)\n"
    );
    let header = [
        "run",
        "step",
        "return",
        "single (z=0)",
        "α",
        "entropy",
        "ESS",
        "flow loss",
    ];
    md.push_str(&table_row(&header.map(String::from)));
    md.push_str(&table_row(&header.map(|_| "---".to_string())));
    let num = |v: Option<f64>, digits: usize| v.map_or(DASH.into(), |x| format!("{x:.digits$}"));
    for r in rows {
        let name = r.dir.file_name().map_or_else(
            || r.dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        for &m in milestones {
            let Some(e) = run_eval_at(r, m, tolerance) else {
                continue;
            };
            md.push_str(&table_row(&[
                cell(&name),
                fmt_steps(e.step as f64),
                fmt_ret(e.ret, e.std),
                num(e.single, 1),
                e.alpha.map_or(DASH.into(), |a| format!("{a:.3e}")),
                num(e.diagnostic("entropy"), 2),
                num(e.diagnostic("q_weight_ess"), 1),
                num(e.diagnostic("flow_loss"), 3),
            ]));
        }
    }
    md.push('\n');
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
