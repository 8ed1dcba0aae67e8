//! `trainer train`: the training loop shared by every agent, with evaluation, metrics,
//! checkpoints, resume and the NaN/Inf guard; and `trainer bench`'s agent numbers.
//!
//! One iteration steps the [`VecEnv`] once (every env, one action each), stores the
//! transitions, and — once `learning_starts` env steps are in the buffer — runs
//! `updates_per_step` agent updates on uniform minibatches. SAC (CleanRL) uses 1 env and
//! one update per env step; the FLAME paper 5 envs and one update per vector step.
//!
//! Randomness is counter-based, so a checkpoint needs no RNG state: warm-up actions,
//! minibatch indices and torch's generator (reseeded before each exploring action and
//! each update) all derive from (run seed, purpose, counter). Together with the
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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime::{NoiseMode, Policy, Scratch};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::agents::flame::{Flame, FlameConfig};
use crate::agents::sac::{Sac, SacConfig};
use crate::agents::Agent;
use crate::export;
use crate::plot::{learning_curve, CurvePoint};
use crate::quantize::quantize;
use crate::replay::ReplayBuffer;
use crate::threads::{ThreadTuner, Threads};
use sim::env::{self, Env, EnvSpec, VecEnv, VecEnvSnapshot};
use sim::float_policy::PolicyShape;
use sim::run_dir::{git_revision, read_json, write_json, Algo, RunConfig, RunDir};

/// Loop-level settings plus the agent's own hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub algo: Algo,
    pub env_id: String,
    /// Total env steps (summed over envs).
    pub steps: u64,
    pub seed: u64,
    /// Envs stepped together (SAC/CleanRL 1; FLAME paper 5).
    pub num_envs: usize,
    /// Agent updates per vector step (SAC 1 with 1 env: UTD 1; FLAME 1 with 5 envs).
    pub updates_per_step: usize,
    /// Uniform random actions for this many env steps before learning (SAC 5k; FLAME 30k).
    pub learning_starts: u64,
    /// Minibatch size (256).
    pub batch_size: usize,
    /// Replay capacity in transitions (1e6).
    pub buffer_size: usize,
    /// Evaluate every this many env steps (25k) ...
    pub eval_every: u64,
    /// ... over this many episodes without exploration noise (20).
    pub eval_episodes: usize,
    /// Checkpoint every this many env steps.
    pub checkpoint_every: u64,
    /// "cpu", "cuda" or "cuda:N".
    pub device: String,
    /// libtorch intra-op threads: `auto` (measured while training, see
    /// [`crate::threads`]) or a fixed count.
    pub threads: Threads,
    /// Seconds between progress lines on stderr (0: none).
    pub progress_secs: f64,
    /// SAC's hyperparameters (for `--algo sac`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sac: Option<SacConfig>,
    /// FLAME-M's or FLAME-R's hyperparameters (for `--algo flame-m | flame-r`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flame: Option<FlameConfig>,
    /// Stop after this much wall time (seconds) as if `steps` were reached: final
    /// evaluation, checkpoint and summary (None: no limit). For fixed time budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wall_s: Option<f64>,
    /// Testing aid: poison the loss of this update (0-based) to exercise the NaN guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject_nan_at_update: Option<u64>,
}

