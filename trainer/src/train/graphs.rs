//! `--cuda-graph`: each variant of the agent's update (the branches it takes: critic
//! only, with the policy, with α, with the targets; [`Agent::update_variant`]) is run
//! eagerly a few times, then recorded once as a CUDA graph ([`crate::cuda_graph`]) and
//! replayed for every later update of that variant.
//!
//! What stays on the host between replays: sampling the minibatch (copied into the
//! tensors every graph reads), reseeding the generator and setting the progress (both
//! outside the graph, read by it at replay), and reading the update's stats after the
//! replay. Everything an update changes is a device tensor changed in place.

use std::collections::HashMap;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::agents::{Agent, UpdateStats};
use crate::cuda_graph::CudaGraph;
use crate::replay::Batch;

/// Eager updates of a variant before it is recorded (PyTorch's recipe warms up on the
/// side stream for a few iterations, so lazy initializations happen before capture).
pub const WARMUP_UPDATES: usize = 3;

enum Variant {
    /// This many warm-up updates have run.
    WarmingUp(CudaGraph, usize),
    /// Recorded; the stats tensors that every replay overwrites.
    Recorded(CudaGraph, UpdateStats),
}

/// The recorded update variants of one run and the minibatch tensors they read.
pub struct UpdateGraphs {
    device: Device,
    batch: Batch,
    variants: HashMap<u64, Variant>,
}

impl UpdateGraphs {
    /// Graphs for minibatches of `rows` transitions on `device` (refused unless CUDA).
    pub fn new(device: Device, rows: usize, obs_dim: usize, act_dim: usize) -> Result<Self> {
        // Refuses a CPU device with the reason, before any tensor is made.
        drop(CudaGraph::new(device)?);
        let zeros = |cols: usize| Tensor::zeros([rows as i64, cols as i64], (Kind::Float, device));
        Ok(Self {
            device,
            batch: Batch {
                obs: zeros(obs_dim),
                act: zeros(act_dim),
                rew: zeros(1),
                next_obs: zeros(obs_dim),
                term: zeros(1),
            },
            variants: HashMap::new(),
        })
    }

    /// Update number `update` of `agent` on `batch`: eagerly while its variant warms up,
    /// then recorded and replayed. The stats are the update's, ready to read.
    pub fn update(
        &mut self,
        agent: &mut dyn Agent,
        batch: &Batch,
        update: u64,
    ) -> Result<UpdateStats> {
        tch::no_grad(|| {
            for (dst, src) in [
                (&self.batch.obs, &batch.obs),
                (&self.batch.act, &batch.act),
                (&self.batch.rew, &batch.rew),
                (&self.batch.next_obs, &batch.next_obs),
                (&self.batch.term, &batch.term),
            ] {
                dst.shallow_clone().copy_(src);
            }
        });
        let fixed = &self.batch;
        let key = agent.update_variant(update);
        let variant = match self.variants.remove(&key) {
            Some(variant) => variant,
            None => Variant::WarmingUp(CudaGraph::new(self.device)?, 0),
        };
        let (variant, stats) = match variant {
            Variant::WarmingUp(mut graph, n) if n < WARMUP_UPDATES => {
                let stats = graph.warm_up(|| agent.update(fixed, update))?;
                (Variant::WarmingUp(graph, n + 1), stats)
            }
            Variant::WarmingUp(mut graph, _) => {
                let stats = graph.record(|| agent.update(fixed, update))?;
                graph.replay()?;
                let copies = shallow_copies(&stats);
                (Variant::Recorded(graph, stats), copies)
            }
            Variant::Recorded(graph, stats) => {
                graph.replay()?;
                let copies = shallow_copies(&stats);
                (Variant::Recorded(graph, stats), copies)
            }
        };
        self.variants.insert(key, variant);
        Ok(stats)
    }
}

fn shallow_copies(stats: &UpdateStats) -> UpdateStats {
    stats.iter().map(|(k, v)| (*k, v.shallow_clone())).collect()
}
