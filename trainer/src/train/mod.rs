//! `trainer train`: the training loop shared by every agent, with evaluation, metrics,
//! checkpoints, resume and the NaN/Inf guard; and `trainer bench`'s agent numbers.
//!
//! One iteration steps the [`VecEnv`] once (every env, one action each), stores the
//! transitions, and — once `learning_starts` env steps are in the buffer — runs
//! `updates_per_step` agent updates on uniform minibatches. SAC (CleanRL) uses 1 env and
//! one update per env step; the FLAME paper 5 envs and one update per vector step.
//!
//! Randomness is counter-based, so a checkpoint needs no RNG state: warm-up actions,
//! minibatch indices and torch's generator (reseeded before each exploring action, each
//! update and each evaluation) all derive from (run seed, purpose, counter). Together with the
//! checkpointed weights, optimizer moments, α, replay buffer, counters and the envs'
//! [`VecEnvSnapshot`], a resumed run takes exactly the steps the uninterrupted one takes.
//!
//! Run directory (also what `trainer export` reads):
//! ```text
//! config.json          RunConfig, with the full TrainConfig under "train"
//! normalizer.json      the observation normalizer the policy consumes
//! policy.safetensors   policy weights (FLAME: FlowPolicyNet layout; SAC: its actor)
//! states.bin           observations from the replay buffer (export calibration)
//! metrics.jsonl/.csv   one row per evaluation
//! learning_curve.png   evaluation return vs env steps
//! summary.json         the final summary (also printed)
//! checkpoint/          agent.safetensors, replay.bin, state.json (replaced atomically)
//! ```
//!
//! This module is the loop itself; `config` holds [`TrainConfig`] and builds the agent,
//! `evaluate` the three evaluations and the metrics row, `checkpoint` the run directory,
//! checkpoints and resume, `seeds` several seeds in one process (`--seeds`), `bench`
//! `trainer bench`.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sim::env::{Env, EnvSpec, VecEnv, VecEnvSnapshot};
use sim::run_dir::{write_json, Algo, RunDir};
use tch::{Device, Kind, Tensor};

use crate::agents::Agent;
use crate::cuda_graph::CudaLane;
use crate::replay::ReplayBuffer;
use crate::threads::{ThreadTuner, Threads};
use graphs::{ActGraph, UpdateGraphs};

mod bench;
mod checkpoint;
mod config;
mod evaluate;
mod graphs;
mod seeds;

pub use bench::{bench_agent, matmul_peak_gflops, AgentBench};
pub use checkpoint::checkpoint_dir;
use config::make_agent;
pub use config::{parse_device, TrainConfig};
pub use evaluate::{Acting, EvalRow};
pub use graphs::StaticInputs;
pub use seeds::SeedGroup;

/// Counters and history: everything of the loop's state besides agent and replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoopState {
    pub env_steps: u64,
    pub vec_steps: u64,
    pub updates: u64,
    pub episodes: u64,
    pub wall_s: f64,
    pub next_eval: u64,
    pub next_checkpoint: u64,
    pub recent_returns: VecDeque<f64>,
    pub last_stats: BTreeMap<String, f64>,
    /// Per statistic, (sum, count) over the updates since the last evaluation row: the
    /// row's `stats_mean` (a single update's α, entropy or Q-weight ESS is noisy).
    #[serde(default)]
    pub window_stats: BTreeMap<String, (f64, u64)>,
    pub evals: Vec<EvalRow>,
    pub envs: VecEnvSnapshot,
}