impl TrainConfig {
    /// The paper's / CleanRL's defaults for `algo` on `env_id`.
    pub fn defaults(algo: Algo, env_id: &str) -> Self {
        let (num_envs, learning_starts) = match algo {
            Algo::Sac => (1, 5_000),
            Algo::FlameM | Algo::FlameR => (5, 30_000),
        };
        let steps = if env_id == "Humanoid-v5" {
            2_000_000
        } else {
            1_000_000
        };
        Self {
            algo,
            env_id: env_id.to_string(),
            steps,
            seed: 0,
            num_envs,
            updates_per_step: 1,
            learning_starts,
            batch_size: 256,
            buffer_size: 1_000_000,
            eval_every: 25_000,
            eval_episodes: 20,
            checkpoint_every: 100_000,
            device: "cpu".into(),
            threads: Threads::Auto,
            progress_secs: 10.0,
            sac: (algo == Algo::Sac).then(SacConfig::default),
            flame: algo.blob_algorithm().ok().map(FlameConfig::for_algorithm),
            max_wall_s: None,
            inject_nan_at_update: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        env::spec(&self.env_id)?;
        ensure!(self.steps > 0, "--steps must be positive");
        ensure!(self.num_envs >= 1, "--num-envs must be at least 1");
        ensure!(
            self.updates_per_step >= 1,
            "--updates-per-step must be at least 1"
        );
        ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        ensure!(self.buffer_size >= 1, "--buffer-size must be at least 1");
        ensure!(self.eval_every >= 1, "--eval-every must be at least 1");
        ensure!(
            self.checkpoint_every >= 1,
            "--checkpoint-every must be at least 1"
        );
        self.threads.validate()?;
        ensure!(
            self.progress_secs.is_finite() && self.progress_secs >= 0.0,
            "--progress-every must be a non-negative number of seconds"
        );
        if let Some(limit) = self.max_wall_s {
            ensure!(
                limit.is_finite() && limit > 0.0,
                "--max-wall must be a positive number of seconds, got {limit}"
            );
        }
        parse_device(&self.device)?;
        if let Some(f) = &self.flame {
            f.validate()?;
            ensure!(
                self.algo != Algo::FlameM || f.nfe == 1,
                "--nfe {}: FLAME-M acts in one network evaluation; N-step acting is --algo flame-r",
                f.nfe
            );
        }
        if let Some(s) = &self.sac {
            s.validate()?;
        }
        Ok(())
    }
}

pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::cuda_if_available()).and_then(|d| {
            ensure!(
                d != Device::Cpu,
                "--device cuda: libtorch sees no CUDA device"
            );
            Ok(d)
        }),
        _ => {
            let n = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .with_context(|| format!("--device {s}: expected cpu, cuda or cuda:N"))?;
            ensure!(
                tch::Cuda::is_available() && n < tch::Cuda::device_count() as usize,
                "--device {s}: libtorch sees {} CUDA devices",
                if tch::Cuda::is_available() {
                    tch::Cuda::device_count()
                } else {
                    0
                }
            );
            Ok(Device::Cuda(n))
        }
    }
}

/// Builds the agent for `config.algo`.
pub fn make_agent(config: &TrainConfig, spec: &EnvSpec, device: Device) -> Result<Box<dyn Agent>> {
    let scale: Vec<f64> = (spec.action_low.iter().zip(&spec.action_high))
        .map(|(l, h)| (h - l) / 2.0)
        .collect();
    match config.algo {
        Algo::Sac => {
            let sac = config.sac.clone().context("SAC config missing")?;
            Ok(Box::new(Sac::new(
                sac,
                spec.obs_dim,
                spec.act_dim,
                &scale,
                device,
            )))
        }
        Algo::FlameM | Algo::FlameR => {
            let flame = config.flame.clone().context("FLAME config missing")?;
            Ok(Box::new(Flame::new(
                flame,
                config.algo.blob_algorithm()?,
                spec.obs_dim,
                spec.act_dim,
                device,
            )))
        }
    }
}

