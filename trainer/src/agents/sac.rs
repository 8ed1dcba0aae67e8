//! Soft Actor-Critic, CleanRL-style (`sac_continuous_action.py`): the Gaussian baseline.
//!
//! One update, top to bottom ([`Sac::update`]):
//! 1. critic: `y = c·r + γ(1 − term)·(min Q̄(s′, a′) − α·log π(a′|s′))`, a′ ~ π(·|s′);
//!    one Adam step on `Σ_i mean((Q_i(s, a) − y)²)`;
//! 2. every `policy_frequency` updates, `policy_frequency` actor steps (CleanRL's
//!    TD3-style delay with its compensation loop, so on average one actor step per
//!    update) on `mean(α·log π(a|s) − min Q(s, a))`, a ~ π(·|s) reparameterized, each
//!    followed by an α step on `−log α·mean(log π + H̄)` (H̄ = −scale·d);
//! 3. every `target_frequency` updates, Polyak `Q̄ ← (1 − τ)Q̄ + τQ`.
//!
//! Differences from CleanRL, all numerically neutral or documented here:
//! - the α step reuses the actor step's `log π` (detached) instead of drawing a fresh
//!   sample from the just-updated actor: one actor forward less per step;
//! - α is optimized as CleanRL does it (torch's Adam on a log α tensor), but in float64
//!   and on the device ([`Temperature`]), so an update never reads the host;
//! - the critic and actor gradients are written out by hand ([`TwinCritic::train_step`],
//!   [`Sac::actor_loss_gradient`]) instead of taken by autograd: the same derivatives
//!   (tests hold them to autograd's), without a graph per step, which is most of the
//!   per-op overhead that bounds a SAC update on a 2-core CPU;
//! - actions are in [-1, 1] (scaled to the env's bounds at the env), but `log π` keeps
//!   CleanRL's `−Σ log(action_scale)` term so the entropy target means the same thing.

use std::collections::HashMap;

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::temperature::Temperature;
use super::{validate_common, Agent, UpdateStats};
use crate::critic::TwinCritic;
use crate::mlp::{
    checkpoint_entries, restore_entries, Activation, Adam, AdamConfig, Init, Mlp, MlpShape,
    ParamGrad,
};
use crate::replay::Batch;
use sim::run_dir::Normalizer;

/// Every SAC hyperparameter, with CleanRL's default (the loop-level ones — batch size,
/// warm-up, buffer size, envs — are in `train::TrainConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SacConfig {
    /// Discount γ (0.99).
    pub gamma: f64,
    /// Polyak rate τ for the target critics (0.005).
    pub tau: f64,
    /// Critic Adam learning rate (1e-3).
    pub q_lr: f64,
    /// Actor Adam learning rate (3e-4).
    pub policy_lr: f64,
    /// Temperature Adam learning rate (CleanRL reuses q_lr: 1e-3).
    pub alpha_lr: f64,
    /// Actor (and α) updated every this many updates, that many times (2).
    pub policy_frequency: u64,
    /// Targets Polyak-averaged every this many updates (1).
    pub target_frequency: u64,
    /// Tune α automatically (true); otherwise α stays at `init_alpha`.
    pub autotune: bool,
    /// α at the start (CleanRL: log α = 0, so 1.0 with autotune; 0.2 without).
    pub init_alpha: f64,
    /// Target entropy H̄ = −scale·d (1.0).
    pub target_entropy_scale: f64,
    /// Actor hidden widths (256, 256).
    pub policy_hidden: Vec<usize>,
    /// Critic hidden widths (256, 256).
    pub critic_hidden: Vec<usize>,
    /// Hidden activation of both networks (ReLU).
    pub activation: Activation,
    /// log σ is squashed into [log_std_min, log_std_max] = [−5, 2].
    pub log_std_min: f64,
    pub log_std_max: f64,
    /// Reward scale c in the TD target (1.0).
    pub reward_scale: f64,
}

impl Default for SacConfig {
    fn default() -> Self {
        Self {
            gamma: 0.99,
            tau: 0.005,
            q_lr: 1e-3,
            policy_lr: 3e-4,
            alpha_lr: 1e-3,
            policy_frequency: 2,
            target_frequency: 1,
            autotune: true,
            init_alpha: 1.0,
            target_entropy_scale: 1.0,
            policy_hidden: vec![256, 256],
            critic_hidden: vec![256, 256],
            activation: Activation::Relu,
            log_std_min: -5.0,
            log_std_max: 2.0,
            reward_scale: 1.0,
        }
    }
}

