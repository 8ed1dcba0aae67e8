//! `--cuda-graph`: each variant of the agent's update (the branches it takes: critic
//! only, with the policy, with α, with the targets; [`Agent::update_variant`]) is run
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
//! at replay), and reading the update's stats after the replay. Everything an update
//! changes is a device tensor changed in place.

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
/// storage. Works on any device; on the CPU it is what the tests hold to the eager
/// update.
struct StaticInputs {
    replay: DeviceReplay,
    indices: Tensor,
    batch: Batch,
}

impl StaticInputs {
    fn new(device: Device, replay: &ReplayBuffer, rows: usize) -> Self {
        let zeros = |cols: usize| Tensor::zeros([rows as i64, cols as i64], (Kind::Float, device));
        Self {
            replay: DeviceReplay::new(replay, device),
            indices: Tensor::zeros([rows as i64], (Kind::Int64, device)),
            batch: Batch {
                obs: zeros(replay.obs_dim),
                act: zeros(replay.act_dim),
                rew: zeros(1),
                next_obs: zeros(replay.obs_dim),
                term: zeros(1),
            },
        }
    }

    /// Host side, before an update: the rows `replay` gained since the last call, and
    /// this minibatch's row indices, copied to the device.
    fn load(&mut self, replay: &ReplayBuffer, indices: &[usize]) {
        self.replay.sync(replay);
        let indices: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        tch::no_grad(|| self.indices.copy_(&Tensor::from_slice(&indices)));
    }

    /// Device side, the work a graph records: the minibatch gathered, then the update.
    fn update(&self, agent: &mut dyn Agent, update: u64) -> UpdateStats {
        self.replay.gather_into(&self.indices, &self.batch);
        agent.update(&self.batch, update)
    }
}

/// The recorded update variants of one run and the inputs they read.
pub struct UpdateGraphs {
    device: Device,
    inputs: StaticInputs,
    variants: HashMap<u64, Recording<UpdateStats>>,
}

impl UpdateGraphs {
    /// Graphs for minibatches of `rows` transitions from `replay` on `device` (refused
    /// unless CUDA).
    pub fn new(device: Device, replay: &ReplayBuffer, rows: usize) -> Result<Self> {
        // Refuses a CPU device with the reason, before any tensor is made.
        drop(CudaGraph::new(device)?);
        Ok(Self {
            device,
            inputs: StaticInputs::new(device, replay, rows),
            variants: HashMap::new(),
        })
    }

    /// Update number `update` of `agent` on the rows `indices` of `replay`: eagerly while
    /// its variant warms up, then recorded and replayed. The stats are the update's,
    /// ready to read.
    pub fn update(
        &mut self,
        agent: &mut dyn Agent,
        replay: &ReplayBuffer,
        indices: &[usize],
        update: u64,
    ) -> Result<UpdateStats> {
        self.inputs.load(replay, indices);
        let key = agent.update_variant(update);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::flame::{Flame, FlameConfig};
    use crate::agents::sac::{Sac, SacConfig};
    use rand::SeedableRng;
    use runtime::blob::Algorithm;

    /// The update as a graph records it — the replay copied to the device, the minibatch
    /// gathered there by index into fixed tensors, the agent's update on those — gives
    /// bit for bit the numbers of the eager loop's update (host-gathered minibatch, fresh
    /// tensors), over every update variant, for FLAME-M, FLAME-R and SAC.
    #[test]
    fn the_static_update_equals_the_eager_update() {
        let (obs_dim, act_dim) = (5, 2);
        let flame = |algorithm| {
            move || -> Box<dyn Agent> {
                let config = FlameConfig {
                    alpha_every: 4,
                    ..FlameConfig::small_for_tests(algorithm)
                };
                Box::new(Flame::new(config, algorithm, obs_dim, act_dim, Device::Cpu))
            }
        };
        let sac = || -> Box<dyn Agent> {
            let config = SacConfig {
                policy_hidden: vec![32, 32],
                critic_hidden: vec![32, 32],
                ..SacConfig::default()
            };
            Box::new(Sac::new(config, obs_dim, act_dim, &[1.0, 2.0], Device::Cpu))
        };
        type Maker<'a> = &'a dyn Fn() -> Box<dyn Agent>;
        let makers: [(&str, Maker); 3] = [
            ("flame-m", &flame(Algorithm::FlameM)),
            ("flame-r", &flame(Algorithm::FlameR)),
            ("sac", &sac),
        ];
        for (name, make) in makers {
            tch::manual_seed(7);
            let mut eager = make();
            tch::manual_seed(7);
            let mut fixed = make();
            let mut replay = ReplayBuffer::new(obs_dim, act_dim, 40);
            let mut inputs = StaticInputs::new(Device::Cpu, &replay, 16);
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            let mut push = |replay: &mut ReplayBuffer, n: usize| {
                for _ in 0..n {
                    let mut row = |d: usize| {
                        (0..d)
                            .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0))
                            .collect::<Vec<_>>()
                    };
                    let (o, a, n2) = (row(obs_dim), row(act_dim), row(obs_dim));
                    replay.push(&o, &a, o[0], &n2, o[1] > 0.8);
                }
            };
            push(&mut replay, 30);
            let mut sample_rng = rand::rngs::StdRng::seed_from_u64(4);
            for update in 0..8 {
                let indices = replay.sample_indices(16, &mut sample_rng);
                let batch = replay.gather(&indices, Device::Cpu);
                let fraction = update as f64 / 8.0;
                tch::manual_seed(100 + update as i64);
                eager.set_progress(fraction);
                let expected = eager.update(&batch, update);
                inputs.load(&replay, &indices);
                tch::manual_seed(100 + update as i64);
                fixed.set_progress(fraction);
                let got = inputs.update(fixed.as_mut(), update);
                for ((k, e), (k2, g)) in expected.iter().zip(&got) {
                    assert_eq!(k, k2);
                    assert!(e.equal(g), "{name} update {update}: {k} {e} vs {g}");
                }
                // New transitions between updates, past the capacity (the ring wraps).
                push(&mut replay, 3);
            }
            for ((k, e), (_, g)) in eager.state().iter().zip(fixed.state()) {
                assert!(e.equal(&g), "{name}: {k} differs");
            }
        }
    }
}