/// One evaluation: the metrics row written to metrics.jsonl / metrics.csv.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    pub step: u64,
    pub updates: u64,
    pub wall_s: f64,
    pub eval_return: f64,
    pub eval_return_std: f64,
    pub eval_length: f64,
    /// Mean return of the deployed policy (FLAME: one flow sample from z = 0, no critic,
    /// as on the MCU; SAC: its mean action) over the same episodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_return_single: Option<f64>,
    /// Mean return of the int8 runtime over the same episodes, deterministic (z = 0): the
    /// acting policy quantized as `trainer export` does, with calibration states from
    /// the replay buffer (FLAME only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_return_int8: Option<f64>,
    /// Mean return of the last 10 finished training episodes (NaN → null if none).
    pub train_return: Option<f64>,
    pub alpha: f64,
    pub updates_per_s: f64,
    pub env_steps_per_s: f64,
    /// The last value of each of the agent's update statistics.
    pub stats: BTreeMap<String, f64>,
}

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
            evals: Vec::new(),
            envs: venv.snapshot(),
        };
        let trainer = Self {
            eval_envs: Vec::new(),
            tuner,
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

    /// Reopens a run from its last checkpoint; `steps` and `max_wall_s` optionally
    /// replace the budgets.
    pub fn resume(dir: &Path, steps: Option<u64>, max_wall_s: Option<f64>) -> Result<Self> {
        ensure!(
            dir.is_dir(),
            "--resume {}: no such directory",
            dir.display()
        );
        let run = RunDir::new(dir);
        ensure!(
            run.config().is_file(),
            "--resume {}: not a training run (config.json is missing)",
            dir.display()
        );
        let run_config = run.read_config()?;
        let train = run_config.train.with_context(|| {
            format!(
                "--resume {}: not a `trainer train` run (its config.json has no training configuration)",
                dir.display()
            )
        })?;
        let mut config: TrainConfig = serde_json::from_value(train).with_context(|| {
            format!(
                "parsing the training configuration in {}",
                run.config().display()
            )
        })?;
        let ckpt = checkpoint_dir(dir).with_context(|| {
            format!(
                "--resume {}: the run has no checkpoint yet (checkpoint/ is missing)",
                dir.display()
            )
        })?;
        if let Some(steps) = steps {
            ensure!(steps > 0, "--steps must be positive");
            config.steps = steps;
        }
        if max_wall_s.is_some() {
            config.max_wall_s = max_wall_s;
        }
        config.validate()?;
        let device = parse_device(&config.device)?;
        let tuner = start_threads(config.threads, device);
        let state: LoopState = read_json(&ckpt.join("state.json"))?;
        let venv = VecEnv::restore(&state.envs)?;
        let spec = venv.spec().clone();
        let mut agent = make_agent(&config, &spec, device)?;
        let tensors = Tensor::read_safetensors(ckpt.join("agent.safetensors"))
            .with_context(|| format!("reading {}", ckpt.join("agent.safetensors").display()))?;
        let tensors: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, v)| (k, v.to_device(device)))
            .collect();
        agent.load_state(&tensors)?;
        let replay = ReplayBuffer::load(&ckpt.join("replay.bin"))?;
        ensure!(
            replay.obs_dim == spec.obs_dim && replay.act_dim == spec.act_dim,
            "checkpoint replay buffer does not match {}",
            spec.id
        );
        let trainer = Self {
            eval_envs: Vec::new(),
            tuner,
            config,
            agent,
            replay,
            state,
            venv,
            spec,
            device,
            run: Some(run),
        };
        trainer.write_config()?;
        trainer.write_metrics()?;
        Ok(trainer)
    }

    /// Trains until `config.steps` env steps, evaluating and checkpointing on schedule,
    /// then writes the final outputs and returns the summary.
    pub fn run(&mut self) -> Result<Summary> {
        let total = self.config.steps;
        self.run_until(total, true)?;
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
        let start = Instant::now();
        let wall0 = self.state.wall_s;
        let mut last_print = Instant::now();
        let mut window = (self.state.env_steps, self.state.updates, Instant::now());
        let mut rates = (0.0, 0.0);
        while self.state.env_steps < until {
            if scheduled && self.wall_budget_spent() {
                eprintln!(
                    "wall-time budget of {} spent at env step {}: stopping",
                    fmt_secs(self.config.max_wall_s.unwrap_or(0.0)),
                    self.state.env_steps
                );
                break;
            }
            self.vec_step()?;
            self.state.wall_s = wall0 + start.elapsed().as_secs_f64();
            let dt = window.2.elapsed().as_secs_f64();
            if dt >= 1.0 {
                rates = (
                    (self.state.updates - window.1) as f64 / dt,
                    (self.state.env_steps - window.0) as f64 / dt,
                );
                window = (self.state.env_steps, self.state.updates, Instant::now());
            }
            if !scheduled {
                continue;
            }
            if self.state.env_steps >= self.state.next_eval {
                self.state.next_eval += self.config.eval_every;
                self.evaluate_with_rates(rates)?;
            }
            if self.state.env_steps >= self.state.next_checkpoint {
                self.state.next_checkpoint += self.config.checkpoint_every;
                self.checkpoint()?;
            }
            let p = self.config.progress_secs;
            if p > 0.0 && last_print.elapsed().as_secs_f64() >= p {
                last_print = Instant::now();
                eprintln!(
                    "{}",
                    self.progress_line(rates, start.elapsed().as_secs_f64())
                );
            }
        }
        Ok(())
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
            let a = self.agent.act(&o, true).to_device(Device::Cpu).contiguous();
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

    /// One agent update with the NaN/Inf guard.
    fn update(&mut self) -> Result<()> {
        let u = self.state.updates;
        let mut rng = StdRng::seed_from_u64(derive_seed(self.config.seed, SEED_SAMPLE, u));
        let batch = self
            .replay
            .sample(self.config.batch_size, &mut rng, self.device);
        torch_seed(derive_seed(self.config.seed, SEED_UPDATE, u));
        self.agent
            .set_progress(self.state.env_steps as f64 / self.config.steps as f64);
        let start = Instant::now();
        let mut stats = self.agent.update(&batch, u);
        if let Some(threads) = self.tuner.as_mut().and_then(|t| t.record(start.elapsed())) {
            tch::set_num_threads(threads as i32);
        }
        if self.config.inject_nan_at_update == Some(u) {
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
                "{name} became {value} at env step {} (update {u}); training stopped, {kept}",
                self.state.env_steps
            );
        }
        for (k, v) in stats {
            self.state.last_stats.insert(k.to_string(), v);
        }
        self.state.updates += 1;
        Ok(())
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

    /// Mean, std and mean length of `eval_episodes` deterministic episodes (fixed seeds,
    /// the same at every evaluation), stepped as one batch, acting as `acting` says.
    pub fn evaluate(&mut self, acting: Acting<'_>) -> Result<(f64, f64, f64)> {
        let k = self.config.eval_episodes;
        while self.eval_envs.len() < k {
            self.eval_envs.push(env::make(&self.config.env_id)?);
        }
        let (obs_dim, act_dim) = (self.spec.obs_dim, self.spec.act_dim);
        let mut obs: Vec<Vec<f64>> = (0..k)
            .map(|j| self.eval_envs[j].reset(derive_seed(self.config.seed, SEED_EVAL, j as u64)))
            .collect();
        let mut returns = vec![0.0f64; k];
        let mut lengths = vec![0usize; k];
        let mut active: Vec<usize> = (0..k).collect();
        while !active.is_empty() {
            let flat: Vec<f32> = active
                .iter()
                .flat_map(|&j| obs[j].iter().map(|&v| v as f32))
                .collect();
            let env_a = match acting {
                Acting::Agent => self.agent_actions(&flat, false)?,
                Acting::Deployed => self.agent_actions(&flat, true)?,
                Acting::Int8(policy) => int8_actions(policy, &flat, obs_dim)?,
            };
            let mut still = Vec::with_capacity(active.len());
            for (r, &j) in active.iter().enumerate() {
                let step = self.eval_envs[j].step(&env_a[r * act_dim..(r + 1) * act_dim])?;
                returns[j] += step.reward;
                lengths[j] += 1;
                if !step.done() {
                    obs[j] = step.obs;
                    still.push(j);
                }
            }
            active = still;
        }
        let mean = returns.iter().sum::<f64>() / k as f64;
        let std = (returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / k as f64).sqrt();
        let len = lengths.iter().sum::<usize>() as f64 / k as f64;
        Ok((mean, std, len))
    }

    /// The agent's evaluation actions (env units) for rows of observations `obs`:
    /// [`Agent::act`] without exploration, or with `deployed` [`Agent::act_deployed`].
    fn agent_actions(&self, obs: &[f32], deployed: bool) -> Result<Vec<f64>> {
        let obs_dim = self.spec.obs_dim as i64;
        let o = Tensor::from_slice(obs)
            .view([-1, obs_dim])
            .to_device(self.device);
        let a = if deployed {
            self.agent.act_deployed(&o)
        } else {
            self.agent.act(&o, false)
        };
        let a = a.to_device(Device::Cpu).contiguous();
        Ok(self.to_env_units(&Vec::<f32>::try_from(a.view([-1]))?))
    }

    fn evaluate_now(&mut self) -> Result<()> {
        let dt = self.state.wall_s.max(1e-9);
        let rates = (
            self.state.updates as f64 / dt,
            self.state.env_steps as f64 / dt,
        );
        self.evaluate_with_rates(rates)
    }

    fn evaluate_with_rates(&mut self, rates: (f64, f64)) -> Result<()> {
        let (mean, std, len) = self.evaluate(Acting::Agent)?;
        // SAC's deployed action is its evaluation action, and the runtime cannot run it.
        let (single, int8) = match self.config.algo {
            Algo::Sac => (None, None),
            Algo::FlameM | Algo::FlameR => (
                Some(self.evaluate(Acting::Deployed)?.0),
                self.evaluate_int8()?,
            ),
        };
        let train_return = (!self.state.recent_returns.is_empty()).then(|| {
            self.state.recent_returns.iter().sum::<f64>() / self.state.recent_returns.len() as f64
        });
        self.state.evals.push(EvalRow {
            step: self.state.env_steps,
            updates: self.state.updates,
            wall_s: self.state.wall_s,
            eval_return: mean,
            eval_return_std: std,
            eval_length: len,
            eval_return_single: single,
            eval_return_int8: int8,
            train_return,
            alpha: self.agent.alpha(),
            updates_per_s: rates.0,
            env_steps_per_s: rates.1,
            stats: self.state.last_stats.clone(),
        });
        if self.config.progress_secs > 0.0 {
            let single = single.map_or(String::new(), |r| format!("; deployed (z = 0) {r:.1}"));
            let single = single + &int8.map_or(String::new(), |r| format!(", int8 {r:.1}"));
            eprintln!(
                "eval @ {} steps: return {mean:.1} ± {std:.1} (length {len:.0}, {} episodes){single}",
                self.state.env_steps, self.config.eval_episodes
            );
        }
        self.write_metrics()
    }

    /// The int8 runtime's return on the evaluation episodes: the acting policy quantized
    /// as `trainer export` quantizes it (min/max ranges from replay observations), acting
    /// deterministically from z = 0 as the MCU does. `None`, with a warning, where the
    /// policy does not quantize (the run goes on).
    fn evaluate_int8(&mut self) -> Result<Option<f64>> {
        let weights = on_cpu(self.agent.policy_tensors());
        let calibration = self.replay.observations(INT8_CALIBRATION_STATES);
        let config = self.run_config()?;
        let blob = export::float_policy(&config, &self.spec, self.agent.normalizer(), &weights)
            .and_then(|float| quantize(&float, &calibration, 0));
        let blob = match blob {
            Ok(blob) => blob,
            Err(e) => {
                eprintln!("int8 evaluation skipped: {e:#}");
                return Ok(None);
            }
        };
        let policy = Policy::from_bytes(&blob)
            .map_err(|e| anyhow::anyhow!("the quantized policy does not parse: {e}"))?;
        Ok(Some(self.evaluate(Acting::Int8(&policy))?.0))
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
            "{} {} | {}/{} steps {:.1}% | {:.0} upd/s {:.0} env/s on {} | eval {} | train {} | α {:.4} | {} | {} elapsed, ETA {}",
            self.config.algo.name(),
            self.config.env_id,
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

    fn run_config(&self) -> Result<RunConfig> {
        let (hidden, time_dim, noise_std, nfe) = match (&self.config.sac, &self.config.flame) {
            (_, Some(f)) => (
                f.policy_hidden.clone(),
                f.time_dim,
                f.noise_std as f32,
                f.nfe,
            ),
            (Some(s), None) => (s.policy_hidden.clone(), 0, 0.5, 1),
            (None, None) => (Vec::new(), 0, 0.5, 1),
        };
        Ok(RunConfig {
            algo: self.config.algo,
            env_id: self.config.env_id.clone(),
            seed: self.config.seed,
            shape: PolicyShape {
                obs_dim: self.spec.obs_dim,
                act_dim: self.spec.act_dim,
                hidden,
                time_dim,
            },
            nfe,
            noise_std,
            // The agents consume raw observations (identity normalizer): no clipping.
            obs_clip: 1e6,
            env_steps: self.state.env_steps,
            git_revision: git_revision(),
            train: Some(serde_json::to_value(&self.config)?),
        })
    }

    fn write_config(&self) -> Result<()> {
        let Some(run) = &self.run else { return Ok(()) };
        write_atomic(&run.config(), |p| write_json(p, &self.run_config()?))
    }

    /// metrics.jsonl, metrics.csv and learning_curve.png from the evaluation history.
    fn write_metrics(&self) -> Result<()> {
        let Some(run) = &self.run else { return Ok(()) };
        let rows = &self.state.evals;
        write_atomic(&run.root.join("metrics.jsonl"), |p| {
            let mut text = String::new();
            for r in rows {
                text += &serde_json::to_string(r)?;
                text.push('\n');
            }
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
        })?;
        let keys: std::collections::BTreeSet<&String> = rows
            .iter()
            .flat_map(|r| r.stats.keys())
            .filter(|k| k.as_str() != "alpha") // a fixed column already
            .collect();
        write_atomic(&run.root.join("metrics.csv"), |p| {
            let mut text = String::from(
                "step,updates,wall_s,eval_return,eval_return_std,eval_length,eval_return_single,eval_return_int8,train_return,alpha,updates_per_s,env_steps_per_s",
            );
            for k in &keys {
                text += &format!(",{k}");
            }
            text.push('\n');
            for r in rows {
                text += &format!(
                    "{},{},{:.3},{},{},{},{},{},{},{},{:.2},{:.2}",
                    r.step,
                    r.updates,
                    r.wall_s,
                    r.eval_return,
                    r.eval_return_std,
                    r.eval_length,
                    r.eval_return_single
                        .map_or(String::new(), |v| v.to_string()),
                    r.eval_return_int8.map_or(String::new(), |v| v.to_string()),
                    r.train_return.map_or(String::new(), |v| v.to_string()),
                    r.alpha,
                    r.updates_per_s,
                    r.env_steps_per_s
                );
                for k in &keys {
                    text += &format!(
                        ",{}",
                        r.stats.get(*k).map_or(String::new(), |v| v.to_string())
                    );
                }
                text.push('\n');
            }
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
        })?;
        let points: Vec<CurvePoint> = rows
            .iter()
            .map(|r| CurvePoint {
                step: r.step as f64,
                eval_mean: r.eval_return,
                eval_std: r.eval_return_std,
                train_mean: r.train_return.unwrap_or(f64::NAN),
            })
            .collect();
        write_atomic(&run.root.join("learning_curve.png"), |p| {
            learning_curve(p, &points, self.config.steps as f64)
        })
    }

    /// Writes the checkpoint (agent, replay, loop state) to `checkpoint.tmp/` and swaps
    /// it in for `checkpoint/`; also refreshes the run directory's policy files.
    pub fn checkpoint(&mut self) -> Result<()> {
        let Some(run) = &self.run else { return Ok(()) };
        let root = run.root.clone();
        self.state.envs = self.venv.snapshot();
        let tmp = root.join("checkpoint.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Tensor::write_safetensors(&on_cpu(self.agent.state()), tmp.join("agent.safetensors"))?;
        self.replay.save(&tmp.join("replay.bin"))?;
        write_json(&tmp.join("state.json"), &self.state)?;
        // Swap: checkpoint/ → checkpoint.old/, checkpoint.tmp/ → checkpoint/. Whenever the
        // process dies, one complete checkpoint is under one of the two names
        // ([`checkpoint_dir`]); a leftover checkpoint.old/ is only dropped once a newer
        // checkpoint/ exists.
        let ckpt = root.join("checkpoint");
        let old = root.join("checkpoint.old");
        if ckpt.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old)?;
            }
            std::fs::rename(&ckpt, &old)?;
        }
        std::fs::rename(&tmp, &ckpt)?;
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        // The run directory's policy files, as `trainer export` reads them.
        let run = RunDir::new(&root);
        let policy = on_cpu(self.agent.policy_tensors());
        write_atomic(&run.weights(), |p| {
            Tensor::write_safetensors(&policy, p).map_err(Into::into)
        })?;
        write_atomic(&run.normalizer(), |p| {
            write_json(p, &self.agent.normalizer())
        })?;
        let states = self.replay.observations(RUN_DIR_STATES);
        write_atomic(&run.states(), |p| {
            let bytes: Vec<u8> = states
                .iter()
                .flatten()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))
        })?;
        self.write_config()
    }
}