impl SacConfig {
    /// Refuses values the agent cannot run with, naming the flag.
    pub fn validate(&self) -> Result<()> {
        validate_common(
            &[
                ("--q-lr", self.q_lr),
                ("--policy-lr", self.policy_lr),
                ("--alpha-lr", self.alpha_lr),
                ("--alpha", self.init_alpha),
                ("--reward-scale", self.reward_scale),
            ],
            (self.gamma, self.tau),
            self.policy_frequency,
            &self.policy_hidden,
            &self.critic_hidden,
        )?;
        ensure!(
            self.target_frequency >= 1,
            "--target-frequency must be at least 1"
        );
        Ok(())
    }
}

pub struct Sac {
    pub config: SacConfig,
    act_dim: usize,
    /// `[obs] → [mean; log σ (pre-squash)]`.
    actor: Mlp,
    actor_adam: Adam,
    /// Where the actor step writes its gradient.
    actor_grad: ParamGrad,
    critic: TwinCritic,
    temperature: Temperature,
    target_entropy: f64,
    /// Σ_i log(action_scale_i): CleanRL's log-prob correction for env-unit actions.
    log_scale_sum: f64,
}

impl Sac {
    /// `action_scale` is the env's half-range per dimension ((high − low)/2).
    pub fn new(
        config: SacConfig,
        obs_dim: usize,
        act_dim: usize,
        action_scale: &[f64],
        device: Device,
    ) -> Self {
        let mut sizes = vec![obs_dim];
        sizes.extend_from_slice(&config.policy_hidden);
        sizes.push(2 * act_dim);
        let actor = Mlp::new(
            MlpShape {
                sizes,
                activation: config.activation,
                members: 1,
            },
            device,
        );
        let actor_adam = Adam::new(AdamConfig::with_lr(config.policy_lr), &actor.params);
        let actor_grad = actor.param_grad();
        let critic = TwinCritic::new(
            obs_dim,
            act_dim,
            &config.critic_hidden,
            config.activation,
            Init::Torch,
            AdamConfig::with_lr(config.q_lr),
            config.tau,
            device,
        );
        Self {
            act_dim,
            actor,
            actor_adam,
            actor_grad,
            critic,
            temperature: Temperature::new(config.init_alpha, config.alpha_lr, device),
            target_entropy: -config.target_entropy_scale * act_dim as f64,
            log_scale_sum: action_scale.iter().map(|s| s.ln()).sum(),
            config,
        }
    }

    /// Mean and log σ of the pre-tanh Gaussian.
    fn gaussian(&self, obs: &Tensor) -> (Tensor, Tensor) {
        self.gaussian_head(&self.actor.forward(obs))
    }

    /// Mean and log σ from the actor's output `[mean; p]`: log σ squashed into
    /// [log_std_min, log_std_max] as `lo + (tanh(p) + 1)·(hi − lo)/2`.
    fn gaussian_head(&self, out: &Tensor) -> (Tensor, Tensor) {
        let d = self.act_dim as i64;
        let mean = out.narrow(1, 0, d);
        let (lo, hi) = (self.config.log_std_min, self.config.log_std_max);
        let log_std = (out.narrow(1, d, d).tanh() + 1.0) * (0.5 * (hi - lo)) + lo;
        (mean, log_std)
    }

    /// A reparameterized sample `a = tanh(μ + σ·ε)` and its `log π(a|s)` `[B, 1]`.
    fn sample(&self, obs: &Tensor) -> (Tensor, Tensor) {
        let (mean, log_std) = self.gaussian(obs);
        let eps = mean.randn_like();
        self.squash(&mean, &log_std, &eps)
    }

    /// `a = tanh(μ + σ·ε)` for the noise ε, and
    /// `log π(a|s) = Σ_j [−ε_j²/2 − log σ_j − log √(2π) − log(1 + 10⁻⁶ − a_j²)] − Σ log scale`.
    fn squash(&self, mean: &Tensor, log_std: &Tensor, eps: &Tensor) -> (Tensor, Tensor) {
        let a = (mean + log_std.exp() * eps).tanh();
        let log_normal = eps.square() * -0.5 - log_std - 0.5 * (2.0 * std::f64::consts::PI).ln();
        let log_det: Tensor = (a.square().neg() + (1.0 + 1e-6)).log();
        let log_pi =
            (log_normal - log_det).sum_dim_intlist(1, true, Kind::Float) - self.log_scale_sum;
        (a, log_pi)
    }

