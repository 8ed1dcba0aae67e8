//! FLAME-M and FLAME-R: max-entropy RL with a flow policy trained by Q-reweighted flow
//! matching (DESIGN §5). One agent, two flows, readable top to bottom. The defaults are
//! the official code's behaviours; each is a [`FlameConfig`] field and a `trainer
//! train` flag, and `docs/ablations.md` has the runs that decided them.
//!
//! - **Policy** `u_θ(z, r, t | s)`: an MLP on `[s, z, emb(r), emb(t)]` (3×256 mish) with
//!   `z_t = (1 − t)·a + t·ε` (t = 1 is noise). FLAME-M (MeanFlow) learns the mean velocity
//!   over `[r, t]` and acts in one evaluation: `a = clip(z − u(z, 0, 1 | s))`. FLAME-R
//!   (rectified flow) learns the instantaneous velocity `v(z, t) = u(z, t, t)` — the same
//!   network on the diagonal r = t, so both export to the same blob layout — and acts
//!   with N Euler steps `z ← z − u(z, t_k, t_k)/N` from t = 1 to 0. The steps are
//!   [`flow_steps`], the same list the exporter folds into the blob. `z ~ σ_z·N(0, I)`.
//!   An EMA copy acts (best of N_p samples by min Q, plus α·noise_scale noise).
//! - **Critic** ([`Flame::update`] step 1): twin Q with Polyak targets,
//!   `y = c·r + γ(1 − term)·[min Q̄(s′, a′) + β·α·Ĥ(s′)]`; a′ the online policy's best of
//!   N_p plus exploration noise ([`TdAction`]), `critic_steps` Adam steps with the one
//!   gradient (FLAME-M 2, as the official code). β ∈ {0, +1, −1} ([`TdEntropy`]): off by
//!   default, SAC's bonus, or the official script's penalty; Ĥ(s′) per next state.
//! - **Policy update** (step 2, every `policy_frequency` updates): times `r ≤ t`
//!   ([`TimePairs`]), anchor `x_t = (1 − t)·a + t·ε` from a replay action
//!   ([`TimeConvention`] for the official code's mirrored anchors); K candidates from the
//!   interpolation posterior ([`crate::flame::posterior`]); weights
//!   `softmax_k(min Q(s, a_k) / T)`, T = e^α for FLAME-M and α for FLAME-R
//!   ([`WeightTemperature`]); the weighted velocity `v̄ = Σ w_k v_k`.
//!   FLAME-R regresses `u(x_t, t, t)` on `v̄`. FLAME-M regresses `u(x_t, r, t)` on the
//!   MeanFlow target `v̄ − (t − r)·(∂_z u·v̄ + ∂_t u)` from **one** exact JVP with tangent
//!   `(v̄, 0, 1)` (the loss is quadratic with stop-grad targets, so the weighted single
//!   target has the per-candidate loss's gradient); the squared error is a mean over
//!   action dimensions ([`FlowLossReduction`]), optionally with MeanFlow's adaptive
//!   weight. Both add `λ·(−min Q̄(s, a_θ(s)))` through the sampler (`q_grad_weight`; the
//!   official code's 1 for FLAME-M, 0 for FLAME-R).
//! - **Temperature** (step 3, every `alpha_every` updates): `Ĥ` from a flow chain started
//!   from the acting base noise σ_z·N(0, I) ([`crate::flame::entropy`]): FLAME-M the
//!   decoupled M = 3 step chain with exact log-dets; FLAME-R its own N-step chain with
//!   the instantaneous change of variables (`Δ·tr ∂v/∂z` per step, exact trace). One
//!   Adam step on `log α·(Ĥ − H̄)`, `H̄ = −scale·d`.
//!
//! Randomness comes from torch's global generator, which the training loop reseeds
//! before every call (see [`super`]), so resumed runs draw the same numbers.

use std::collections::HashMap;

use anyhow::{ensure, Result};
use runtime::blob::Algorithm;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::temperature::Temperature;
use super::{validate_common, Agent, UpdateStats};
use crate::critic::TwinCritic;
use crate::flame::entropy::{chain_log_prob, LogDet, VelocityField};
use crate::flame::posterior::{candidate_velocities, sample_candidates};
use crate::mlp::{
    checkpoint_entries, restore_entries, Activation, Adam, AdamConfig, Init, Mlp, MlpShape,
};
use crate::policy_net::{time_features_derivative, time_features_tensor};
use crate::replay::Batch;
use sim::float_policy::{flow_steps, TimeEmbedding};
use sim::run_dir::Normalizer;

/// Every FLAME hyperparameter, with the official code's default where it has one (loop
/// settings — envs, warm-up, batch size — are in `train::TrainConfig`).
/// [`FlameConfig::for_algorithm`] gives FLAME-M's or FLAME-R's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlameConfig {
    /// Network evaluations per action: FLAME-M 1, FLAME-R N = 20.
    #[serde(default = "one")]
    pub nfe: usize,
    /// Discount γ (0.99).
    pub gamma: f64,
    /// Polyak rate of the critic targets and of the EMA acting policy, applied every
    /// `policy_frequency` updates (FLAME-M 0.02; the official code and FLAME-R 0.005).
    /// The critic's value scale approaches its fixed point with a time constant of
    /// `policy_frequency / (τ·(1 − γ))` updates: 40,000 at 0.005 (200k env steps at one
    /// update per 5), 10,000 at 0.02; docs/ablations.md has the runs that chose 0.02.
    pub tau: f64,
    /// Policy Adam learning rate at the start, and the critics' unless `critic_lr` (3e-4).
    pub lr: f64,
    /// The policy's learning rate decays linearly to this over the run (3e-5, as the
    /// official code); the critics keep theirs.
    #[serde(default = "default_final_policy_lr")]
    pub final_policy_lr: f64,
    /// Critic Adam learning rate when it differs from `lr` (none: `lr`, as the official
    /// code; SAC's critic uses 1e-3). Left out of config.json when none, so a default
    /// run's configuration reads as before and `trainer results` averages it with older
    /// runs of the same setup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critic_lr: Option<f64>,
    /// Temperature Adam learning rate (5e-3, applied every `alpha_every` updates).
    pub alpha_lr: f64,
    /// Policy, EMA and critic targets are updated every this many updates (2).
    pub policy_frequency: u64,
    /// Reward scale c in the TD target (0.2).
    pub reward_scale: f64,
    /// Candidate clean actions per state for the Q-weighted target (K = 100).
    pub candidates: i64,
    /// Particles for best-of-N training-time acting (N_p = 32).
    pub particles: i64,
    /// Std of the base noise z, for acting and for the entropy chain (σ_z = 0.5).
    pub noise_std: f64,
    /// Exploration noise added to the chosen action: std α·noise_scale (1.0).
    pub noise_scale: f64,
    /// Sampling range of the flow times t (and r < t): (t_min, t_max) = (1e-3, 0.995).
    pub t_min: f64,
    pub t_max: f64,
    /// MeanFlow's adaptive loss weighting: each sample's squared error ℓ is weighted by
    /// sg(1/(ℓ + 1e-3)^p); 0 (the official code, plain MSE) disables it.
    pub adaptive_loss_power: f64,
    /// Weight λ of the deterministic-policy-gradient term −λ·min Q̄(s, a_θ(s))
    /// (FLAME-M 1.0, FLAME-R 0).
    pub q_grad_weight: f64,
    /// The entropy term of the TD target ([`TdEntropy`]; off by default). Left out of
    /// config.json when off, as runs before the field existed read.
    #[serde(default, skip_serializing_if = "TdEntropy::is_off")]
    pub td_entropy: TdEntropy,
    /// Tune α (true); else it stays at `init_alpha`.
    pub autotune: bool,
    /// α at the start (1.0).
    pub init_alpha: f64,
    /// Target entropy H̄ = −scale·d (3.0).
    pub target_entropy_scale: f64,
    /// Steps of the entropy chain (FLAME-M: M = 3; FLAME-R: its N).
    pub entropy_steps: usize,
    /// Log-determinant of each chain step: FLAME-M exact (d JVPs), FLAME-R the exact
    /// trace (instantaneous change of variables); first-order Hutchinson as an option.
    pub log_det: LogDet,
    /// States per update used for the entropy estimate (64 of the batch).
    pub entropy_states: i64,
    /// Policy and critic hidden widths (256, 256, 256), mish.
    pub policy_hidden: Vec<usize>,
    pub critic_hidden: Vec<usize>,
    /// How the policy and critic weights start (PyTorch's default; the official code
    /// has Haiku's). Left out of config.json when torch, as runs before the field read.
    #[serde(default, skip_serializing_if = "Init::is_torch")]
    pub init: Init,
    /// Sinusoidal features per time input.
    pub time_dim: usize,
    /// How r and t become features: the official scaled low-frequency encoding, or the
    /// raw one of runs before it existed.
    #[serde(default)]
    pub time_embedding: TimeEmbedding,
    /// α's Adam steps every this many updates (the official code: 100; before: every
    /// policy update, 2). A multiple of `policy_frequency`: α steps with the policy.
    #[serde(default = "default_policy_frequency")]
    pub alpha_every: u64,
    /// Temperature of the Q-weights softmax(Q/T): α, or e^α as the official code.
    #[serde(default)]
    pub weight_temperature: WeightTemperature,
    /// Which next action the TD target values (the official code: the online policy's
    /// best-of-N_p plus exploration noise).
    #[serde(default)]
    pub td_action: TdAction,
    /// How the flow loss reduces over action dimensions: sum, or mean (official).
    #[serde(default)]
    pub flow_loss_reduction: FlowLossReduction,
    /// Adam steps per critic per update with the same gradient (the official code: 2).
    #[serde(default = "one")]
    pub critic_steps: usize,
    /// Pass each time embedding through a learned MLP `Linear(d → 2d) → mish →
    /// Linear(2d → d)` before the trunk, as the official network does (off: the
    /// embedding enters the trunk directly). FLAME-M's default since the sixth session's
    /// run (`docs/ablations.md`). Left out of config.json when off, so a config.json
    /// without it (every run before) reads as off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub time_mlp: bool,
    /// How the flow times (r, t) are drawn: `nested` (t uniform, r uniform below it) or
    /// `sorted` (two uniforms, t the larger, as the official code).
    #[serde(default)]
    pub time_pairs: TimePairs,
    /// Fraction of FLAME-M's training pairs with r = t (MeanFlow papers 25–75%; the
    /// official code 0).
    #[serde(default)]
    pub equal_time_fraction: f64,
    /// The policy learning-rate decay: over the run's env steps, or the official
    /// schedule in policy updates (constant for 25k, then linear over 50k).
    #[serde(default)]
    pub lr_decay: LrDecay,
    /// FLAME-M: which end of the training interpolation the network's time t = 1 is
    /// ([`TimeConvention`]).
    #[serde(default)]
    pub time_convention: TimeConvention,
}

