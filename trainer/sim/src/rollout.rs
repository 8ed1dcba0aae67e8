//! Episodes and state collection shared by init, export and the HIL runner.

use anyhow::Result;
use rand::{Rng, SeedableRng};

use crate::env::Env;

/// Return and length of one episode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpisodeResult {
    pub total_return: f64,
    pub steps: usize,
    pub terminated: bool,
}

/// Observations (as f32) from random-action episodes, `steps` in total.
pub fn random_states(env: &mut dyn Env, steps: usize, seed: u64) -> Result<Vec<Vec<f32>>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (low, high) = (
        env.spec().action_low.clone(),
        env.spec().action_high.clone(),
    );
    let mut episode = 0u64;
    let mut obs = env.reset(seed);
    let mut states = Vec::with_capacity(steps);
    while states.len() < steps {
        states.push(to_f32(&obs));
        let action: Vec<f64> = low
            .iter()
            .zip(&high)
            .map(|(&l, &h)| rng.random_range(l..=h))
            .collect();
        let step = env.step(&action)?;
        obs = if step.terminated || step.truncated {
            episode += 1;
            env.reset(seed.wrapping_add(episode))
        } else {
            step.obs
        };
    }
    Ok(states)
}

/// Run one episode from `env.reset(seed)`; `policy` maps an f32 observation to an f32
/// action in env units. `on_step` sees each (obs, action, reward).
pub fn run_episode(
    env: &mut dyn Env,
    seed: u64,
    mut policy: impl FnMut(&[f32]) -> Result<Vec<f32>>,
) -> Result<EpisodeResult> {
    let mut obs = to_f32(&env.reset(seed));
    let mut result = EpisodeResult {
        total_return: 0.0,
        steps: 0,
        terminated: false,
    };
    loop {
        let action = policy(&obs)?;
        let action: Vec<f64> = action.iter().map(|&a| a as f64).collect();
        let step = env.step(&action)?;
        result.total_return += step.reward;
        result.steps += 1;
        if step.terminated || step.truncated {
            result.terminated = step.terminated;
            return Ok(result);
        }
        obs = to_f32(&step.obs);
    }
}

pub fn to_f32(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}