    /// The actor loss `mean(α·log π(a|s) − min Q(s, a))` at `a = tanh(μ + σ·ε)` for the
    /// noise ε `[B, d]`, and its gradient in the actor's parameters, by hand (no autograd
    /// graph: see [`Mlp::backward`]). With `x = μ + σ·ε`, `log σ` from `p` as in
    /// [`Sac::gaussian_head`] and `log π` as in [`Sac::squash`]:
    /// - `∂L/∂a = −(1/B)·∂min Q/∂a + (α/B)·2a/(1 + 10⁻⁶ − a²)`,
    /// - `∂L/∂x = ∂L/∂a·(1 − a²)`, `∂L/∂μ = ∂L/∂x`,
    /// - `∂L/∂log σ = ∂L/∂x·ε·σ − α/B` (ε is fixed: the reparameterization),
    /// - `∂L/∂p = ∂L/∂log σ·(hi − lo)/2·(1 − tanh²(p))`.
    ///
    /// Writes the gradient into `self.actor_grad`; returns the loss and the mean log π.
    /// `tests::actor_gradient_equals_autograd` holds it to autograd's on the same loss.
    fn actor_loss_gradient(
        &mut self,
        obs: &Tensor,
        eps: &Tensor,
        alpha: &Tensor,
    ) -> (Tensor, Tensor) {
        let (out, tape) = self.actor.forward_taped(obs);
        tch::no_grad(|| {
            let d = self.act_dim as i64;
            let rows = obs.size()[0] as f64;
            let (mean, log_std) = self.gaussian_head(&out);
            let (a, log_pi) = self.squash(&mean, &log_std, eps);
            let (q_grad, min_q) = self.critic.min_q_action_gradient(obs, &a, -1.0 / rows);
            let loss = (&log_pi * alpha - min_q).mean(Kind::Float);
            let a2 = a.square();
            let grad_a = q_grad + &a * (alpha * 2.0 / rows) / (a2.neg() + (1.0 + 1e-6));
            let grad_x = grad_a * (a2.neg() + 1.0);
            let grad_log_std = &grad_x * eps * log_std.exp() - alpha / rows;
            let half_range = 0.5 * (self.config.log_std_max - self.config.log_std_min);
            let tanh_p = out.narrow(1, d, d).tanh();
            let grad_p = grad_log_std * half_range * (tanh_p.square().neg() + 1.0);
            let grad_out = Tensor::cat(&[grad_x, grad_p], 1);
            self.actor
                .backward(&tape, &grad_out, Some(&mut self.actor_grad), None);
            (loss, log_pi.mean(Kind::Float))
        })
    }
}

impl Agent for Sac {
    fn act(&self, obs: &Tensor, explore: bool) -> Tensor {
        tch::no_grad(|| {
            if explore {
                self.sample(obs).0
            } else {
                self.gaussian(obs).0.tanh()
            }
        })
    }

    fn act_deployed(&self, obs: &Tensor) -> Tensor {
        self.act(obs, false)
    }

    fn flops_per_update(&self, batch: usize) -> f64 {
        let actor = self.actor.shape.matmul_flops(batch);
        let critic = self.critic.net.shape.matmul_flops(batch);
        // TD target: actor + target critics forward; critics forward + backward; on
        // average one actor step per update (policy_frequency steps every
        // policy_frequency updates): actor forward + backward, critics forward and
        // backward to the action.
        (actor + critic) + 3.0 * critic + (3.0 * actor + 2.0 * critic)
    }

