//! Evaluations: the training-time acting rule, the deployed float policy and the int8
//! runtime on the same episodes, written as one metrics row each.

use std::collections::BTreeMap;

use anyhow::Result;
use runtime::{NoiseMode, Policy, Scratch};
use serde::{Deserialize, Serialize};
use sim::env;
use sim::run_dir::Algo;
use tch::{Device, Tensor};

use super::checkpoint::RUN_DIR_STATES;
use super::{derive_seed, torch_seed, Trainer, SEED_EVAL, SEED_EVAL_NOISE};
use crate::export;
use crate::quantize::quantize;

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
    /// Each statistic's mean over the updates since the previous row (`trainer results`
    /// plots these: α, entropy, Q-weight ESS, flow loss).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats_mean: BTreeMap<String, f64>,
}

impl Trainer {
    /// Mean, std and mean length of `eval_episodes` deterministic episodes (fixed seeds,
    /// the same at every evaluation), stepped as one batch, acting as `acting` says.
    /// Torch's generator (FLAME's best-of-N particles) is reseeded for the evaluation's
    /// env step, so the result depends on the run alone, not on what else the process
    /// ran before it (another seed of a group, an export).
    pub fn evaluate(&mut self, acting: Acting<'_>) -> Result<(f64, f64, f64)> {
        torch_seed(derive_seed(
            self.config.seed,
            SEED_EVAL_NOISE,
            self.state.env_steps,
        ));
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

    pub(super) fn evaluate_now(&mut self) -> Result<()> {
        let dt = self.state.wall_s.max(1e-9);
        let rates = (
            self.state.updates as f64 / dt,
            self.state.env_steps as f64 / dt,
        );
        self.evaluate_with_rates(rates)
    }

    pub(super) fn evaluate_with_rates(&mut self, rates: (f64, f64)) -> Result<()> {
        self.read_stats()?;
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
            stats_mean: std::mem::take(&mut self.state.window_stats)
                .into_iter()
                .map(|(k, (sum, count))| (k, sum / count as f64))
                .collect(),
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
        let weights = self.agent.policy_tensors();
        let calibration = self.replay.observations(INT8_CALIBRATION_STATES);
        let config = self.run_config()?;
        let blob = export::float_policy(&config, &self.spec, self.agent.normalizer(), &weights)
            .and_then(|float| quantize(&float, &calibration, 0))
            .map(|quantized| quantized.bytes);
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

/// Calibration states for the training-time int8 evaluation: as many as `trainer
/// export` calibrates with (it holds every 5th of the run directory's states out).
const INT8_CALIBRATION_STATES: usize = RUN_DIR_STATES * 4 / 5;

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