/// How an evaluation acts.
#[derive(Clone, Copy)]
pub enum Acting<'a> {
    /// The agent's evaluation action (FLAME: best of N_p samples by min Q; SAC: its mean).
    Agent,
    /// The deployed float policy (FLAME: one flow sample from z = 0, no critic).
    Deployed,
    /// The int8 runtime on a quantized policy, deterministic (z = 0).
    Int8(&'a Policy<'a>),
}

/// Observations from the replay buffer a run directory keeps (`states.bin`).
const RUN_DIR_STATES: usize = 5000;

/// Calibration states for the training-time int8 evaluation: as many as `trainer
/// export` calibrates with (it holds every 5th of the run directory's states out).
const INT8_CALIBRATION_STATES: usize = RUN_DIR_STATES * 4 / 5;

/// Named tensors moved to the CPU, contiguous (what safetensors files and the
/// quantizer take).
fn on_cpu(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    tensors
        .into_iter()
        .map(|(name, t)| (name, t.to_device(Device::Cpu).contiguous()))
        .collect()
}

/// The runtime's actions (env units) for rows of observations `obs` (`obs_dim` each).
fn int8_actions(policy: &Policy<'_>, obs: &[f32], obs_dim: usize) -> Result<Vec<f64>> {
    let mut scratch = Scratch::new();
    let mut action = vec![0f32; policy.act_dim()];
    let mut out = Vec::with_capacity(obs.len() / obs_dim * action.len());
    for row in obs.chunks(obs_dim) {
        policy
            .act(row, NoiseMode::Deterministic, &mut scratch, &mut action)
            .map_err(|e| anyhow::anyhow!("int8 policy: {e}"))?;
        out.extend(action.iter().map(|&a| a as f64));
    }
    Ok(out)
}

