//! Twin Q networks with Polyak-averaged targets, shared by every agent.
//!
//! Q1 and Q2 are one two-member ensemble [`Mlp`] on `[obs, action]` (one batched matmul
//! per layer evaluates both), with one Adam over both (CleanRL optimizes
//! `list(qf1) + list(qf2)` with one Adam; per-parameter Adam makes that identical to two
//! separate ones). SAC uses 256×256 ReLU (CleanRL); FLAME 3×256 mish.

use std::collections::HashMap;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::mlp::{
    checkpoint_entries, restore_entries, Activation, Adam, AdamConfig, Init, Mlp, MlpShape,
    ParamGrad,
};

/// Rows per block of [`TwinCritic::min_q_no_grad`] on the CPU: `[2, 512, 256]` f32
/// activations are 1 MiB, within the L2 cache. `trainer bench --algo flame-m` here: 512
/// rows 9.5 updates/s, 256 and 128 rows 8.6, one block 6.5; a pass timed alone lost most
/// of the gain at 1024 rows.
const CACHE_BLOCK_ROWS: i64 = 512;

/// Twin critics `Q1, Q2 (s, a)` and their targets `Q̄1, Q̄2`.
pub struct TwinCritic {
    pub net: Mlp,
    /// Polyak-averaged copy of `net.params` (no grad); private because `target_layers`
    /// are views of it, so it may only change in place.
    target: Tensor,
    pub adam: Adam,
    /// Per-layer views of `target` (made once: `target` is only ever updated in place).
    target_layers: Vec<(Tensor, Tensor)>,
    /// Where [`TwinCritic::train_step`] writes the critic loss's gradient.
    grad: ParamGrad,
    /// Polyak rate: `Q̄ ← (1 − τ)·Q̄ + τ·Q`.
    pub tau: f64,
}