    fn update(&mut self, batch: &Batch, update: u64) -> UpdateStats {
        let c = self.config.clone();
        let alpha = self.temperature.alpha();

        // 1. Critic: soft TD target from the target critics and a fresh a′ ~ π(·|s′).
        let y = tch::no_grad(|| {
            let (next_a, next_log_pi) = self.sample(&batch.next_obs);
            let next_v = self.critic.target_min_q(&batch.next_obs, &next_a) - next_log_pi * &alpha;
            &batch.rew * c.reward_scale + (1.0 - &batch.term) * c.gamma * next_v
        });
        let (q_loss, q_mean) = self.critic.train_step(&batch.obs, &batch.act, &y, 1);
        let mut stats = vec![("q_loss", q_loss), ("q_mean", q_mean)];

        let (actor_step, target_step) = self.update_branches(update);

        // 2. Actor and α, delayed with CleanRL's compensation loop.
        if actor_step {
            let mut last = None;
            for _ in 0..c.policy_frequency {
                let alpha = self.temperature.alpha();
                // The noise of CleanRL's `rsample`, drawn as `sample` draws it.
                let shape = [batch.obs.size()[0], self.act_dim as i64];
                let eps = Tensor::randn(shape, (Kind::Float, batch.obs.device()));
                let (loss, mean_log_pi) = self.actor_loss_gradient(&batch.obs, &eps, &alpha);
                self.actor_adam
                    .step(&self.actor.params, &self.actor_grad.flat);
                // loss = mean(−exp(log α)·(log π + H̄)); d/d log α = −α·mean(log π + H̄)
                let gap = mean_log_pi.to_kind(Kind::Double) + self.target_entropy;
                let alpha_loss = -(&alpha * gap);
                if c.autotune {
                    self.temperature.step(&alpha_loss);
                }
                last = Some((loss, alpha_loss, -mean_log_pi));
            }
            let (pi_loss, alpha_loss, entropy) = last.expect("policy_frequency ≥ 1");
            let alpha_loss = if c.autotune {
                alpha_loss
            } else {
                alpha_loss.zeros_like()
            };
            stats.extend([
                ("pi_loss", pi_loss),
                ("alpha_loss", alpha_loss),
                ("entropy", entropy),
            ]);
        }

        // 3. Targets.
        if target_step {
            self.critic.polyak();
        }
        stats.push(("alpha", self.temperature.alpha()));
        stats
    }

    /// The actor (and α) steps, and the Polyak step.
    fn update_branches(&self, update: u64) -> (bool, bool) {
        let c = &self.config;
        (
            update.is_multiple_of(c.policy_frequency),
            update.is_multiple_of(c.target_frequency),
        )
    }

    fn alpha(&self) -> f64 {
        self.temperature.value()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = self.critic.state("critic");
        out.extend(checkpoint_entries(
            "actor",
            &[("params", &self.actor.params)],
            &self.actor_adam,
        ));
        out.extend(self.temperature.entries());
        out
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.critic.load_state("critic", state)?;
        let buffers: &mut [(&str, &mut Tensor)] = &mut [("params", &mut self.actor.params)];
        restore_entries("actor", buffers, &mut self.actor_adam, state)?;
        self.temperature.restore(state)
    }

    fn policy_tensors(&self) -> Vec<(String, Tensor)> {
        self.actor.linear_layers("actor.fc")
    }

    fn normalizer(&self) -> Normalizer {
        let d = self.actor.shape.sizes[0];
        Normalizer {
            mean: vec![0.0; d],
            std: vec![1.0; d],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written actor gradient equals autograd's on the same loss and noise.
    #[test]
    fn actor_gradient_equals_autograd() {
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let (obs_dim, act_dim, rows) = (5, 3, 64);
        let mut sac = Sac::new(
            SacConfig::default(),
            obs_dim,
            act_dim,
            &[0.4, 1.0, 2.5],
            Device::Cpu,
        );
        let obs = Tensor::randn([rows, obs_dim as i64], opts);
        let eps = Tensor::randn([rows, act_dim as i64], opts);
        let alpha = Tensor::from(0.3f64);
        let (loss, mean_log_pi) = sac.actor_loss_gradient(&obs, &eps, &alpha);

        let (mean, log_std) = sac.gaussian(&obs);
        let (a, log_pi) = sac.squash(&mean, &log_std, &eps);
        let expected_loss = (&log_pi * &alpha - sac.critic.min_q(&obs, &a)).mean(Kind::Float);
        let expected = sac.actor.grad(&expected_loss);
        let err = (&sac.actor_grad.flat - &expected)
            .abs()
            .max()
            .double_value(&[]);
        let scale = expected.abs().max().double_value(&[]);
        assert!(
            err < 1e-5 * scale.max(1.0),
            "gradient off by {err} (max {scale})"
        );
        let loss_err = (loss - expected_loss.detach()).abs().double_value(&[]);
        assert!(loss_err < 1e-5, "loss off by {loss_err}");
        let log_pi_err = (mean_log_pi - log_pi.detach().mean(Kind::Float)).abs();
        assert!(log_pi_err.double_value(&[]) < 1e-5);
    }
}
