//! HalfCheetah-v5: a planar cheetah that never terminates; reward is forward speed minus
//! a control cost.

use super::mujoco_env::{sum_sq, Outcome, ResetNoise, Sim, Task};

pub(crate) struct HalfCheetah;

impl Task for HalfCheetah {
    const ID: &'static str = "HalfCheetah-v5";
    const XML: &'static str = "half_cheetah.xml";
    const FRAME_SKIP: usize = 5;
    const OBS_DIM: usize = 17;
    const ACT_DIM: usize = 6;
    const ACTION_BOUND: f64 = 1.0;
    const RESET_NOISE: ResetNoise = ResetNoise::UniformNormal(0.1);

    /// qpos without the x position, then qvel (unclipped).
    fn observe(sim: &Sim, obs: &mut Vec<f64>) {
        obs.extend_from_slice(&sim.qpos()[1..]);
        obs.extend_from_slice(sim.qvel());
    }

    fn outcome(_sim: &Sim, x_velocity: f64, action: &[f64]) -> Outcome {
        Outcome {
            reward: x_velocity - 0.1 * sum_sq(action),
            terminated: false,
        }
    }
}