/// The final summary (summary.json and the closing lines on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub algo: Algo,
    pub env_id: String,
    pub seed: u64,
    pub env_steps: u64,
    pub updates: u64,
    pub episodes: u64,
    pub wall_s: f64,
    pub final_eval_return: f64,
    pub final_eval_return_std: f64,
    pub best_eval_return: f64,
    pub best_eval_step: u64,
    pub updates_per_s: f64,
    pub env_steps_per_s: f64,
    pub run_dir: PathBuf,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} on {} (seed {}): {} env steps, {} updates, {} episodes in {}",
            self.algo.name(),
            self.env_id,
            self.seed,
            self.env_steps,
            self.updates,
            self.episodes,
            fmt_secs(self.wall_s)
        )?;
        writeln!(
            f,
            "final eval return {:.1} ± {:.1}; best {:.1} at step {}",
            self.final_eval_return,
            self.final_eval_return_std,
            self.best_eval_return,
            self.best_eval_step
        )?;
        write!(
            f,
            "{:.0} updates/s, {:.0} env steps/s; run directory {}",
            self.updates_per_s,
            self.env_steps_per_s,
            self.run_dir.display()
        )
    }
}

/// Sets libtorch's thread count for a run's start; returns the tuner that adjusts it,
/// if any (`--threads auto` on the CPU: on a GPU the host threads barely matter).
fn start_threads(threads: Threads, device: Device) -> Option<ThreadTuner> {
    let cores = crate::threads::cores();
    tch::set_num_threads(threads.initial(cores) as i32);
    threads.tuner(cores).filter(|_| device == Device::Cpu)
}

// Purposes of the counter-based seeds.
const SEED_WARMUP: u64 = 1;
const SEED_ACT: u64 = 2;
const SEED_SAMPLE: u64 = 3;
const SEED_UPDATE: u64 = 4;
const SEED_INIT: u64 = 5;
const SEED_EVAL: u64 = 6;
const SEED_EVAL_NOISE: u64 = 7;

/// A well-mixed seed for (run seed, purpose, counter).
pub fn derive_seed(seed: u64, purpose: u64, counter: u64) -> u64 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    mix(mix(mix(seed) ^ purpose) ^ counter)
}

fn torch_seed(seed: u64) {
    tch::manual_seed((seed >> 1) as i64);
}

/// The clocks of one stretch of training (a call of [`Trainer::run_until`], or a seed
/// group's run): when it started, the run's wall time before it, the last progress line
/// and the window the update and env-step rates are measured over.
struct Pace {
    start: Instant,
    wall0: f64,
    last_print: Instant,
    /// (env steps, updates, when) at the window's start.
    window: (u64, u64, Instant),
    /// (updates/s, env steps/s) over the last full window.
    rates: (f64, f64),
}

impl Pace {
    fn new(state: &LoopState) -> Self {
        Self {
            start: Instant::now(),
            wall0: state.wall_s,
            last_print: Instant::now(),
            window: (state.env_steps, state.updates, Instant::now()),
            rates: (0.0, 0.0),
        }
    }
}

/// Updates whose stats are read from the device together ([`Trainer::read_stats`]): one
/// synchronization per this many updates, not one per update, so that on a GPU the host
/// queues the next work while an update runs.
pub const STATS_EVERY: usize = 100;

/// An update's stats, still on the device.
struct PendingStats {
    update: u64,
    /// The env step the update ran at.
    env_step: u64,
    names: Vec<&'static str>,
    /// One f64 per name.
    values: Tensor,
}

/// The training loop's live state.
pub struct Trainer {
    pub config: TrainConfig,
    pub agent: Box<dyn Agent>,
    pub replay: ReplayBuffer,
    pub state: LoopState,
    venv: VecEnv,
    eval_envs: Vec<Box<dyn Env>>,
    spec: EnvSpec,
    device: Device,
    /// Where outputs go (None: benchmark, nothing written).
    run: Option<RunDir>,
    /// Chooses the intra-op thread count under `--threads auto` on the CPU.
    tuner: Option<ThreadTuner>,
    /// The recorded updates under `--cuda-graph` (made at the first update).
    graphs: Option<UpdateGraphs>,
    /// The recorded exploring action under `--cuda-graph` (made at the first action).
    act_graph: Option<ActGraph>,
    /// Updates whose stats are not read yet.
    pending_stats: Vec<PendingStats>,
    /// Its own CUDA stream and random-number state when it shares a GPU with other seeds'
    /// trainers ([`SeedGroup`]); entered before each of its steps.
    lane: Option<CudaLane>,
}