/// The checkpoint to resume from: `checkpoint/`, or `checkpoint.old/` if a crash hit
/// between the two renames of [`Trainer::checkpoint`].
pub fn checkpoint_dir(root: &Path) -> Option<PathBuf> {
    ["checkpoint", "checkpoint.old"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.join("state.json").is_file())
}

/// Writes `path` via `write(path.tmp)` and a rename, so readers never see half a file.
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    // `name.tmp.ext`, not `name.ext.tmp`: writers that pick the format from the
    // extension (the PNG plot) must still see it.
    let tmp = match path.extension() {
        Some(ext) => path.with_extension(format!("tmp.{}", ext.to_string_lossy())),
        None => path.with_extension("tmp"),
    };
    write(&tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
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

/// `trainer bench` for one agent: update throughput at the configured sizes, and env
/// steps/s of the whole training loop (acting, env stepping, storing, updating).
#[derive(Debug, Clone, Serialize)]
pub struct AgentBench {
    pub algo: Algo,
    pub env_id: String,
    pub batch_size: usize,
    /// The thread count the timed updates ran on ([`Trainer::threads_label`]).
    pub threads: String,
    /// The median of the [`BENCH_WINDOWS`] windows' update rates.
    pub updates_per_s: f64,
    /// The fastest window's update rate: the machine's rate with the least interference,
    /// measured the way [`matmul_peak_gflops`] measures the peak (best of several).
    pub best_updates_per_s: f64,
    pub loop_env_steps_per_s: f64,
    pub loop_updates_per_s: f64,
    /// Matmul FLOPs per update ([`Agent::flops_per_update`]).
    pub flops_per_update: f64,
    /// The device's measured f32 matmul rate ([`matmul_peak_gflops`]).
    pub peak_gflops: f64,
}

impl AgentBench {
    /// Matmul GFLOP/s the updates reached at `updates_per_s`.
    pub fn gflops(&self, updates_per_s: f64) -> f64 {
        updates_per_s * self.flops_per_update / 1e9
    }

    /// Percent of the measured matmul peak at `updates_per_s`.
    pub fn percent_of_peak(&self, updates_per_s: f64) -> f64 {
        100.0 * self.gflops(updates_per_s) / self.peak_gflops
    }
}

impl std::fmt::Display for AgentBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<8} {:<20} batch {} on {}: {:>7.1} updates/s (median of {BENCH_WINDOWS} windows, best {:.1}); training loop {:>7.1} env steps/s ({:.1} updates/s); {:.3} GFLOP/update → {:.1} GFLOP/s = {:.0}% of the {:.0} GFLOP/s matmul peak (best window {:.0}%)",
            self.algo.name(),
            self.env_id,
            self.batch_size,
            self.threads,
            self.updates_per_s,
            self.best_updates_per_s,
            self.loop_env_steps_per_s,
            self.loop_updates_per_s,
            self.flops_per_update / 1e9,
            self.gflops(self.updates_per_s),
            self.percent_of_peak(self.updates_per_s),
            self.peak_gflops,
            self.percent_of_peak(self.best_updates_per_s),
        )
    }
}