impl TwinCritic {
    /// Twin critics on `[s, a]` with `hidden` widths, both initialized by `init`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        obs_dim: usize,
        act_dim: usize,
        hidden: &[usize],
        activation: Activation,
        init: Init,
        adam: AdamConfig,
        tau: f64,
        device: Device,
    ) -> Self {
        let mut sizes = vec![obs_dim + act_dim];
        sizes.extend_from_slice(hidden);
        sizes.push(1);
        let net = Mlp::with_init(
            MlpShape {
                sizes,
                activation,
                members: 2,
            },
            init,
            device,
        );
        let target = net.detached_copy();
        let adam = Adam::new(adam, &net.params);
        Self {
            target_layers: net.layer_views(&target),
            grad: net.param_grad(),
            net,
            target,
            adam,
            tau,
        }
    }

    /// `[Q1; Q2](s, a)` as `[2, B, 1]`, differentiable in the critic and the inputs.
    pub fn q(&self, obs: &Tensor, act: &Tensor) -> Tensor {
        self.net.forward(&Tensor::cat(&[obs, act], 1))
    }

    /// `min(Q1, Q2)(s, a)` as `[B, 1]` (differentiable; actor losses go through it).
    pub fn min_q(&self, obs: &Tensor, act: &Tensor) -> Tensor {
        let q = self.q(obs, act);
        q.get(0).minimum(&q.get(1))
    }

    /// `min(Q1, Q2)(s, a)` as `[B, 1]` without grad, for many rows (FLAME's K·B
    /// candidates, N_p·B particles). On the CPU the rows go through in blocks of
    /// [`CACHE_BLOCK_ROWS`] so each layer's activations stay in cache between the matmul
    /// and the activation: one pass over 25,600 rows of the 3×256 mish twin critic
    /// drops from ~260 to ~190 ms on the 2-core workstation (timed in the venv's torch
    /// 2.11, the same libtorch). On CUDA, one block (the
    /// GPU is launch-bound at these sizes).
    pub fn min_q_no_grad(&self, obs: &Tensor, act: &Tensor) -> Tensor {
        let rows = obs.size()[0];
        let block = match obs.device() {
            Device::Cpu => CACHE_BLOCK_ROWS,
            _ => rows,
        };
        tch::no_grad(|| {
            let blocks: Vec<Tensor> = (0..rows)
                .step_by(block.max(1) as usize)
                .map(|start| {
                    let n = block.min(rows - start);
                    self.min_q(&obs.narrow(0, start, n), &act.narrow(0, start, n))
                })
                .collect();
            Tensor::cat(&blocks, 0)
        })
    }

    /// `min(Q̄1, Q̄2)(s, a)` from the targets as `[B, 1]`: differentiable in `a` (FLAME's
    /// Q-gradient term goes through it), never in the targets, which take no gradient.
    pub fn target_min_q(&self, obs: &Tensor, act: &Tensor) -> Tensor {
        let q = self
            .net
            .forward_layers(&self.target_layers, &Tensor::cat(&[obs, act], 1));
        q.get(0).minimum(&q.get(1))
    }

    /// Adam steps on `Σ_i mean((Q_i(s, a) − y)²)` (CleanRL's `qf1_loss + qf2_loss`);
    /// returns the loss (a scalar tensor) and the mean Q1 value. The gradient is taken by
    /// hand ([`Mlp::backward`]): `∂loss/∂Q_i = 2·(Q_i − y)/B`.
    ///
    /// `adam_steps` Adam steps are taken with the one gradient (the official FLAME code
    /// applies each critic gradient twice; SAC takes one).
    pub fn train_step(
        &mut self,
        obs: &Tensor,
        act: &Tensor,
        y: &Tensor,
        adam_steps: usize,
    ) -> (Tensor, Tensor) {
        let (loss, q_mean) = self.loss_gradient(obs, act, y);
        for _ in 0..adam_steps {
            self.adam.step(&self.net.params, &self.grad.flat);
        }
        (loss, q_mean)
    }

    /// The critic loss of [`TwinCritic::train_step`] and the mean Q1; writes the loss's
    /// gradient into `self.grad`.
    fn loss_gradient(&mut self, obs: &Tensor, act: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
        let (q, tape) = self.net.forward_taped(&Tensor::cat(&[obs, act], 1));
        tch::no_grad(|| {
            let diff = &q - y.unsqueeze(0);
            let rows = q.size()[1] as f64;
            let loss = diff
                .square()
                .mean_dim([1i64, 2].as_slice(), false, Kind::Float)
                .sum(Kind::Float);
            let grad_q = diff * (2.0 / rows);
            self.net
                .backward(&tape, &grad_q, Some(&mut self.grad), None);
            (loss, q.get(0).mean(Kind::Float))
        })
    }

    /// `scale·∂ min(Q1, Q2)(s, a)/∂a` per row as `[B, act]`, and `min(Q1, Q2)(s, a)`
    /// `[B, 1]`: the gradient an actor loss `scale·Σ_rows min Q` sends to its actions,
    /// by hand ([`Mlp::backward`] to the input, no critic parameter gradients). Where
    /// Q1 = Q2 each member gets half, as libtorch's `minimum` does.
    pub fn min_q_action_gradient(
        &self,
        obs: &Tensor,
        act: &Tensor,
        scale: f64,
    ) -> (Tensor, Tensor) {
        let (q, tape) = self.net.forward_taped(&Tensor::cat(&[obs, act], 1));
        tch::no_grad(|| {
            let (q1, q2) = (q.get(0), q.get(1));
            let first = q1.lt_tensor(&q2).to_kind(Kind::Float);
            let first = first.where_self(&q1.ne_tensor(&q2), &first.full_like(0.5));
            let grad_q = Tensor::stack(&[&first, &(1.0 - &first)], 0) * scale;
            let action_columns = (obs.size()[1], act.size()[1]);
            let action_grad = self
                .net
                .backward(&tape, &grad_q, None, Some(action_columns))
                .expect("input gradient requested")
                .sum_dim_intlist(0, false, Kind::Float);
            (action_grad, q1.minimum(&q2))
        })
    }

    /// `Q̄ ← (1 − τ)·Q̄ + τ·Q`.
    pub fn polyak(&mut self) {
        let tau = self.tau;
        tch::no_grad(|| {
            let _ = self.target.lerp_(&self.net.params, tau);
        });
    }

    /// Every tensor of the critic's state, named with `prefix`.
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        checkpoint_entries(
            prefix,
            &[("params", &self.net.params), ("target", &self.target)],
            &self.adam,
        )
    }

    /// Restores [`TwinCritic::state`] in place.
    pub fn load_state(&mut self, prefix: &str, state: &HashMap<String, Tensor>) -> Result<()> {
        let buffers: &mut [(&str, &mut Tensor)] = &mut [
            ("params", &mut self.net.params),
            ("target", &mut self.target),
        ];
        restore_entries(prefix, buffers, &mut self.adam, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The critic loss's hand-written gradient equals autograd's, for both activations.
    #[test]
    fn loss_gradient_equals_autograd() {
        tch::manual_seed(9);
        let opts = (Kind::Float, Device::Cpu);
        for activation in [Activation::Relu, Activation::Mish] {
            let config = AdamConfig::with_lr(1e-3);
            let mut critic = TwinCritic::new(
                4,
                2,
                &[32, 32],
                activation,
                Init::Torch,
                config,
                0.005,
                Device::Cpu,
            );
            let (obs, act) = (Tensor::randn([16, 4], opts), Tensor::randn([16, 2], opts));
            let y = Tensor::randn([16, 1], opts);
            let (loss, q_mean) = critic.loss_gradient(&obs, &act, &y);
            let q = critic.q(&obs, &act);
            let expected_loss = (&q - y.unsqueeze(0))
                .square()
                .mean_dim([1i64, 2].as_slice(), false, Kind::Float)
                .sum(Kind::Float);
            let expected = critic.net.grad(&expected_loss);
            let err = (&critic.grad.flat - expected).abs().max().double_value(&[]);
            assert!(err < 1e-5, "{activation:?}: gradient off by {err}");
            assert!(loss.allclose(&expected_loss.detach(), 1e-6, 1e-6, false));
            assert!(q_mean.allclose(&q.get(0).detach().mean(Kind::Float), 1e-6, 1e-6, false));
        }
    }

    /// `adam_steps = 2` is two Adam steps with the one gradient (the official FLAME
    /// critic update), not one step with a doubled learning rate or a fresh gradient.
    #[test]
    fn repeated_steps_reuse_one_gradient() {
        tch::manual_seed(4);
        let opts = (Kind::Float, Device::Cpu);
        let config = AdamConfig::with_lr(1e-3);
        let new = || {
            tch::manual_seed(5);
            TwinCritic::new(
                4,
                2,
                &[16],
                Activation::Mish,
                Init::Torch,
                config,
                0.005,
                Device::Cpu,
            )
        };
        let (mut twice, mut by_hand) = (new(), new());
        let (obs, act) = (Tensor::randn([8, 4], opts), Tensor::randn([8, 2], opts));
        let y = Tensor::randn([8, 1], opts);
        let _ = twice.train_step(&obs, &act, &y, 2);
        let _ = by_hand.train_step(&obs, &act, &y, 1);
        let grad = by_hand.grad.flat.copy();
        by_hand.adam.step(&by_hand.net.params, &grad);
        assert_eq!(twice.adam.steps(), 2);
        assert!(twice.net.params.equal(&by_hand.net.params));
    }

    /// `min_q_action_gradient` equals autograd's gradient of `scale·Σ min(Q1, Q2)` in
    /// the actions, ties included (each member gets half, as libtorch's `minimum`).
    #[test]
    fn min_q_action_gradient_equals_autograd() {
        tch::manual_seed(10);
        let opts = (Kind::Float, Device::Cpu);
        let config = AdamConfig::with_lr(1e-3);
        let critic = TwinCritic::new(
            4,
            2,
            &[32, 32],
            Activation::Relu,
            Init::Torch,
            config,
            0.005,
            Device::Cpu,
        );
        // Identical members: every row is a tie.
        let tied = TwinCritic::new(
            4,
            2,
            &[32, 32],
            Activation::Relu,
            Init::Torch,
            config,
            0.005,
            Device::Cpu,
        );
        tch::no_grad(|| {
            for (w, b) in &tied.net.layer_views(&tied.net.params) {
                w.get(1).copy_(&w.get(0));
                b.get(1).copy_(&b.get(0));
            }
        });
        for critic in [&critic, &tied] {
            let obs = Tensor::randn([8, 4], opts);
            let act = Tensor::randn([8, 2], opts).set_requires_grad(true);
            let (grad, min_q) = critic.min_q_action_gradient(&obs, &act.detach(), -0.25);
            let expected_min_q = critic.min_q(&obs, &act);
            let loss = expected_min_q.sum(Kind::Float) * -0.25;
            let expected = Tensor::run_backward(&[&loss], &[&act], false, false).remove(0);
            let err = (grad - expected).abs().max().double_value(&[]);
            assert!(err < 1e-6, "action gradient off by {err}");
            assert!(min_q.allclose(&expected_min_q.detach(), 1e-6, 1e-6, false));
        }
    }
}