impl Trainer {
    /// A fresh run (creates `out`, refuses a directory that already holds a run).
    pub fn new(config: TrainConfig, out: Option<&Path>) -> Result<Self> {
        config.validate()?;
        let run = match out {
            Some(out) => {
                ensure!(
                    !out.join("config.json").exists(),
                    "{} already holds a run: resume it with `trainer train --resume {}` or choose another --out",
                    out.display(),
                    out.display()
                );
                std::fs::create_dir_all(out)
                    .with_context(|| format!("creating {}", out.display()))?;
                Some(RunDir::new(out))
            }
            None => None,
        };
        let device = parse_device(&config.device)?;
        let tuner = start_threads(config.threads, device);
        let venv = VecEnv::new(&config.env_id, config.num_envs, config.seed)?;
        let spec = venv.spec().clone();
        torch_seed(derive_seed(config.seed, SEED_INIT, 0));
        let agent = make_agent(&config, &spec, device)?;
        let replay = ReplayBuffer::new(spec.obs_dim, spec.act_dim, config.buffer_size);
        let state = LoopState {
            env_steps: 0,
            vec_steps: 0,
            updates: 0,
            episodes: 0,
            wall_s: 0.0,
            next_eval: config.eval_every,
            next_checkpoint: config.checkpoint_every,
            recent_returns: VecDeque::new(),
            last_stats: BTreeMap::new(),
            window_stats: BTreeMap::new(),
            evals: Vec::new(),
            envs: venv.snapshot(),
        };
        let trainer = Self {
            eval_envs: Vec::new(),
            tuner,
            graphs: None,
            act_graph: None,
            pending_stats: Vec::new(),
            lane: None,
            config,
            agent,
            replay,
            state,
            venv,
            spec,
            device,
            run,
        };
        if trainer.run.is_some() {
            trainer.write_config()?;
        }
        Ok(trainer)
    }

    /// Trains until `config.steps` env steps, evaluating and checkpointing on schedule,
    /// then writes the final outputs and returns the summary.
    pub fn run(&mut self) -> Result<Summary> {
        let total = self.config.steps;
        self.run_until(total, true)?;
        self.finish()
    }

    /// The end of a run: a last evaluation (unless one is at this step), a checkpoint and
    /// `summary.json`.
    fn finish(&mut self) -> Result<Summary> {
        self.enter_lane()?;
        if self.state.evals.last().map(|e| e.step) != Some(self.state.env_steps) {
            self.evaluate_now()?;
        }
        self.checkpoint()?;
        let summary = self.summary();
        if let Some(run) = &self.run {
            write_json(&run.root.join("summary.json"), &summary)?;
        }
        Ok(summary)
    }

    /// Runs vector steps until `env_steps ≥ until`; with `scheduled`, evaluates and
    /// checkpoints on schedule and prints progress.
    pub fn run_until(&mut self, until: u64, scheduled: bool) -> Result<()> {
        let mut pace = Pace::new(&self.state);
        while self.advance(&mut pace, until, scheduled)? {}
        self.read_stats()
    }