/// Where FLAME-M's training anchors put the noise. The sampler always starts from noise
/// at the network's (r, t) = (0, 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TimeConvention {
    /// t = 1 is noise in training too: `x_t = (1 − t)·a + t·ε`, so the flow loss
    /// trains the network at the inputs the sampler gives it.
    #[default]
    Consistent,
    /// The official MeanFlow code's mix: anchors `x_t = t·a + (1 − t)·ε` (t = 1 clean)
    /// with the velocity ε − a and the JVP along (v̄, 0, 1), while the sampler feeds noise
    /// at (0, 1). The flow loss then regularizes the one-step map mostly away from the
    /// sampler's inputs, which the Q-gradient term shapes.
    Official,
}

/// Temperature of the Q-weights over the K candidates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WeightTemperature {
    /// softmax(Q/α): the max-entropy reading of the posterior weights.
    #[default]
    Alpha,
    /// softmax(Q/e^α): the official code (`1/exp(exp(log α))`); ≈ softmax(Q) for small α.
    ExpAlpha,
}

/// The next action a′ at which the TD target evaluates min Q̄(s′, a′).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TdAction {
    /// One sample of the EMA policy, no noise.
    #[default]
    EmaSample,
    /// The online policy's best of N_p by the online min Q, plus α·noise_scale noise:
    /// the policy that acts (official).
    OnlineBest,
}

/// The entropy term β·α·Ĥ(s′) of the TD target, Ĥ(s′) = −log π(a″|s′) for one sample
/// a″ of the policy whose action the target values ([`TdAction`]), per next state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TdEntropy {
    /// β = 0: no entropy term.
    #[default]
    Off,
    /// β = +1: the soft Bellman backup of SAC, `min Q̄ + α·Ĥ(s′)`.
    Bonus,
    /// β = −1: the official script's default branch (`min Q̄ − e^{log α}·Ĥ(s′)`).
    Penalty,
}

impl TdEntropy {
    fn is_off(&self) -> bool {
        *self == TdEntropy::Off
    }

    /// β: the sign of the entropy term (0 when off).
    fn sign(self) -> f64 {
        match self {
            TdEntropy::Off => 0.0,
            TdEntropy::Bonus => 1.0,
            TdEntropy::Penalty => -1.0,
        }
    }
}

/// How the per-sample flow loss reduces over action dimensions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FlowLossReduction {
    /// Σ over dimensions: the flow gradient grows with d against the Q-gradient term.
    #[default]
    Sum,
    /// Mean over dimensions (official).
    Mean,
}

/// How the flow-time pairs r ≤ t are drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TimePairs {
    /// t ~ U(t_min, t_max), r ~ U(t_min, t).
    #[default]
    Nested,
    /// Two draws of U(t_min, t_max): t the larger, r the smaller (official).
    Sorted,
}

/// The policy learning-rate schedule from `lr` to `final_policy_lr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LrDecay {
    /// Linear over the run's env steps (a short run decays fully).
    #[default]
    Run,
    /// Constant for the first 25,000 policy updates, then linear over 50,000 (the
    /// official optax schedule; independent of the run's length).
    Updates,
}

/// The official schedule's policy updates at constant rate, then of linear decay.
const LR_DECAY_BEGIN: f64 = 25_000.0;
const LR_DECAY_SPAN: f64 = 50_000.0;

fn default_policy_frequency() -> u64 {
    2
}

fn one() -> usize {
    1
}

fn default_final_policy_lr() -> f64 {
    3e-5
}

impl FlameConfig {
    /// The official defaults for FLAME-M ([`Algorithm::FlameM`]) or FLAME-R.
    pub fn for_algorithm(algorithm: Algorithm) -> Self {
        let mean_flow = Self {
            nfe: 1,
            gamma: 0.99,
            tau: 0.02,
            lr: 3e-4,
            final_policy_lr: default_final_policy_lr(),
            critic_lr: None,
            alpha_lr: 5e-3,
            policy_frequency: 2,
            reward_scale: 0.2,
            candidates: 100,
            particles: 32,
            noise_std: 0.5,
            noise_scale: 1.0,
            t_min: 1e-3,
            t_max: 0.995,
            adaptive_loss_power: 0.0,
            q_grad_weight: 1.0,
            td_entropy: TdEntropy::Off,
            autotune: true,
            init_alpha: 1.0,
            target_entropy_scale: 3.0,
            entropy_steps: 3,
            log_det: LogDet::Exact,
            entropy_states: 64,
            policy_hidden: vec![256, 256, 256],
            critic_hidden: vec![256, 256, 256],
            init: Init::Torch,
            time_dim: 16,
            time_embedding: TimeEmbedding::Scaled,
            time_mlp: true,
            alpha_every: 100,
            weight_temperature: WeightTemperature::ExpAlpha,
            td_action: TdAction::OnlineBest,
            flow_loss_reduction: FlowLossReduction::Mean,
            critic_steps: 2,
            time_pairs: TimePairs::Sorted,
            equal_time_fraction: 0.0,
            lr_decay: LrDecay::Updates,
            time_convention: TimeConvention::Consistent,
        };
        match algorithm {
            Algorithm::FlameM => mean_flow,
            Algorithm::FlameR => Self {
                nfe: 20,
                adaptive_loss_power: 0.0,
                q_grad_weight: 0.0,
                entropy_steps: 20,
                log_det: LogDet::Trace,
                // The official rectified-flow agent (rf2_sac_ent): one critic step,
                // weights softmax(Q/α); its τ too (no FLAME-R run has tested 0.02).
                tau: 0.005,
                critic_steps: 1,
                weight_temperature: WeightTemperature::Alpha,
                // FLAME-M's time MLPs were decided by a FLAME-M run; FLAME-R keeps the
                // embedding straight into the trunk until a FLAME-R run decides them.
                time_mlp: false,
                ..mean_flow
            },
        }
    }
}

impl FlameConfig {
    /// The critics' Adam learning rate: `critic_lr`, else the shared `lr`.
    pub fn critic_learning_rate(&self) -> f64 {
        self.critic_lr.unwrap_or(self.lr)
    }

