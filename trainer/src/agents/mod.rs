//! The agents behind `trainer train --algo`: SAC, and FLAME-M / FLAME-R (one module,
//! two flows; their math lives in `crate::flame`), all behind the [`Agent`] trait.
//!
//! The training loop ([`crate::train`]) owns the envs, the replay buffer, evaluation,
//! checkpoints and every random seed: before each call into an agent that draws random
//! numbers it reseeds torch's generator from (run seed, what, counter), so an agent needs
//! no RNG state of its own and a resumed run draws exactly the numbers the uninterrupted
//! run would have drawn.

pub mod flame;
pub mod sac;
mod temperature;

use std::collections::HashMap;

use anyhow::{ensure, Result};
use tch::Tensor;

use crate::replay::Batch;
use sim::run_dir::Normalizer;

/// Named scalars from one update (losses, α, Q means) as one-element tensors on the
/// agent's device: an update never reads them back, so it runs without a host
/// synchronization (and can be recorded in a CUDA graph). The loop reads them after the
/// update, checks them for NaN/Inf, shows them in the progress line and writes them to
/// the metrics.
pub type UpdateStats = Vec<(&'static str, Tensor)>;

pub trait Agent {
    /// Actions in [-1, 1]^d for a batch of raw observations `[n, obs]`: stochastic
    /// training-time acting when `explore`, else the deterministic evaluation action.
    fn act(&self, obs: &Tensor, explore: bool) -> Tensor;

    /// The action the deployed policy takes without a critic or sampling noise (FLAME:
    /// one flow sample from z = 0, what the MCU runtime computes deterministically; SAC:
    /// its mean action).
    fn act_deployed(&self, obs: &Tensor) -> Tensor;

    /// Fraction of the run's env steps done (0 to 1), set before each update: agents
    /// with schedules key them on it (a resumed run sets the same values).
    fn set_progress(&mut self, _fraction: f64) {}

    /// One gradient update on a replay minibatch; `update` counts updates from 0 (agents
    /// with delayed policy updates key them on it).
    fn update(&mut self, batch: &Batch, update: u64) -> UpdateStats;

    /// Which of its two delayed branches update number `update` takes (FLAME: the policy
    /// step, the α step after it; SAC: the actor and α steps, the Polyak step). Updates
    /// that take the same branches launch the same kernels on tensors of the same shapes,
    /// so one CUDA graph per pair records them all (`--cuda-graph`).
    fn update_branches(&self, update: u64) -> (bool, bool);

    /// Matmul FLOPs of one update on a minibatch of `batch` states, averaged over the
    /// updates that skip the delayed policy step (backward passes count twice the
    /// forward; biases, activations and optimizer steps not counted). `trainer bench`
    /// divides the measured rate by it against the machine's matmul peak.
    fn flops_per_update(&self, batch: usize) -> f64;

    /// The current entropy temperature α.
    fn alpha(&self) -> f64;

    /// Every tensor needed to resume exactly: weights, targets, optimizer moments and
    /// step counts, α. Scalars are stored as one-element tensors.
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Restores [`Agent::state`] in place.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;

    /// The policy weights for the run directory's `policy.safetensors` (for FLAME: the
    /// `FlowPolicyNet` VarStore layout that `trainer export` reads).
    fn policy_tensors(&self) -> Vec<(String, Tensor)>;

    /// The observation normalizer the policy consumes (identity for SAC, which, like
    /// CleanRL, feeds raw observations).
    fn normalizer(&self) -> Normalizer;
}

/// What every agent's configuration must satisfy, each refusal naming its flag: the
/// `positive` values finite and > 0, γ and τ at most 1, delayed updates at least every
/// update, hidden widths positive.
pub fn validate_common(
    positive: &[(&str, f64)],
    (gamma, tau): (f64, f64),
    policy_frequency: u64,
    policy_hidden: &[usize],
    critic_hidden: &[usize],
) -> Result<()> {
    for &(name, v) in positive.iter().chain(&[("--gamma", gamma), ("--tau", tau)]) {
        ensure!(
            v.is_finite() && v > 0.0,
            "{name} must be a positive number, got {v}"
        );
    }
    ensure!(gamma <= 1.0, "--gamma must be at most 1");
    ensure!(tau <= 1.0, "--tau must be at most 1");
    ensure!(
        policy_frequency >= 1,
        "--policy-frequency must be at least 1"
    );
    for (name, widths) in [
        ("--hidden", policy_hidden),
        ("--critic-hidden", critic_hidden),
    ] {
        ensure!(
            !widths.is_empty() && widths.iter().all(|&h| h > 0),
            "{name} needs positive widths"
        );
    }
    Ok(())
}
