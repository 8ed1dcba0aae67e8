//! Env throughput: steps/s of one env and of a [`VecEnv`] under uniform random actions,
//! to check that simulation is not the trainer's bottleneck (DESIGN §4).

use std::fmt;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{make, EnvError, EnvSpec, VecEnv};

/// Throughput of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    pub id: &'static str,
    /// Env steps per second of a single env (resetting at episode end).
    pub single_steps_per_s: f64,
    /// Env steps per second (summed over envs) of a `VecEnv` of `num_envs` envs.
    pub vec_steps_per_s: f64,
    pub num_envs: usize,
}

impl fmt::Display for BenchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<20} single {:>9.0} steps/s   VecEnv({}) {:>9.0} steps/s",
            self.id, self.single_steps_per_s, self.num_envs, self.vec_steps_per_s
        )
    }
}

/// Runs about `env_steps` env steps per task and setting with random actions (drawn
/// uniformly inside the action bounds; the drawing is part of the timed loop, as it is
/// cheap next to MuJoCo). The random actions make the walkers fall often, so resets are
/// included in the measurement.
pub fn bench(
    ids: &[&str],
    env_steps: usize,
    num_envs: usize,
    seed: u64,
) -> Result<Vec<BenchResult>, EnvError> {
    ids.iter()
        .map(|id| {
            let mut env = make(id)?;
            let spec = env.spec().clone();
            let mut rng = StdRng::seed_from_u64(seed);
            let mut action = vec![0.0; spec.act_dim];
            env.reset(seed);
            let start = Instant::now();
            for episode in 1..=env_steps as u64 {
                random_action(&spec, &mut rng, &mut action);
                if env.step(&action)?.done() {
                    env.reset(seed.wrapping_add(episode));
                }
            }
            let single_steps_per_s = env_steps as f64 / start.elapsed().as_secs_f64();

            let mut vec_env = VecEnv::new(id, num_envs, seed)?;
            let mut actions = vec![0.0; spec.act_dim * num_envs];
            let batches = env_steps.div_ceil(num_envs);
            let start = Instant::now();
            for _ in 0..batches {
                for action in actions.chunks_exact_mut(spec.act_dim) {
                    random_action(&spec, &mut rng, action);
                }
                vec_env.step(&actions)?;
            }
            let vec_steps_per_s = (batches * num_envs) as f64 / start.elapsed().as_secs_f64();
            Ok(BenchResult {
                id: spec.id,
                single_steps_per_s,
                vec_steps_per_s,
                num_envs,
            })
        })
        .collect()
}

fn random_action(spec: &EnvSpec, rng: &mut StdRng, action: &mut [f64]) {
    for (a, (lo, hi)) in action
        .iter_mut()
        .zip(spec.action_low.iter().zip(&spec.action_high))
    {
        *a = rng.random_range(*lo..*hi);
    }
}
