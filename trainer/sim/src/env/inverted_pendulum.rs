//! InvertedPendulum-v5: a cart-pole with a continuous force. It trains in minutes, which
//! makes it the task for learning tests; reward is 1 per step while the pole is up.

use super::mujoco_env::{Outcome, ResetNoise, Sim, Task};

pub(crate) struct InvertedPendulum;

impl Task for InvertedPendulum {
    const ID: &'static str = "InvertedPendulum-v5";
    const XML: &'static str = "inverted_pendulum.xml";
    const FRAME_SKIP: usize = 2;
    const OBS_DIM: usize = 4;
    const ACT_DIM: usize = 1;
    const ACTION_BOUND: f64 = 3.0;
    const RESET_NOISE: ResetNoise = ResetNoise::Uniform(1e-2);

    /// Cart position, pole angle, and their velocities.
    fn observe(sim: &Sim, obs: &mut Vec<f64>) {
        obs.extend_from_slice(sim.qpos());
        obs.extend_from_slice(sim.qvel());
    }

    /// Terminates once the state is non-finite or the pole leans past 0.2 rad; reward 1
    /// for every step that did not terminate.
    fn outcome(sim: &Sim, _x_velocity: f64, _action: &[f64]) -> Outcome {
        let finite = sim.qpos().iter().chain(sim.qvel()).all(|s| s.is_finite());
        let terminated = !finite || sim.qpos()[1].abs() > 0.2;
        Outcome {
            reward: if terminated { 0.0 } else { 1.0 },
            terminated,
        }
    }
}