    /// Refuses values the agent cannot run with, naming the flag.
    pub fn validate(&self) -> Result<()> {
        validate_common(
            &[
                ("--lr", self.lr),
                ("--final-policy-lr", self.final_policy_lr),
                ("--q-lr", self.critic_learning_rate()),
                ("--alpha-lr", self.alpha_lr),
                ("--alpha", self.init_alpha),
                ("--reward-scale", self.reward_scale),
                ("--noise-std", self.noise_std),
            ],
            (self.gamma, self.tau),
            self.policy_frequency,
            &self.policy_hidden,
            &self.critic_hidden,
        )?;
        ensure!(self.nfe >= 1, "--nfe must be at least 1");
        ensure!(self.candidates >= 1, "--candidates (K) must be at least 1");
        ensure!(self.particles >= 1, "--particles must be at least 1");
        ensure!(
            self.entropy_steps >= 1,
            "--entropy-steps must be at least 1"
        );
        ensure!(
            self.entropy_states >= 1,
            "--entropy-states must be at least 1"
        );
        ensure!(
            self.t_min > 0.0 && self.t_min < self.t_max && self.t_max < 1.0,
            "flow times need 0 < t_min < t_max < 1"
        );
        for (name, v) in [
            ("--noise-scale", self.noise_scale),
            ("--q-grad-weight", self.q_grad_weight),
            ("--adaptive-loss-power", self.adaptive_loss_power),
            ("--target-entropy-scale", self.target_entropy_scale),
        ] {
            ensure!(
                v.is_finite() && v >= 0.0,
                "{name} must be a non-negative number, got {v}"
            );
        }
        ensure!(
            self.alpha_every >= 1 && self.alpha_every.is_multiple_of(self.policy_frequency),
            "--alpha-every must be a positive multiple of --policy-frequency ({}), got {}",
            self.policy_frequency,
            self.alpha_every
        );
        ensure!(
            (1..=8).contains(&self.critic_steps),
            "--critic-steps must be 1 to 8, got {}",
            self.critic_steps
        );
        ensure!(
            (0.0..=1.0).contains(&self.equal_time_fraction),
            "--equal-time-fraction must be in [0, 1], got {}",
            self.equal_time_fraction
        );
        ensure!(
            self.time_dim >= 2 && self.time_dim.is_multiple_of(2),
            "--time-dim must be even and at least 2"
        );
        Ok(())
    }
}

pub struct Flame {
    pub config: FlameConfig,
    algorithm: Algorithm,
    obs_dim: usize,
    act_dim: usize,
    /// The trunk `[s, z, f(r), f(t)] → u`.
    policy: Mlp,
    /// With `time_mlp`: the time MLPs `emb(r) → f(r)`, `emb(t) → f(t)` (else f = emb).
    time_nets: Vec<Mlp>,
    /// Every policy parameter in one buffer (the trunk, then the time MLPs), which the
    /// networks' parameters are views of: one Adam, EMA and checkpoint entry for all.
    params: Tensor,
    policy_adam: Adam,
    /// EMA of `params`: acts and computes TD targets.
    ema: Tensor,
    critic: TwinCritic,
    temperature: Temperature,
    target_entropy: f64,
    /// Fraction of the run's env steps done, for the policy learning-rate decay (one
    /// float64 element on the device, set before each update).
    progress: Tensor,
    device: Device,
}

/// Which policy parameters a sampler pass uses.
#[derive(Clone, Copy)]
enum Weights<'a> {
    /// The online parameters, differentiable (policy gradients).
    Online,
    /// A detached copy of all policy parameters (laid out as `Flame::params`, e.g. the
    /// EMA acting policy), no gradient.
    Copy(&'a Tensor),
}

/// The policy network as a velocity field for the entropy chain, conditioned on states.
struct PolicyField<'a> {
    flame: &'a Flame,
    params: &'a Tensor,
    obs: &'a Tensor,
}

impl VelocityField for PolicyField<'_> {
    fn velocity_with_tangent(
        &self,
        z: &Tensor,
        r: &Tensor,
        t: &Tensor,
        z_dot: &Tensor,
    ) -> (Tensor, Tensor) {
        let reps = z.size()[0] / self.obs.size()[0];
        let obs = self.obs.repeat([reps, 1]);
        // FLAME-R's network is the instantaneous velocity on the diagonal r = t.
        let r = match self.flame.algorithm {
            Algorithm::FlameM => r,
            Algorithm::FlameR => t,
        };
        // The chain moves z at fixed times: no time tangent.
        self.flame
            .velocity_with_tangent(self.params, &obs, z, r, t, z_dot, 0.0)
    }
}

impl Flame {
    /// A FLAME-M or FLAME-R agent (`algorithm` picks the flow; `config.nfe` its steps).
    pub fn new(
        config: FlameConfig,
        algorithm: Algorithm,
        obs_dim: usize,
        act_dim: usize,
        device: Device,
    ) -> Self {
        let mut sizes = vec![obs_dim + act_dim + 2 * config.time_dim];
        sizes.extend_from_slice(&config.policy_hidden);
        sizes.push(act_dim);
        let mish = |sizes| MlpShape {
            sizes,
            activation: Activation::Mish,
            members: 1,
        };
        let mut policy = Mlp::with_init(mish(sizes), config.init, device);
        let d = config.time_dim;
        let mut time_nets: Vec<Mlp> = (0..if config.time_mlp { 2 } else { 0 })
            .map(|_| Mlp::with_init(mish(vec![d, 2 * d, d]), config.init, device))
            .collect();
        let params = if time_nets.is_empty() {
            policy.params.shallow_clone()
        } else {
            let parts: Vec<&Tensor> = std::iter::once(&policy.params)
                .chain(time_nets.iter().map(|net| &net.params))
                .collect();
            let all = Tensor::cat(&parts, 0);
            let mut offset = 0;
            for net in std::iter::once(&mut policy).chain(time_nets.iter_mut()) {
                let n = net.shape.num_params();
                net.share_storage(all.narrow(0, offset, n));
                offset += n;
            }
            all
        };
        let policy_adam = Adam::new(AdamConfig::with_lr(config.lr), &params);
        let ema = params.copy();
        let critic = TwinCritic::new(
            obs_dim,
            act_dim,
            &config.critic_hidden,
            Activation::Mish,
            config.init,
            AdamConfig::with_lr(config.critic_learning_rate()),
            config.tau,
            device,
        );
        Self {
            temperature: Temperature::new(config.init_alpha, config.alpha_lr, device),
            target_entropy: -config.target_entropy_scale * act_dim as f64,
            config,
            algorithm,
            obs_dim,
            act_dim,
            policy,
            time_nets,
            params,
            policy_adam,
            ema,
            critic,
            progress: Tensor::zeros([1], (Kind::Double, device)),
            device,
        }
    }

    /// The policy's learning rate: linear from `lr` to `final_policy_lr`, over the run
    /// or over the official schedule's policy updates ([`LrDecay`]). Computed on the
    /// device (one float64 element) from the progress and the policy's Adam step count
    /// there, in the order of the host formula `lr + (final − lr)·clamp(fraction)`.
    fn policy_lr(&self) -> Tensor {
        let c = &self.config;
        let fraction = match c.lr_decay {
            LrDecay::Run => self.progress.shallow_clone(),
            LrDecay::Updates => {
                (self.policy_adam.steps_tensor().to_kind(Kind::Double) - LR_DECAY_BEGIN)
                    / LR_DECAY_SPAN
            }
        };
        fraction.clamp(0.0, 1.0) * (c.final_policy_lr - c.lr) + c.lr
    }

    /// The temperature T of the Q-weights softmax(Q/T), zero-dimensional on the device.
    fn weight_temperature(&self) -> Tensor {
        let alpha = self.temperature.alpha();
        match self.config.weight_temperature {
            WeightTemperature::Alpha => alpha,
            WeightTemperature::ExpAlpha => alpha.exp(),
        }
    }

    /// The trunk's slice of a flat vector of all policy parameters (`params`, the EMA).
    fn trunk_params(&self, params: &Tensor) -> Tensor {
        params.narrow(0, 0, self.policy.shape.num_params())
    }

    /// Time MLP `net`'s slice (0: r's, 1: t's) of a flat vector of all policy parameters.
    fn time_net_params(&self, params: &Tensor, net: usize) -> Tensor {
        let each = self.time_nets[net].shape.num_params();
        params.narrow(0, self.policy.shape.num_params() + net as i64 * each, each)
    }

    /// The trunk's features `f(time)` of flow times `[B, 1]`: the embedding, through
    /// time MLP `net` (0: r, 1: t) where the policy has them.
    fn time_features(&self, weights: Weights<'_>, net: usize, time: &Tensor) -> Tensor {
        let (d, embedding) = (self.config.time_dim, self.config.time_embedding);
        let features = time_features_tensor(time, d, embedding);
        match (self.time_nets.get(net), weights) {
            (None, _) => features,
            (Some(mlp), Weights::Online) => mlp.forward(&features),
            (Some(mlp), Weights::Copy(params)) => {
                mlp.forward_with(&self.time_net_params(params, net), &features)
            }
        }
    }

