//! Twin Q networks with Polyak-averaged targets, shared by every agent.
//!
//! Q1 and Q2 are one two-member ensemble [`Mlp`] on `[obs, action]` (one batched matmul
//! per layer evaluates both), with one Adam over both (CleanRL optimizes
//! `list(qf1) + list(qf2)` with one Adam; per-parameter Adam makes that identical to two
//! separate ones). SAC uses 256×256 ReLU (CleanRL); FLAME 3×256 mish.

use std::collections::HashMap;

use anyhow::Result;
use tch::{Device, Tensor};

use crate::mlp::{
    checkpoint_entries, restore_entries, Activation, Adam, AdamConfig, Mlp, MlpShape,
};

/// Rows per block of [`TwinCritic::min_q_no_grad`] on the CPU: `[2, 512, 256]` f32
/// activations are 1 MiB, within the L2 cache. `trainer bench --algo flame-m` here: 512
/// rows 9.5 updates/s, 256 and 128 rows 8.6, one block 6.5; a pass timed alone lost most
/// of the gain at 1024 rows.
const CACHE_BLOCK_ROWS: i64 = 512;

/// Twin critics `Q1, Q2 (s, a)` and their targets `Q̄1, Q̄2`.
pub struct TwinCritic {
    pub net: Mlp,
    /// Polyak-averaged copy of `net.params` (no grad).
    pub target: Tensor,
    pub adam: Adam,
    /// Polyak rate: `Q̄ ← (1 − τ)·Q̄ + τ·Q`.
    pub tau: f64,
}

impl TwinCritic {
    pub fn new(
        obs_dim: usize,
        act_dim: usize,
        hidden: &[usize],
        activation: Activation,
        adam: AdamConfig,
        tau: f64,
        device: Device,
    ) -> Self {
        let mut sizes = vec![obs_dim + act_dim];
        sizes.extend_from_slice(hidden);
        sizes.push(1);
        let net = Mlp::new(
            MlpShape {
                sizes,
                activation,
                members: 2,
            },
            device,
        );
        let target = net.detached_copy();
        let adam = Adam::new(adam, &net.params);
        Self {
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

    /// `min(Q̄1, Q̄2)(s, a)` from the targets as `[B, 1]`, without grad.
    pub fn target_min_q(&self, obs: &Tensor, act: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let q = self
                .net
                .forward_with(&self.target, &Tensor::cat(&[obs, act], 1));
            q.get(0).minimum(&q.get(1))
        })
    }

    /// One Adam step on `Σ_i mean((Q_i(s, a) − y)²)` (CleanRL's `qf1_loss + qf2_loss`);
    /// returns the loss (a scalar tensor) and the mean Q1 value.
    pub fn train_step(&mut self, obs: &Tensor, act: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
        let q = self.q(obs, act);
        let loss =
            (&q - y.unsqueeze(0))
                .square()
                .mean_dim([1i64, 2].as_slice(), false, tch::Kind::Float);
        let loss = loss.sum(tch::Kind::Float);
        let grad = self.net.grad(&loss);
        self.adam.step(&self.net.params, &grad);
        (loss.detach(), q.get(0).detach().mean(tch::Kind::Float))
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
