//! `--cuda-graph`: each variant of the agent's update (the branches it takes: critic
//! only, with the policy, with α, with the targets; [`Agent::update_branches`]) is run
//! eagerly a few times, then recorded once as a CUDA graph ([`crate::cuda_graph`]) and
//! replayed for every later update of that variant. The training loop's exploring action
//! (FLAME: N_p samples through the sampler and the critics, every vector step) is
//! recorded the same way ([`ActGraph`]).
//!
//! The replay buffer has a copy on the device ([`DeviceReplay`]): the host draws a
//! minibatch's row indices exactly as the eager loop does and copies only them; the
//! recorded update gathers the rows into the tensors every graph reads. What else stays
//! on the host between replays: copying newly stored transitions to the device,
//! reseeding the generator and setting the progress (both outside the graph, read by it
//! at replay), and reading the stats of the last [`super::STATS_EVERY`] updates at once.
//! Everything an update changes is a device tensor changed in place.

use std::collections::HashMap;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::agents::{Agent, UpdateStats};
use crate::cuda_graph::CudaGraph;
use crate::replay::{Batch, DeviceReplay, ReplayBuffer};

/// Eager calls of a piece of work before it is recorded (PyTorch's recipe warms up on
/// the side stream for a few iterations, so lazy initializations happen before capture).
pub const WARMUP_CALLS: usize = 3;

/// Outputs of recorded work: tensors in the graph's memory, which every replay
/// overwrites; callers get aliases of them.
trait Outputs {
    fn alias(&self) -> Self;
}

impl Outputs for Tensor {
    fn alias(&self) -> Self {
        self.shallow_clone()
    }
}

impl Outputs for UpdateStats {
    fn alias(&self) -> Self {
        self.iter().map(|(k, v)| (*k, v.shallow_clone())).collect()
    }
}

/// One piece of work on fixed inputs: run eagerly [`WARMUP_CALLS`] times, then recorded,
/// then replayed.
struct Recording<T> {
    graph: CudaGraph,
    stage: Stage<T>,
}

enum Stage<T> {
    /// This many eager calls so far.
    WarmingUp(usize),
    /// Recorded, with the outputs every replay overwrites.
    Recorded(T),
}

impl<T: Outputs> Recording<T> {
    fn new(device: Device) -> Result<Self> {
        Ok(Self {
            graph: CudaGraph::new(device)?,
            stage: Stage::WarmingUp(0),
        })
    }

    /// The work's outputs for this call: from an eager warm-up call, or from a replay.
    fn run(&mut self, work: impl FnMut() -> T) -> Result<T> {
        match &self.stage {
            Stage::WarmingUp(calls) if *calls < WARMUP_CALLS => {
                let out = self.graph.warm_up(work)?;
                self.stage = Stage::WarmingUp(calls + 1);
                Ok(out)
            }
            Stage::WarmingUp(_) => {
                let recorded = self.graph.record(work)?;
                self.graph.replay()?;
                let out = recorded.alias();
                self.stage = Stage::Recorded(recorded);
                Ok(out)
            }
            Stage::Recorded(recorded) => {
                self.graph.replay()?;
                Ok(recorded.alias())
            }
        }
    }
}

/// The inputs of an update as a recorded update reads them: the replay's device copy,
/// the minibatch's row indices and the minibatch's rows, all in tensors that keep their
/// storage. Works on any device; on the CPU `tests/static_update.rs` holds it to the
/// eager update.
pub struct StaticInputs {
    replay: DeviceReplay,
    indices: Tensor,
    batch: Batch,
}

impl StaticInputs {
    /// Inputs for minibatches of `rows` transitions from `replay` on `device`.
    pub fn new(device: Device, replay: &ReplayBuffer, rows: usize) -> Self {
        Self {
            replay: DeviceReplay::new(replay, device),
            indices: Tensor::zeros([rows as i64], (Kind::Int64, device)),
            batch: Batch::zeros(rows, replay.obs_dim, replay.act_dim, device),
        }
    }

    /// Host side, before an update: the rows `replay` gained since the last call, and
    /// this minibatch's row indices, copied to the device.
    pub fn load(&mut self, replay: &ReplayBuffer, indices: &[usize]) {
        self.replay.sync(replay);
        let indices: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        tch::no_grad(|| self.indices.copy_(&Tensor::from_slice(&indices)));
    }

    /// Device side, the work a graph records: the minibatch gathered, then the update.
    pub fn update(&self, agent: &mut dyn Agent, update: u64) -> UpdateStats {
        self.replay.gather_into(&self.indices, &self.batch);
        agent.update(&self.batch, update)
    }
}

/// The recorded update variants of one run and the inputs they read.
pub struct UpdateGraphs {
    device: Device,
    inputs: StaticInputs,
    variants: HashMap<(bool, bool), Recording<UpdateStats>>,
}

impl UpdateGraphs {
    /// Graphs for minibatches of `rows` transitions from `replay` on `device` (each
    /// variant's graph refuses a CPU device when it is made, at its first update).
    pub fn new(device: Device, replay: &ReplayBuffer, rows: usize) -> Self {
        Self {
            device,
            inputs: StaticInputs::new(device, replay, rows),
            variants: HashMap::new(),
        }
    }

    /// Update number `update` of `agent` on the rows `indices` of `replay`: eagerly while
    /// its variant warms up, then recorded and replayed. The stats are the graph's
    /// outputs, which the next replay of the variant overwrites.
    pub fn update(
        &mut self,
        agent: &mut dyn Agent,
        replay: &ReplayBuffer,
        indices: &[usize],
        update: u64,
    ) -> Result<UpdateStats> {
        self.inputs.load(replay, indices);
        let key = agent.update_branches(update);
        let variant = match self.variants.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Recording::new(self.device)?),
        };
        let inputs = &self.inputs;
        variant.run(|| inputs.update(agent, update))
    }
}

/// The training loop's exploring action on `[num_envs, obs]` observations, recorded.
pub struct ActGraph {
    obs: Tensor,
    recording: Recording<Tensor>,
}

impl ActGraph {
    /// For `rows` observations of width `obs_dim` on `device` (refused unless CUDA).
    pub fn new(device: Device, rows: usize, obs_dim: usize) -> Result<Self> {
        Ok(Self {
            recording: Recording::new(device)?,
            obs: Tensor::zeros([rows as i64, obs_dim as i64], (Kind::Float, device)),
        })
    }

    /// `agent.act(obs, explore = true)`: eagerly while warming up, then replayed. The
    /// caller reseeds the generator before, as for the eager call.
    pub fn act(&mut self, agent: &dyn Agent, obs: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| self.obs.copy_(obs));
        let fixed = &self.obs;
        self.recording.run(|| agent.act(fixed, true))
    }
}