    /// `f(t)` and its derivative along `t_dot` `[B, 1]`, for the parameters `params`.
    fn time_features_with_tangent(
        &self,
        params: &Tensor,
        t: &Tensor,
        t_dot: &Tensor,
    ) -> (Tensor, Tensor) {
        let (d, embedding) = (self.config.time_dim, self.config.time_embedding);
        let features = time_features_tensor(t, d, embedding);
        let features_dot = time_features_derivative(t, t_dot, d, embedding);
        match self.time_nets.get(1) {
            None => (features, features_dot),
            Some(mlp) => {
                mlp.forward_with_tangent(&self.time_net_params(params, 1), &features, &features_dot)
            }
        }
    }

    /// `u(z, r, t | s)` with `weights`: the trunk on `[s, z, f(r), f(t)]`.
    fn velocity(
        &self,
        weights: Weights<'_>,
        obs: &Tensor,
        z: &Tensor,
        r: &Tensor,
        t: &Tensor,
    ) -> Tensor {
        let (f_r, f_t) = (
            self.time_features(weights, 0, r),
            self.time_features(weights, 1, t),
        );
        let input = Tensor::cat(&[obs, z, &f_r, &f_t], 1);
        match weights {
            Weights::Online => self.policy.forward(&input),
            Weights::Copy(params) => self.policy.forward_with(&self.trunk_params(params), &input),
        }
    }

    fn column(&self, n: i64, value: f64) -> Tensor {
        Tensor::full([n, 1], value, (Kind::Float, self.device))
    }

    /// The action `clip(z_N)` after the flow's steps from base sample `z`: FLAME-M one
    /// step `z − u(z, 0, 1)`, FLAME-R N Euler steps. The steps are [`flow_steps`],
    /// exactly what the exporter folds into the blob. With [`Weights::Online`] the result
    /// is differentiable in the policy's parameters (the Q-gradient term needs that).
    fn sample(&self, weights: Weights<'_>, obs: &Tensor, z: &Tensor) -> Tensor {
        let n = obs.size()[0];
        let step = 1.0 / self.config.nfe as f64;
        let mut z = z.shallow_clone();
        for (r, t) in flow_steps(self.algorithm, self.config.nfe) {
            let u = self.velocity(weights, obs, &z, &self.column(n, r), &self.column(n, t));
            z = &z - u * step;
        }
        z.clamp(-1.0, 1.0)
    }

    /// The Q-gradient term `−min Q̄(s, a_θ(s))` for base samples `z`, differentiable in
    /// the online policy's parameters through the whole sampler.
    fn q_gradient_term(&self, obs: &Tensor, z: &Tensor) -> Tensor {
        let a_theta = self.sample(Weights::Online, obs, z);
        -self.critic.target_min_q(obs, &a_theta).mean(Kind::Float)
    }

    fn base_noise(&self, n: i64) -> Tensor {
        Tensor::randn([n, self.act_dim as i64], (Kind::Float, self.device)) * self.config.noise_std
    }

    /// Per-state entropy estimates `−log π(a|s)` `[B]`, one chain sample per state of
    /// `obs`.
    fn state_entropies(&self, params: &Tensor, obs: &Tensor) -> Tensor {
        let field = PolicyField {
            flame: self,
            params,
            obs,
        };
        let z0 = self.base_noise(obs.size()[0]);
        let (_, log_prob) = chain_log_prob(
            &field,
            &z0,
            self.config.noise_std,
            self.config.entropy_steps,
            self.config.log_det,
        );
        -log_prob
    }

    /// Entropy estimate Ĥ = −mean log π from the flow chain on `obs` (a scalar tensor).
    fn entropy(&self, params: &Tensor, obs: &Tensor) -> Tensor {
        self.state_entropies(params, obs).mean(Kind::Float)
    }

    /// The Q-reweighted regression target for anchors `x_t` at times `(r, t)` (no grad),
    /// and the Q-weights' mean effective sample size. `s` is the anchor's interpolation
    /// time (`x_t = (1 − s)·a + s·ε`): `t` itself, or `1 − t` under
    /// [`TimeConvention::Official`].
    fn flow_target(
        &self,
        obs: &Tensor,
        x_t: &Tensor,
        (r, t, s): (&Tensor, &Tensor, &Tensor),
    ) -> (Tensor, Tensor) {
        let candidates = sample_candidates(x_t, s, self.config.candidates);
        self.flow_target_for(obs, x_t, (r, t, s), &candidates)
    }

    /// [`Flame::flow_target`] for given posterior candidates `[B, K, d]`: FLAME-R the
    /// weighted velocity `v̄`, FLAME-M the MeanFlow target `v̄ − (t − r)·du/dt`; with the
    /// weights' effective sample size `1/Σ_k w_k²` averaged over states (K for uniform
    /// weights, 1 when one candidate takes all: the collapse to an argmax shows here).
    fn flow_target_for(
        &self,
        obs: &Tensor,
        x_t: &Tensor,
        (r, t, s): (&Tensor, &Tensor, &Tensor),
        candidates: &Tensor,
    ) -> (Tensor, Tensor) {
        let (b, d) = x_t.size2().expect("x_t is [B, d]");
        let k = candidates.size()[1];
        let velocities = candidate_velocities(x_t, s, candidates);
        let obs_k = obs.repeat_interleave_self_int(k, 0, None);
        let q = self
            .critic
            .min_q_no_grad(&obs_k, &candidates.view([b * k, d]))
            .view([b, k]);
        let weights = (q / self.weight_temperature()).softmax(1, Kind::Float);
        let ess = weights
            .square()
            .sum_dim_intlist(1, false, Kind::Float)
            .reciprocal()
            .mean(Kind::Float);
        let v_bar = (weights.unsqueeze(-1) * velocities).sum_dim_intlist(1, false, Kind::Float);
        if self.algorithm == Algorithm::FlameR {
            return (v_bar, ess);
        }
        // d/dt u(x_t, r, t) along (ẋ, ṙ, ṫ) = (v̄, 0, 1): one JVP for all K candidates.
        let (_, du_dt) = self.velocity_with_tangent(&self.params, obs, x_t, r, t, &v_bar, 1.0);
        (v_bar - (t - r) * du_dt, ess)
    }

    /// `(u(z, r, t | s), d/dτ u(z + τ·ż, r, t + τ·ṫ | s))` for the parameters `params`,
    /// exact (forward mode): ṫ = 1 is MeanFlow's total derivative along `(ż, 0, 1)`,
    /// ṫ = 0 the Jacobian-vector product in z alone (the entropy chain).
    #[allow(clippy::too_many_arguments)]
    fn velocity_with_tangent(
        &self,
        params: &Tensor,
        obs: &Tensor,
        z: &Tensor,
        r: &Tensor,
        t: &Tensor,
        z_dot: &Tensor,
        t_dot: f64,
    ) -> (Tensor, Tensor) {
        let b = z.size()[0];
        let f_r = self.time_features(Weights::Copy(params), 0, r);
        let (f_t, f_t_dot) = self.time_features_with_tangent(params, t, &self.column(b, t_dot));
        let input = Tensor::cat(&[obs, z, &f_r, &f_t], 1);
        let zeros = |n: usize| Tensor::zeros([b, n as i64], (Kind::Float, self.device));
        let input_dot = Tensor::cat(
            &[
                &zeros(self.obs_dim),
                z_dot,
                &zeros(self.config.time_dim),
                &f_t_dot,
            ],
            1,
        );
        self.policy
            .forward_with_tangent(&self.trunk_params(params), &input, &input_dot)
    }

    /// The critics' TD target `c·r + γ(1 − term)·[min Q̄(s′, a′) + β·α·Ĥ(s′)]` `[B, 1]`.
    fn td_target(&self, batch: &Batch) -> Tensor {
        let c = &self.config;
        let b = batch.obs.size()[0];
        let alpha = self.temperature.alpha();
        tch::no_grad(|| {
            let (next_action, next_policy) = match c.td_action {
                TdAction::EmaSample => (
                    self.sample(
                        Weights::Copy(&self.ema),
                        &batch.next_obs,
                        &self.base_noise(b),
                    ),
                    &self.ema,
                ),
                TdAction::OnlineBest => (
                    self.best_of_particles(
                        Weights::Online,
                        &batch.next_obs,
                        self.explore_std(&alpha).as_ref(),
                    ),
                    &self.params,
                ),
            };
            let mut bootstrap = self.critic.target_min_q(&batch.next_obs, &next_action);
            if c.td_entropy != TdEntropy::Off {
                let entropies = self.state_entropies(next_policy, &batch.next_obs);
                bootstrap += entropies.unsqueeze(1) * (&alpha * c.td_entropy.sign());
            }
            &batch.rew * c.reward_scale + (1.0 - &batch.term) * c.gamma * bootstrap
        })
    }