/// The f32 matmul rate of `device` (GFLOP/s): the best of ten 1024×1024 × 1024×1024
/// products after warm-up, on libtorch's configured threads.
pub fn matmul_peak_gflops(device: Device) -> f64 {
    let n = 1024i64;
    let a = Tensor::randn([n, n], (tch::Kind::Float, device));
    let b = Tensor::randn([n, n], (tch::Kind::Float, device));
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    for _ in 0..3 {
        let _ = a.matmul(&b);
    }
    sync();
    let best = (0..10)
        .map(|_| {
            let start = Instant::now();
            let _ = a.matmul(&b);
            sync();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// Windows the timed updates of [`bench_agent`] are split into. On a shared machine a
/// neighbour's burst slows a window or two: the median ignores it, and the best window
/// is the rate with the least interference (the matmul peak is a best of ten too). On
/// the 2-core workstation one mean over 1000 SAC updates moved between 169 and 219
/// updates/s from run to run with the peak at 193–203 GFLOP/s.
pub const BENCH_WINDOWS: usize = 10;

/// The median and the largest of `rates` (not empty).
fn median_and_best(rates: &[f64]) -> (f64, f64) {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    };
    (median, sorted[n - 1])
}

pub fn bench_agent(
    mut config: TrainConfig,
    updates: usize,
    loop_steps: u64,
    peak_gflops: f64,
) -> Result<AgentBench> {
    config.progress_secs = 0.0;
    let warm = (config.batch_size as u64).max(1000);
    config.learning_starts = warm;
    config.steps = warm + loop_steps;
    let mut t = Trainer::new(config, None)?;
    // Warm-up transitions (random actions), no updates yet.
    t.config.learning_starts = u64::MAX;
    t.run_until(warm, false)?;
    t.config.learning_starts = warm;
    for _ in 0..10 {
        t.update()?;
    }
    // Under `--threads auto`, time the count the tuner settles on, as training runs
    // (its first probes take about half a second of updates).
    while t.tuner.as_ref().is_some_and(|tuner| !tuner.decided()) {
        t.update()?;
    }
    let threads = t.threads_label();
    let windows = BENCH_WINDOWS.min(updates);
    let mut rates = Vec::with_capacity(windows);
    for k in 0..windows {
        let count = updates * (k + 1) / windows - updates * k / windows;
        let start = Instant::now();
        for _ in 0..count {
            t.update()?;
        }
        rates.push(count as f64 / start.elapsed().as_secs_f64());
    }
    let (updates_per_s, best_updates_per_s) = median_and_best(&rates);
    let (s0, u0) = (t.state.env_steps, t.state.updates);
    let start = Instant::now();
    t.run_until(warm + loop_steps, false)?;
    let dt = start.elapsed().as_secs_f64();
    Ok(AgentBench {
        algo: t.config.algo,
        env_id: t.config.env_id.clone(),
        batch_size: t.config.batch_size,
        threads,
        updates_per_s,
        best_updates_per_s,
        loop_env_steps_per_s: (t.state.env_steps - s0) as f64 / dt,
        loop_updates_per_s: (t.state.updates - u0) as f64 / dt,
        flops_per_update: t.agent.flops_per_update(t.config.batch_size),
        peak_gflops,
    })
}

#[cfg(test)]
mod tests {
    use super::median_and_best;

    /// The bench's summary of its windows: a slow window (a neighbour's burst) moves
    /// neither the median nor the best.
    #[test]
    fn median_and_best_of_window_rates() {
        assert_eq!(median_and_best(&[200.0]), (200.0, 200.0));
        assert_eq!(median_and_best(&[210.0, 60.0, 205.0]), (205.0, 210.0));
        assert_eq!(
            median_and_best(&[190.0, 220.0, 30.0, 200.0]),
            (195.0, 220.0)
        );
    }
}