    /// One vector step of a loop towards `until` env steps, with its scheduled work
    /// (evaluation, checkpoint, progress line) when `scheduled`. Returns false, without
    /// stepping, once `until` is reached or, scheduled, the wall budget is spent.
    fn advance(&mut self, pace: &mut Pace, until: u64, scheduled: bool) -> Result<bool> {
        if self.state.env_steps >= until {
            return Ok(false);
        }
        self.enter_lane()?;
        if scheduled && self.wall_budget_spent() {
            eprintln!(
                "seed {}: wall-time budget of {} spent at env step {}: stopping",
                self.config.seed,
                fmt_secs(self.config.max_wall_s.unwrap_or(0.0)),
                self.state.env_steps
            );
            return Ok(false);
        }
        self.vec_step()?;
        self.state.wall_s = pace.wall0 + pace.start.elapsed().as_secs_f64();
        let (env_steps0, updates0, since) = pace.window;
        let dt = since.elapsed().as_secs_f64();
        if dt >= 1.0 {
            pace.rates = (
                (self.state.updates - updates0) as f64 / dt,
                (self.state.env_steps - env_steps0) as f64 / dt,
            );
            pace.window = (self.state.env_steps, self.state.updates, Instant::now());
        }
        if !scheduled {
            return Ok(true);
        }
        if self.state.env_steps >= self.state.next_eval {
            self.state.next_eval += self.config.eval_every;
            self.evaluate_with_rates(pace.rates)?;
        }
        if self.state.env_steps >= self.state.next_checkpoint {
            self.state.next_checkpoint += self.config.checkpoint_every;
            self.checkpoint()?;
        }
        let p = self.config.progress_secs;
        if p > 0.0 && pace.last_print.elapsed().as_secs_f64() >= p {
            pace.last_print = Instant::now();
            self.read_stats()?;
            eprintln!(
                "{}",
                self.progress_line(pace.rates, pace.start.elapsed().as_secs_f64())
            );
        }
        Ok(true)
    }

    /// Makes this trainer's lane current, if it has one (a no-op for a lone trainer).
    fn enter_lane(&self) -> Result<()> {
        self.lane.as_ref().map_or(Ok(()), CudaLane::enter)
    }

    /// Whether the run's `max_wall_s` (counted over all its sessions) is used up.
    fn wall_budget_spent(&self) -> bool {
        self.config
            .max_wall_s
            .is_some_and(|limit| self.state.wall_s >= limit)
    }

    /// One vector step: act, step the envs, store, update.
    fn vec_step(&mut self) -> Result<()> {
        let n = self.venv.len();
        let (obs_dim, act_dim) = (self.spec.obs_dim, self.spec.act_dim);
        let obs: Vec<f32> = self
            .venv
            .obs()
            .iter()
            .flatten()
            .map(|&v| v as f32)
            .collect();
        let actions: Vec<f32> = if self.state.env_steps < self.config.learning_starts {
            let mut rng = StdRng::seed_from_u64(derive_seed(
                self.config.seed,
                SEED_WARMUP,
                self.state.vec_steps,
            ));
            (0..n * act_dim)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect()
        } else {
            torch_seed(derive_seed(
                self.config.seed,
                SEED_ACT,
                self.state.vec_steps,
            ));
            let o = Tensor::from_slice(&obs)
                .view([n as i64, obs_dim as i64])
                .to_device(self.device);
            let a = if self.config.cuda_graph {
                let graph = match &mut self.act_graph {
                    Some(graph) => graph,
                    None => self
                        .act_graph
                        .insert(ActGraph::new(self.device, n, obs_dim)?),
                };
                graph.act(self.agent.as_ref(), &o)?
            } else {
                self.agent.act(&o, true)
            };
            let a = a.to_device(Device::Cpu).contiguous();
            Vec::<f32>::try_from(a.view([-1]))?
        };
        let env_actions = self.to_env_units(&actions);
        let out = self.venv.step(&env_actions)?;
        for i in 0..n {
            let step = &out.steps[i];
            let next: Vec<f32> = step.obs.iter().map(|&v| v as f32).collect();
            self.replay.push(
                &obs[i * obs_dim..(i + 1) * obs_dim],
                &actions[i * act_dim..(i + 1) * act_dim],
                step.reward as f32,
                &next,
                step.terminated,
            );
            if let Some(stats) = out.finished[i] {
                self.state.episodes += 1;
                self.state.recent_returns.push_back(stats.ret);
                if self.state.recent_returns.len() > 10 {
                    self.state.recent_returns.pop_front();
                }
            }
        }
        self.state.env_steps += n as u64;
        self.state.vec_steps += 1;
        if self.state.env_steps >= self.config.learning_starts {
            for _ in 0..self.config.updates_per_step {
                self.update()?;
            }
        }
        Ok(())
    }