    /// The exploration noise's standard deviation `α·noise_scale` for temperature
    /// `alpha`, or none when `noise_scale` is 0.
    fn explore_std(&self, alpha: &Tensor) -> Option<Tensor> {
        (self.config.noise_scale > 0.0).then(|| alpha * self.config.noise_scale)
    }

    /// Best of N_p samples by the online min Q, with `explore_std` Gaussian noise added
    /// (none: none), clipped to the action box: training-time acting, and the official TD
    /// target's next action ([`TdAction::OnlineBest`]).
    fn best_of_particles(
        &self,
        weights: Weights<'_>,
        obs: &Tensor,
        explore_std: Option<&Tensor>,
    ) -> Tensor {
        tch::no_grad(|| {
            let (n, p, d) = (obs.size()[0], self.config.particles, self.act_dim as i64);
            let obs_p = obs.repeat_interleave_self_int(p, 0, None);
            let actions = self.sample(weights, &obs_p, &self.base_noise(n * p));
            let q = self.critic.min_q_no_grad(&obs_p, &actions).view([n, p]);
            let best = q.argmax(1, true).view([n, 1, 1]).expand([n, 1, d], false);
            let chosen = actions.view([n, p, d]).gather(1, &best, false).view([n, d]);
            match explore_std {
                Some(std) => (&chosen + chosen.randn_like() * std).clamp(-1.0, 1.0),
                None => chosen,
            }
        })
    }

    /// The flow times `(r, t)` of a policy update, `[B, 1]` each, r ≤ t ([`TimePairs`];
    /// FLAME-R r = t; FLAME-M r = t with probability `equal_time_fraction`).
    fn flow_times(&self, b: i64) -> (Tensor, Tensor) {
        let c = &self.config;
        let opts = (Kind::Float, self.device);
        let uniform = || Tensor::rand([b, 1], opts) * (c.t_max - c.t_min) + c.t_min;
        let t = uniform();
        if self.algorithm == Algorithm::FlameR {
            return (t.shallow_clone(), t);
        }
        let (r, t) = match c.time_pairs {
            TimePairs::Nested => ((&t - c.t_min) * Tensor::rand([b, 1], opts) + c.t_min, t),
            TimePairs::Sorted => {
                let other = uniform();
                (t.minimum(&other), t.maximum(&other))
            }
        };
        let r = if c.equal_time_fraction > 0.0 {
            let equal = Tensor::rand([b, 1], opts).lt(c.equal_time_fraction);
            t.where_self(&equal, &r)
        } else {
            r
        };
        (r, t)
    }
}

impl Agent for Flame {
    fn act(&self, obs: &Tensor, explore: bool) -> Tensor {
        let obs = obs.to_device(self.device).to_kind(Kind::Float);
        let explore_std = explore
            .then(|| self.explore_std(&self.temperature.alpha()))
            .flatten();
        self.best_of_particles(Weights::Copy(&self.ema), &obs, explore_std.as_ref())
    }

    fn update(&mut self, batch: &Batch, update: u64) -> UpdateStats {
        let c = self.config.clone();
        let b = batch.obs.size()[0];

        // 1. Critic: `critic_steps` Adam steps towards the TD target.
        let y = self.td_target(batch);
        let (q_loss, q_mean) = self
            .critic
            .train_step(&batch.obs, &batch.act, &y, c.critic_steps);
        let mut stats = vec![
            ("q_loss", q_loss),
            ("q_mean", q_mean),
            ("alpha", self.temperature.alpha()),
        ];
        let (policy_step, alpha_step) = self.update_branches(update);
        if !policy_step {
            return stats;
        }

        // 2. Policy: Q-reweighted flow matching plus the Q-gradient term.
        let (r, t) = self.flow_times(b);
        let s = match (self.algorithm, c.time_convention) {
            (Algorithm::FlameM, TimeConvention::Official) => 1.0 - &t,
            _ => t.shallow_clone(),
        };
        let noise = Tensor::randn_like(&batch.act);
        let x_t = (1.0 - &s) * &batch.act + &s * noise;
        let (target, ess) = tch::no_grad(|| self.flow_target(&batch.obs, &x_t, (&r, &t, &s)));
        let u = self.velocity(Weights::Online, &batch.obs, &x_t, &r, &t);
        // ‖u − target‖² per state; logged as `flow_loss` whatever the reduction, so runs
        // compare.
        let squared_norm = (u - target).square().sum_dim_intlist(1, false, Kind::Float);
        let per_sample = match c.flow_loss_reduction {
            FlowLossReduction::Sum => squared_norm.shallow_clone(),
            FlowLossReduction::Mean => &squared_norm / self.act_dim as f64,
        };
        let adaptive = (per_sample.detach() + 1e-3).pow_tensor_scalar(-c.adaptive_loss_power);
        let flow_term = (adaptive * &per_sample).mean(Kind::Float);
        // λ·(−min Q̄(s, a_θ(s))) through the sampler (skipped when λ = 0).
        let q_term =
            (c.q_grad_weight != 0.0).then(|| self.q_gradient_term(&batch.obs, &self.base_noise(b)));
        let loss = match &q_term {
            Some(q) => flow_term + c.q_grad_weight * q,
            None => flow_term,
        };
        self.policy_adam.set_lr(&self.policy_lr());
        let nets: Vec<&Mlp> = std::iter::once(&self.policy)
            .chain(&self.time_nets)
            .collect();
        let grad = Mlp::joint_grad(&nets, &loss);
        self.policy_adam.step(&self.params, &grad);
        tch::no_grad(|| {
            self.ema
                .copy_(&(&self.ema * (1.0 - c.tau) + &self.params * c.tau));
        });
        self.critic.polyak();
        stats.extend([
            ("flow_loss", squared_norm.detach().mean(Kind::Float)),
            ("q_weight_ess", ess),
        ]);
        stats.extend(q_term.map(|q| ("q_pi", -q.detach())));

        // 3. Temperature from the entropy estimate, every `alpha_every` updates (the
        // estimate is the costliest part of a policy update: it is made only then).
        if alpha_step {
            let states = batch.obs.narrow(0, 0, c.entropy_states.min(b));
            let entropy = tch::no_grad(|| self.entropy(&self.params, &states));
            if c.autotune {
                self.temperature
                    .step(&(entropy.to_kind(Kind::Double) - self.target_entropy));
            }
            stats.push(("entropy", entropy));
        }
        stats
    }

    /// The deployed policy: one sample from z = 0 (what the MCU computes
    /// deterministically), no critic.
    fn act_deployed(&self, obs: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let obs = obs.to_device(self.device).to_kind(Kind::Float);
            let z = Tensor::zeros(
                [obs.size()[0], self.act_dim as i64],
                (Kind::Float, self.device),
            );
            self.sample(Weights::Copy(&self.ema), &obs, &z)
        })
    }

    fn flops_per_update(&self, batch: usize) -> f64 {
        let c = &self.config;
        let policy = |rows: usize| self.policy.shape.matmul_flops(rows);
        let critic = |rows: usize| self.critic.net.shape.matmul_flops(rows);
        let nfe = c.nfe as f64;
        // Every update: the TD target's next action (one EMA sample, or N_p online samples
        // ranked by the online critics), the target critics, the critic step.
        let next_action = match c.td_action {
            TdAction::EmaSample => nfe * policy(batch),
            TdAction::OnlineBest => {
                let rows = batch * c.particles as usize;
                nfe * policy(rows) + critic(rows)
            }
        };
        let every = next_action + critic(batch) + 3.0 * critic(batch);
        // Every policy_frequency updates: K candidates through the critics, the MeanFlow
        // JVP (value + tangent), the policy's forward + backward and the Q-gradient term
        // through the sampler; every alpha_every updates the entropy chain (d tangents +
        // one value pass per step, each with its tangent).
        let k = c.candidates as usize;
        let jvp = match self.algorithm {
            Algorithm::FlameM => 2.0 * policy(batch),
            Algorithm::FlameR => 0.0,
        };
        let q_grad = if c.q_grad_weight != 0.0 {
            3.0 * nfe * policy(batch) + 2.0 * critic(batch)
        } else {
            0.0
        };
        let chain = |states: usize| {
            c.entropy_steps as f64 * 2.0 * (policy(self.act_dim * states) + policy(states))
        };
        let entropy = chain((c.entropy_states as usize).min(batch));
        // The TD target's entropy term: a chain on every next state, every update.
        let td_entropy = if c.td_entropy == TdEntropy::Off {
            0.0
        } else {
            chain(batch)
        };
        let delayed = critic(batch * k) + jvp + 3.0 * policy(batch) + q_grad;
        every + td_entropy + delayed / c.policy_frequency as f64 + entropy / c.alpha_every as f64
    }

    /// The policy step (with the EMA and target updates), and the temperature step
    /// after it.
    fn update_branches(&self, update: u64) -> (bool, bool) {
        let c = &self.config;
        let policy_step = update.is_multiple_of(c.policy_frequency);
        (
            policy_step,
            policy_step && update.is_multiple_of(c.alpha_every),
        )
    }

    fn set_progress(&mut self, fraction: f64) {
        let _ = self.progress.fill_(fraction);
    }

    fn alpha(&self) -> f64 {
        self.temperature.value()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = self.critic.state("critic");
        let buffers = [("params", &self.params), ("ema", &self.ema)];
        out.extend(checkpoint_entries("policy", &buffers, &self.policy_adam));
        out.extend(self.temperature.entries());
        out
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.critic.load_state("critic", state)?;
        let buffers: &mut [(&str, &mut Tensor)] =
            &mut [("params", &mut self.params), ("ema", &mut self.ema)];
        restore_entries("policy", buffers, &mut self.policy_adam, state)?;
        self.temperature.restore(state)
    }

    /// The EMA (acting) policy in `policy_net::FlowPolicyNet`'s layout, which
    /// `trainer export` loads: `hidden{i}.{weight,bias}`, `output.{weight,bias}` and the
    /// time MLPs' `time_{r,t}.{0,1}.{weight,bias}`, weights `[out, in]`.
    fn policy_tensors(&self) -> Vec<(String, Tensor)> {
        let named = |name: String, (w, b): (Tensor, Tensor)| {
            [
                (format!("{name}.weight"), w.tr().contiguous()),
                (format!("{name}.bias"), b.copy()),
            ]
        };
        let layers = self.policy.layer_views(&self.trunk_params(&self.ema));
        let last = layers.len() - 1;
        let trunk = layers.into_iter().enumerate().flat_map(|(i, layer)| {
            let name = if i == last {
                "output".to_string()
            } else {
                format!("hidden{i}")
            };
            named(name, layer)
        });
        let time = self.time_nets.iter().enumerate().flat_map(|(net, mlp)| {
            let prefix = ["time_r", "time_t"][net];
            mlp.layer_views(&self.time_net_params(&self.ema, net))
                .into_iter()
                .enumerate()
                .flat_map(move |(k, layer)| named(format!("{prefix}.{k}"), layer))
        });
        trunk.chain(time).collect()
    }

    /// FLAME, like SAC here, consumes raw observations (identity normalizer).
    fn normalizer(&self) -> Normalizer {
        Normalizer {
            mean: vec![0.0; self.obs_dim],
            std: vec![1.0; self.obs_dim],
        }
    }
}

