//! The planar walkers, Hopper-v5 and Walker2d-v5: the same observation, reward, frame
//! skip and reset noise; they differ in model and in what counts as healthy.

use super::mujoco_env::{extend_clipped, sum_sq, Outcome, ResetNoise, Sim, Task};

/// What distinguishes one planar walker from another.
pub(crate) trait PlanarWalker: Send + 'static {
    const ID: &'static str;
    const XML: &'static str;
    const OBS_DIM: usize;
    const ACT_DIM: usize;

    /// Whether the walker is still up (read after the step).
    fn is_healthy(sim: &Sim) -> bool;
}

impl<W: PlanarWalker> Task for W {
    const ID: &'static str = W::ID;
    const XML: &'static str = W::XML;
    const FRAME_SKIP: usize = 4;
    const OBS_DIM: usize = W::OBS_DIM;
    const ACT_DIM: usize = W::ACT_DIM;
    const ACTION_BOUND: f64 = 1.0;
    const RESET_NOISE: ResetNoise = ResetNoise::Uniform(5e-3);

    /// qpos without the x position, then qvel clipped to ±10.
    fn observe(sim: &Sim, obs: &mut Vec<f64>) {
        obs.extend_from_slice(&sim.qpos()[1..]);
        extend_clipped(obs, sim.qvel(), 10.0);
    }

    /// Forward speed + 1 while healthy − 1e-3‖a‖²; the episode terminates as soon as the
    /// walker is unhealthy.
    fn outcome(sim: &Sim, x_velocity: f64, action: &[f64]) -> Outcome {
        let healthy = W::is_healthy(sim);
        let healthy_reward = if healthy { 1.0 } else { 0.0 };
        Outcome {
            reward: (x_velocity + healthy_reward) - 1e-3 * sum_sq(action),
            terminated: !healthy,
        }
    }
}