    /// One agent update. Its stats stay on the device until [`Trainer::read_stats`]
    /// (at most [`STATS_EVERY`] updates later), which applies the NaN/Inf guard.
    fn update(&mut self) -> Result<()> {
        let u = self.state.updates;
        let mut rng = StdRng::seed_from_u64(derive_seed(self.config.seed, SEED_SAMPLE, u));
        let rows = self.config.batch_size;
        let start;
        let stats = if self.config.cuda_graph {
            let indices = self.replay.sample_indices(rows, &mut rng);
            self.prepare_update(u);
            start = Instant::now();
            let graphs = match &mut self.graphs {
                Some(graphs) => graphs,
                None => self
                    .graphs
                    .insert(UpdateGraphs::new(self.device, &self.replay, rows)),
            };
            graphs.update(self.agent.as_mut(), &self.replay, &indices, u)?
        } else {
            let batch = self.replay.sample(rows, &mut rng, self.device);
            self.prepare_update(u);
            start = Instant::now();
            self.agent.update(&batch, u)
        };
        // One tensor of the update's stats: a copy (a replayed graph overwrites its
        // outputs), read with the others in one synchronization.
        let (names, values): (Vec<&'static str>, Vec<Tensor>) = stats.into_iter().unzip();
        let values: Vec<Tensor> = values
            .iter()
            .map(|v| v.to_kind(Kind::Double).reshape([1]))
            .collect();
        self.pending_stats.push(PendingStats {
            update: u,
            env_step: self.state.env_steps,
            names,
            values: Tensor::cat(&values, 0),
        });
        if let Some(threads) = self.tuner.as_mut().and_then(|t| t.record(start.elapsed())) {
            tch::set_num_threads(threads as i32);
        }
        self.state.updates += 1;
        if self.pending_stats.len() >= STATS_EVERY {
            self.read_stats()?;
        }
        Ok(())
    }

    /// Reads the pending updates' stats from the device in one copy, and in update order
    /// applies the NaN/Inf guard (a non-finite stat stops the run, naming the update and
    /// its env step) and records them (`last_stats`, `window_stats`). Runs before every
    /// evaluation, checkpoint and progress line, so none of them sees an unread update.
    fn read_stats(&mut self) -> Result<()> {
        if self.pending_stats.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending_stats);
        let all: Vec<&Tensor> = pending.iter().map(|p| &p.values).collect();
        let all = Vec::<f64>::try_from(Tensor::cat(&all, 0).to_device(Device::Cpu))?;
        let mut values = all.into_iter();
        for p in pending {
            let mut stats: Vec<(&str, f64)> = p.names.iter().copied().zip(&mut values).collect();
            if self.config.inject_nan_at_update == Some(p.update) {
                if let Some(s) = stats.first_mut() {
                    s.1 = f64::NAN;
                }
            }
            if let Some((name, value)) = stats.iter().find(|(_, v)| !v.is_finite()) {
                let kept = match &self.run {
                    Some(run) if checkpoint_dir(&run.root).is_some() => format!(
                        "the last good checkpoint is kept in {}",
                        run.root.join("checkpoint").display()
                    ),
                    _ => "no checkpoint had been written yet".to_string(),
                };
                bail!(
                    "{name} became {value} at env step {} (update {}); training stopped, {kept}",
                    p.env_step,
                    p.update
                );
            }
            for (k, v) in stats {
                self.state.last_stats.insert(k.to_string(), v);
                let (sum, count) = self.state.window_stats.entry(k.to_string()).or_default();
                *sum += v;
                *count += 1;
            }
        }
        Ok(())
    }