impl FlameConfig {
    /// `algorithm`'s defaults with networks and samplers small enough for tests: two
    /// hidden layers of 32, K = 16, N_p = 8, at most 5 flow and entropy-chain steps, and
    /// the embedding straight into the trunk (tests add the time MLPs where they test
    /// them).
    pub fn small_for_tests(algorithm: Algorithm) -> Self {
        let config = FlameConfig::for_algorithm(algorithm);
        FlameConfig {
            candidates: 16,
            particles: 8,
            entropy_states: 8,
            policy_hidden: vec![32, 32],
            critic_hidden: vec![32, 32],
            time_dim: 8,
            nfe: config.nfe.min(5),
            entropy_steps: config.entropy_steps.min(5),
            time_mlp: false,
            ..config
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_net::FlowPolicyNet;
    use sim::float_policy::PolicyShape;
    use tch::nn;

    fn small_with(algorithm: Algorithm, obs_dim: usize, act_dim: usize) -> Flame {
        tch::manual_seed(0);
        let config = FlameConfig::small_for_tests(algorithm);
        Flame::new(config, algorithm, obs_dim, act_dim, Device::Cpu)
    }

    fn small(obs_dim: usize, act_dim: usize) -> Flame {
        small_with(Algorithm::FlameM, obs_dim, act_dim)
    }

    /// [`small`] with the official network's time MLPs.
    fn small_with_time_mlp(obs_dim: usize, act_dim: usize) -> Flame {
        let small = small(obs_dim, act_dim);
        Flame::new(
            FlameConfig {
                time_mlp: true,
                ..small.config
            },
            Algorithm::FlameM,
            obs_dim,
            act_dim,
            Device::Cpu,
        )
    }

    fn batch(b: i64, obs_dim: i64, act_dim: i64) -> Batch {
        let opts = (Kind::Float, Device::Cpu);
        Batch {
            obs: Tensor::randn([b, obs_dim], opts),
            act: Tensor::rand([b, act_dim], opts) * 2.0 - 1.0,
            rew: Tensor::randn([b, 1], opts),
            next_obs: Tensor::randn([b, obs_dim], opts),
            term: Tensor::zeros([b, 1], opts),
        }
    }

    /// The TD target's entropy term shifts each next state's bootstrap by β·γ·α·Ĥ(s′):
    /// on many copies of one state the mean shift matches the mean entropy estimate, with
    /// opposite signs for the bonus and the penalty. (The comparison is of means over
    /// 2048 copies, so it holds whatever other tests draw from torch's generator.)
    #[test]
    fn td_entropy_term_adds_or_subtracts_the_next_state_entropy() {
        let mut agent = small(5, 3);
        agent.temperature = Temperature::new(0.5, agent.config.alpha_lr, Device::Cpu);
        let n = 2048;
        let opts = (Kind::Float, Device::Cpu);
        let state = Tensor::randn([1, 5], opts);
        let copies = Batch {
            next_obs: state.repeat([n, 1]),
            obs: state.repeat([n, 1]),
            ..batch(n, 5, 3)
        };
        let mean_target = |agent: &mut Flame, term: TdEntropy| {
            agent.config.td_entropy = term;
            agent.td_target(&copies).mean(Kind::Float).double_value(&[])
        };
        let off = mean_target(&mut agent, TdEntropy::Off);
        let bonus = mean_target(&mut agent, TdEntropy::Bonus);
        let penalty = mean_target(&mut agent, TdEntropy::Penalty);
        let entropy = tch::no_grad(|| agent.entropy(&agent.policy.params, &copies.next_obs))
            .double_value(&[]);
        let expected = agent.config.gamma * 0.5 * entropy;
        assert!(expected.abs() > 0.5, "a visible shift: {expected}");
        assert!(
            (bonus - off - expected).abs() < 0.1,
            "{off} {bonus} {expected}"
        );
        assert!(
            (penalty - off + expected).abs() < 0.1,
            "{off} {penalty} {expected}"
        );
    }

    /// The weighted single target equals the weighted mean of the K per-candidate
    /// MeanFlow targets (each with its own JVP), so `‖u − Σ w_k tgt_k‖²` and
    /// `Σ w_k ‖u − tgt_k‖²` have the same gradient (Σ w_k = 1).
    #[test]
    fn single_jvp_target_equals_the_weighted_per_candidate_targets() {
        single_jvp_target_equals_per_candidate_targets(&small(5, 3));
        single_jvp_target_equals_per_candidate_targets(&small_with_time_mlp(5, 3));
    }

    fn single_jvp_target_equals_per_candidate_targets(agent: &Flame) {
        let (b, d) = (4i64, 3i64);
        let opts = (Kind::Float, Device::Cpu);
        let obs = Tensor::randn([b, 5], opts);
        let x_t = Tensor::randn([b, d], opts) * 0.5;
        let t = Tensor::rand([b, 1], opts) * 0.9 + 0.05;
        let r = &t * Tensor::rand([b, 1], opts);
        // Tests run in parallel on torch's one global generator: draw the candidates once
        // and give both computations the same ones.
        let k = agent.config.candidates;
        let candidates = sample_candidates(&x_t, &t, k);
        let (single, _) =
            tch::no_grad(|| agent.flow_target_for(&obs, &x_t, (&r, &t, &t), &candidates));
        let velocities = candidate_velocities(&x_t, &t, &candidates);
        let q = agent
            .critic
            .min_q(
                &obs.repeat_interleave_self_int(k, 0, None),
                &candidates.view([b * k, d]),
            )
            .view([b, k]);
        let w = (q / agent.weight_temperature())
            .softmax(1, Kind::Float)
            .detach();
        let mut weighted = Tensor::zeros([b, d], opts);
        for j in 0..k {
            let v = velocities.select(1, j);
            let (_, du) = agent.velocity_with_tangent(&agent.params, &obs, &x_t, &r, &t, &v, 1.0);
            let target = &v - (&t - &r) * du;
            weighted += w.select(1, j).unsqueeze(1) * target;
        }
        let err = (single - weighted).abs().max().double_value(&[]);
        assert!(
            err < 1e-4,
            "single vs per-candidate targets differ by {err}"
        );
    }

    /// The MeanFlow tangent `d/dτ u(z + τ·ż, r, t + τ)` equals a central difference of
    /// the velocity, with and without the time MLPs (whose tangent is carried through
    /// their layers).
    #[test]
    fn time_tangent_matches_a_finite_difference() {
        for agent in [small(5, 3), small_with_time_mlp(5, 3)] {
            let opts = (Kind::Float, Device::Cpu);
            let (b, h) = (6i64, 1e-2);
            let obs = Tensor::randn([b, 5], opts);
            let z = Tensor::randn([b, 3], opts) * 0.5;
            let z_dot = Tensor::randn([b, 3], opts);
            let t = Tensor::rand([b, 1], opts) * 0.8 + 0.1;
            let r = &t * Tensor::rand([b, 1], opts);
            let params = Weights::Copy(&agent.params);
            let (tangent, difference) = tch::no_grad(|| {
                let (_, tangent) =
                    agent.velocity_with_tangent(&agent.params, &obs, &z, &r, &t, &z_dot, 1.0);
                let at = |tau: f64| {
                    let u = agent.velocity(params, &obs, &(&z + &z_dot * tau), &r, &(&t + tau));
                    u.to_kind(Kind::Double)
                };
                (tangent.to_kind(Kind::Double), (at(h) - at(-h)) / (2.0 * h))
            });
            let err = (tangent - &difference).abs().max().double_value(&[]);
            let scale = difference.abs().max().double_value(&[]);
            assert!(
                err < 1e-2 * scale.max(1.0),
                "time MLP {}: tangent off by {err} (scale {scale})",
                agent.config.time_mlp
            );
        }
    }

    /// With the time MLPs, a policy update moves the trunk and both time MLPs (one
    /// buffer, one Adam), and the checkpoint holds them all.
    #[test]
    fn time_mlps_train_and_checkpoint_with_the_trunk() {
        let mut agent = small_with_time_mlp(6, 2);
        let before = agent.params.copy();
        for update in 0..2 {
            agent.update(&batch(32, 6, 2), update);
        }
        let trunk = agent.policy.shape.num_params();
        let each = agent.time_nets[0].shape.num_params();
        assert_eq!(agent.params.size()[0], trunk + 2 * each);
        let moved = |from: i64, n: i64| {
            let delta = agent.params.narrow(0, from, n) - before.narrow(0, from, n);
            delta.abs().max().double_value(&[]) > 0.0
        };
        assert!(moved(0, trunk) && moved(trunk, each) && moved(trunk + each, each));
        // The networks' own parameters are views of the shared buffer.
        assert!(agent.time_nets[1]
            .params
            .equal(&agent.params.narrow(0, trunk + each, each)));
        let state: HashMap<String, Tensor> = agent.state().into_iter().collect();
        let mut other = small_with_time_mlp(6, 2);
        other.load_state(&state).unwrap();
        assert!(other.time_nets[0].params.equal(&agent.time_nets[0].params));
    }

    #[test]
    fn updates_are_finite_and_move_policy_critic_and_alpha() {
        for (algorithm, convention) in [
            (Algorithm::FlameM, TimeConvention::Consistent),
            (Algorithm::FlameM, TimeConvention::Official),
            (Algorithm::FlameR, TimeConvention::Consistent),
        ] {
            updates_move_policy_critic_and_alpha(algorithm, convention);
        }
    }

    fn updates_move_policy_critic_and_alpha(algorithm: Algorithm, convention: TimeConvention) {
        let mut agent = small_with(algorithm, 6, 2);
        agent.config.time_convention = convention;
        let before = agent.policy.params.copy();
        let alpha = agent.alpha();
        for update in 0..4 {
            let stats = agent.update(&batch(32, 6, 2), update);
            assert!(
                stats.iter().all(|(_, v)| v.double_value(&[]).is_finite()),
                "{stats:?}"
            );
        }
        assert!(
            (agent.policy.params.copy() - before)
                .abs()
                .max()
                .double_value(&[])
                > 0.0
        );
        assert_ne!(agent.alpha(), alpha);
        let a = agent.act(&Tensor::randn([5, 6], (Kind::Float, Device::Cpu)), true);
        assert_eq!(a.size(), [5, 2]);
        assert!(a.abs().max().double_value(&[]) <= 1.0);
    }

    /// A CUDA graph replays an update on the storage it recorded: every tensor the update
    /// changes must change in place, never be rebound to a new tensor. Holds it for the
    /// policy, its EMA, both Adams (moments, step count, learning rate's inputs), the
    /// critics and the progress, over every update variant (critic only, with the
    /// policy, with α).
    #[test]
    fn updates_change_the_state_in_place() {
        let mut agent = small(6, 2);
        agent.config.alpha_every = 2;
        let storage = |agent: &Flame| {
            [
                &agent.params,
                &agent.ema,
                &agent.policy_adam.m,
                &agent.policy_adam.v,
                agent.policy_adam.steps_tensor(),
                &agent.critic.net.params,
                &agent.critic.adam.m,
                &agent.critic.adam.v,
                agent.critic.adam.steps_tensor(),
                &agent.progress,
            ]
            .map(|t| t.data_ptr() as usize)
        };
        let before = storage(&agent);
        let values = agent.params.copy();
        for update in 0..4 {
            agent.set_progress(update as f64 / 4.0);
            agent.update(&batch(32, 6, 2), update);
        }
        assert_eq!(storage(&agent), before);
        assert!(!agent.params.equal(&values), "the updates moved the policy");
        assert_eq!(
            agent.policy_adam.steps(),
            2,
            "policy steps at updates 0 and 2"
        );
    }

    #[test]
    fn checkpoint_state_round_trips() {
        let mut agent = small(4, 2);
        agent.update(&batch(16, 4, 2), 0);
        let state: HashMap<String, Tensor> = agent
            .state()
            .into_iter()
            .map(|(k, v)| (k, v.copy()))
            .collect();
        let mut other = small(4, 2);
        other.load_state(&state).unwrap();
        // Every entry restored bit for bit (comparing actions instead would race other
        // tests for torch's global generator).
        for (name, restored) in other.state() {
            let saved = &state[&name];
            assert!(
                saved.equal(&restored),
                "{name} differs after the round trip"
            );
        }
        assert_eq!(agent.alpha(), other.alpha());
    }

    /// `policy_tensors` has the layout of `FlowPolicyNet`, which `trainer init` saves:
    /// runs from either load the same way.
    #[test]
    fn exported_tensors_load_into_the_export_network() {
        exported_tensors_load_into_the_export_network_of(&small(5, 3));
        exported_tensors_load_into_the_export_network_of(&small_with_time_mlp(5, 3));
    }

    fn exported_tensors_load_into_the_export_network_of(agent: &Flame) {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let net = FlowPolicyNet::new(
            &vs.root(),
            PolicyShape {
                obs_dim: 5,
                act_dim: 3,
                hidden: vec![32, 32],
                time_dim: 8,
                time_embedding: agent.config.time_embedding,
                time_mlp: agent.config.time_mlp,
            },
        );
        let path =
            std::env::temp_dir().join(format!("flame-m-export-{}.safetensors", std::process::id()));
        let tensors = agent.policy_tensors();
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        Tensor::write_safetensors(&named, &path).unwrap();
        vs.load(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let opts = (Kind::Float, Device::Cpu);
        let (obs, z) = (Tensor::randn([4, 5], opts), Tensor::randn([4, 3], opts));
        let (r, t) = (agent.column(4, 0.0), agent.column(4, 1.0));
        let expect = agent.velocity(Weights::Copy(&agent.ema), &obs, &z, &r, &t);
        let got = net.forward(&obs, &z, &r, &t);
        assert!((got - expect).abs().max().double_value(&[]) < 1e-5);
    }

    /// The Q-gradient term reaches the policy's parameters through the sampler (one
    /// step and N steps): a detached sampler pass here once made `--q-grad-weight` a
    /// silent no-op.
    #[test]
    fn q_gradient_term_moves_the_policy_parameters() {
        for algorithm in [Algorithm::FlameM, Algorithm::FlameR] {
            let agent = small_with(algorithm, 5, 3);
            let opts = (Kind::Float, Device::Cpu);
            let obs = Tensor::randn([16, 5], opts);
            let z = Tensor::randn([16, 3], opts) * 0.5;
            let grad = agent.policy.grad(&agent.q_gradient_term(&obs, &z));
            let norm = grad.abs().sum(Kind::Float).double_value(&[]);
            assert!(norm > 0.0, "{algorithm:?}: Q term gradient is zero");
        }
    }

    /// A config.json written before the official behaviours became flags reads as what
    /// those runs did: `trainer results` and `--resume` see their real settings.
    #[test]
    fn configs_without_the_new_fields_keep_the_old_behaviour() {
        let mut json = serde_json::to_value(FlameConfig::for_algorithm(Algorithm::FlameM)).unwrap();
        let fields = [
            "alpha_every",
            "weight_temperature",
            "td_action",
            "flow_loss_reduction",
            "critic_steps",
            "time_pairs",
            "equal_time_fraction",
            "lr_decay",
            "time_embedding",
            "time_convention",
        ];
        for field in fields {
            assert!(
                json.as_object_mut().unwrap().remove(field).is_some(),
                "{field}"
            );
        }
        let old: FlameConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old.alpha_every, 2);
        assert_eq!(old.weight_temperature, WeightTemperature::Alpha);
        assert_eq!(old.td_action, TdAction::EmaSample);
        assert_eq!(old.flow_loss_reduction, FlowLossReduction::Sum);
        assert_eq!(old.critic_steps, 1);
        assert_eq!(old.time_pairs, TimePairs::Nested);
        assert_eq!(old.equal_time_fraction, 0.0);
        assert_eq!(old.lr_decay, LrDecay::Run);
        assert_eq!(old.time_embedding, TimeEmbedding::Raw);
        assert_eq!(old.time_convention, TimeConvention::Consistent);
    }

    /// Flow times: r ≤ t inside [t_min, t_max] for both pair rules, r = t where asked
    /// (FLAME-R always).
    #[test]
    fn flow_time_pairs_are_ordered_and_in_range() {
        for (pairs, equal) in [
            (TimePairs::Nested, 0.0),
            (TimePairs::Sorted, 0.0),
            (TimePairs::Sorted, 1.0),
        ] {
            let mut agent = small(3, 2);
            agent.config.time_pairs = pairs;
            agent.config.equal_time_fraction = equal;
            let (r, t) = agent.flow_times(4096);
            let (c, tol) = (&agent.config, 1e-6);
            assert!(t.max().double_value(&[]) <= c.t_max + tol);
            assert!(r.min().double_value(&[]) >= c.t_min - tol);
            assert!((&t - &r).min().double_value(&[]) >= 0.0, "{pairs:?}");
            let gap = (&t - &r).max().double_value(&[]);
            if equal == 1.0 {
                assert_eq!(gap, 0.0);
            } else {
                assert!(gap > 0.5, "{pairs:?}: pairs span too little ({gap})");
            }
        }
        let (r, t) = small_with(Algorithm::FlameR, 3, 2).flow_times(64);
        assert!(r.equal(&t));
    }

    /// The official schedule holds `lr` for 25k policy updates, then falls linearly to
    /// `final_policy_lr` over 50k, whatever the run's length.
    #[test]
    fn official_learning_rate_schedule_counts_policy_updates() {
        let mut agent = small(3, 2);
        agent.config.lr_decay = LrDecay::Updates;
        agent.set_progress(0.9);
        let (lr, end) = (agent.config.lr, agent.config.final_policy_lr);
        for (steps, expect) in [
            (0, lr),
            (25_000, lr),
            (50_000, (lr + end) / 2.0),
            (75_000, end),
            (200_000, end),
        ] {
            agent.policy_adam.set_steps(steps);
            let got = agent.policy_lr().double_value(&[0]);
            assert!((got - expect).abs() < 1e-12, "{steps}");
        }
        agent.config.lr_decay = LrDecay::Run;
        let got = agent.policy_lr().double_value(&[0]);
        // Bit for bit the host formula the schedule had before it moved to the device.
        assert_eq!(got, lr + (end - lr) * 0.9f64.clamp(0.0, 1.0));
    }

    /// α (and the entropy estimate behind it) moves only every `alpha_every` updates;
    /// the Q-weights' temperature is e^α where asked.
    #[test]
    fn alpha_steps_every_alpha_every_updates() {
        let mut agent = small(6, 2);
        agent.config.alpha_every = 4;
        assert_eq!(agent.config.policy_frequency, 2);
        let mut alphas = vec![agent.alpha()];
        for update in 0..6 {
            let stats = agent.update(&batch(32, 6, 2), update);
            let logged = stats.iter().any(|(k, _)| *k == "entropy");
            assert_eq!(logged, update % 4 == 0, "update {update}");
            let ess = stats
                .iter()
                .find(|(k, _)| *k == "q_weight_ess")
                .map(|s| s.1.double_value(&[]));
            if update % 2 == 0 {
                let k = agent.config.candidates as f64;
                assert!(
                    ess.is_some_and(|e| (1.0..=k + 1e-3).contains(&e)),
                    "{ess:?}"
                );
            }
            alphas.push(agent.alpha());
        }
        let moved: Vec<bool> = alphas.windows(2).map(|w| w[0] != w[1]).collect();
        assert_eq!(moved, [true, false, false, false, true, false]);
        // Against torch's e^α on the device's α: `agent.alpha()` is libm's exp of log α,
        // and libm's and torch's exp can differ in the last bit (a flaky failure:
        // 2.691356131735965 against 2.6913561317359656).
        let alpha = agent.temperature.alpha();
        agent.config.weight_temperature = WeightTemperature::Alpha;
        assert_eq!(
            agent.weight_temperature().double_value(&[]),
            alpha.double_value(&[])
        );
        agent.config.weight_temperature = WeightTemperature::ExpAlpha;
        assert_eq!(
            agent.weight_temperature().double_value(&[]),
            alpha.exp().double_value(&[])
        );
    }

    /// A separate critic learning rate reaches the critics' Adam, survives config.json,
    /// and is absent from a default configuration's JSON (so default runs keep the setup
    /// string of runs written before the option existed).
    #[test]
    fn critic_learning_rate_is_optional_in_the_config() {
        let default = FlameConfig::for_algorithm(Algorithm::FlameM);
        let json = serde_json::to_value(&default).unwrap();
        assert!(json.get("critic_lr").is_none(), "{json}");
        let separate = FlameConfig {
            critic_lr: Some(1e-3),
            ..default.clone()
        };
        let back: FlameConfig =
            serde_json::from_value(serde_json::to_value(&separate).unwrap()).unwrap();
        assert_eq!(back, separate);
        let agent = Flame::new(separate, Algorithm::FlameM, 3, 1, Device::Cpu);
        assert_eq!(agent.critic.adam.config.lr, 1e-3);
        assert_eq!(agent.policy_adam.config.lr, default.lr);
    }

    /// The agent's own sampler (training, TD targets, evaluation) computes exactly what
    /// the exported policy computes: FLAME-M's one step and FLAME-R's N Euler steps,
    /// through the checkpoint file as training writes it (tch's safetensors writer), read
    /// back as `trainer export` and `tools hil --float-run` read it (`sim`, no tch), with
    /// the folded time biases of `flow_steps`.
    #[test]
    fn deployed_action_equals_the_exported_float_policy() {
        use sim::float_policy::{read_checkpoint, FloatPolicy, PolicyMeta, ProvenanceInfo};
        for algorithm in [Algorithm::FlameM, Algorithm::FlameR] {
            let (obs_dim, act_dim) = (5usize, 3usize);
            let agent = small_with(algorithm, obs_dim, act_dim);
            let shape = PolicyShape {
                obs_dim,
                act_dim,
                hidden: vec![32, 32],
                time_dim: 8,
                time_embedding: agent.config.time_embedding,
                time_mlp: false,
            };
            let path = std::env::temp_dir().join(format!(
                "flame-deployed-{}-{:?}.safetensors",
                std::process::id(),
                algorithm
            ));
            Tensor::write_safetensors(&agent.policy_tensors(), &path).unwrap();
            let checkpoint = read_checkpoint(&path).unwrap();
            let _ = std::fs::remove_file(&path);
            let meta = PolicyMeta {
                env_id: "Test-v0".into(),
                algorithm,
                action_low: vec![-1.0; act_dim],
                action_high: vec![1.0; act_dim],
                obs_mean: vec![0.0; obs_dim],
                obs_std: vec![1.0; obs_dim],
                obs_clip: 1e6,
                noise_std: 0.5,
                provenance: ProvenanceInfo::default(),
            };
            let float =
                FloatPolicy::from_checkpoint(meta, &shape, agent.config.nfe, &checkpoint).unwrap();
            assert_eq!(float.nfe(), agent.config.nfe);
            let obs: Vec<f32> = (0..4 * obs_dim)
                .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3)
                .collect();
            let got = agent.act_deployed(&Tensor::from_slice(&obs).view([4, obs_dim as i64]));
            let got = Vec::<f32>::try_from(got.contiguous().view([-1])).unwrap();
            for (row, o) in obs.chunks(obs_dim).enumerate() {
                let expect = float.act(o, &vec![0.0; act_dim]);
                for c in 0..act_dim {
                    let g = got[row * act_dim + c];
                    assert!(
                        (g - expect[c]).abs() < 1e-4,
                        "{algorithm:?} row {row} dim {c}: agent {g} vs exported {}",
                        expect[c]
                    );
                }
            }
        }
    }
}
