//! `trainer train`'s configuration: loop settings plus the agent's hyperparameters, the
//! device, and the agent it builds.

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sim::env::{self, EnvSpec};
use sim::run_dir::Algo;
use tch::Device;

use crate::agents::flame::{Flame, FlameConfig};
use crate::agents::sac::{Sac, SacConfig};
use crate::agents::Agent;
use crate::threads::Threads;

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
    /// Record each variant of the agent's update as a CUDA graph and replay it
    /// (`--cuda-graph`; CUDA devices only). Changes the speed, not what an update computes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cuda_graph: bool,
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
            cuda_graph: false,
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
            !self.cuda_graph || self.device.starts_with("cuda"),
            "--cuda-graph records the update's CUDA kernels, and this run is on --device {}: use --device cuda, or leave --cuda-graph off (the CPU runs the same update eagerly)",
            self.device
        );
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