    /// Before update `u`: torch's generator reseeded for it, and the run's progress set.
    fn prepare_update(&mut self, u: u64) {
        torch_seed(derive_seed(self.config.seed, SEED_UPDATE, u));
        self.agent
            .set_progress(self.state.env_steps as f64 / self.config.steps as f64);
    }

    fn to_env_units(&self, actions: &[f32]) -> Vec<f64> {
        let d = self.spec.act_dim;
        actions
            .iter()
            .enumerate()
            .map(|(k, &a)| {
                let (lo, hi) = (self.spec.action_low[k % d], self.spec.action_high[k % d]);
                let a = (a as f64).clamp(-1.0, 1.0);
                lo + (a + 1.0) * 0.5 * (hi - lo)
            })
            .collect()
    }

    fn progress_line(&self, rates: (f64, f64), elapsed: f64) -> String {
        let s = &self.state;
        let total = self.config.steps;
        let eval = s.evals.last().map_or("-".to_string(), |e| {
            format!("{:.1}@{}", e.eval_return, e.step)
        });
        let train = if s.recent_returns.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{:.1}",
                s.recent_returns.iter().sum::<f64>() / s.recent_returns.len() as f64
            )
        };
        let losses: Vec<String> = s
            .last_stats
            .iter()
            .filter(|(k, _)| k.as_str() != "alpha")
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect();
        let left = total.saturating_sub(s.env_steps) as f64;
        // Whichever budget ends first: the steps at the current rate, or the wall time.
        let by_steps = (rates.1 > 0.0).then(|| left / rates.1);
        let by_wall = self.config.max_wall_s.map(|w| (w - s.wall_s).max(0.0));
        let eta = match (by_steps, by_wall) {
            (Some(a), Some(b)) => fmt_secs(a.min(b)),
            (Some(a), None) | (None, Some(a)) => fmt_secs(a),
            (None, None) => "-".into(),
        };
        format!(
            "{} {} seed {} | {}/{} steps {:.1}% | {:.0} upd/s {:.0} env/s on {} | eval {} | train {} | α {:.4} | {} | {} elapsed, ETA {}",
            self.config.algo.name(),
            self.config.env_id,
            self.config.seed,
            s.env_steps,
            total,
            100.0 * s.env_steps as f64 / total as f64,
            rates.0,
            rates.1,
            self.threads_label(),
            eval,
            train,
            self.agent.alpha(),
            losses.join(" "),
            fmt_secs(elapsed),
            eta
        )
    }

    /// The intra-op thread count now, e.g. `2 threads (auto)`.
    pub fn threads_label(&self) -> String {
        let n = tch::get_num_threads();
        let unit = if n == 1 { "thread" } else { "threads" };
        match self.tuner {
            Some(_) => format!("{n} {unit} (auto)"),
            None => format!("{n} {unit}"),
        }
    }

    pub fn summary(&self) -> Summary {
        let s = &self.state;
        let last = s.evals.last();
        let best = s
            .evals
            .iter()
            .max_by(|a, b| a.eval_return.total_cmp(&b.eval_return));
        let dt = s.wall_s.max(1e-9);
        Summary {
            algo: self.config.algo,
            env_id: self.config.env_id.clone(),
            seed: self.config.seed,
            env_steps: s.env_steps,
            updates: s.updates,
            episodes: s.episodes,
            wall_s: s.wall_s,
            final_eval_return: last.map_or(f64::NAN, |e| e.eval_return),
            final_eval_return_std: last.map_or(f64::NAN, |e| e.eval_return_std),
            best_eval_return: best.map_or(f64::NAN, |e| e.eval_return),
            best_eval_step: best.map_or(0, |e| e.step),
            updates_per_s: s.updates as f64 / dt,
            env_steps_per_s: s.env_steps as f64 / dt,
            run_dir: self
                .run
                .as_ref()
                .map_or_else(PathBuf::new, |r| r.root.clone()),
        }
    }
}

pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
