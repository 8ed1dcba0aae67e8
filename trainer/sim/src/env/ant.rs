//! Ant-v5: a quadruped on a plane; forward speed of the torso body, with contact forces
//! in the observation and the cost.

use super::mujoco_env::{clip, extend_clipped, sum_sq, Outcome, ResetNoise, Sim, Task};

pub(crate) struct Ant;

/// Contact forces are clipped to ±1 in both the observation and the contact cost.
const CONTACT_FORCE_BOUND: f64 = 1.0;

impl Task for Ant {
    const ID: &'static str = "Ant-v5";
    const XML: &'static str = "ant.xml";
    const FRAME_SKIP: usize = 5;
    const OBS_DIM: usize = 105;
    const ACT_DIM: usize = 8;
    const ACTION_BOUND: f64 = 1.0;
    const RESET_NOISE: ResetNoise = ResetNoise::UniformNormal(0.1);

    /// The torso's (body 1, gymnasium's `main_body`) frame position `xpos`.
    fn x_position(sim: &Sim) -> f64 {
        sim.data().xpos()[1][0]
    }

    /// qpos without x and y, qvel, then `cfrc_ext` of every body but the world, clipped.
    fn observe(sim: &Sim, obs: &mut Vec<f64>) {
        obs.extend_from_slice(&sim.qpos()[2..]);
        obs.extend_from_slice(sim.qvel());
        extend_clipped(
            obs,
            sim.data().cfrc_ext()[1..].iter().flatten(),
            CONTACT_FORCE_BOUND,
        );
    }

    /// Forward speed + 1 while healthy − 0.5‖a‖² − 5e-4·Σ clip(cfrc_ext)² (over all bodies,
    /// the world included, as gymnasium sums them).
    fn outcome(sim: &Sim, x_velocity: f64, action: &[f64]) -> Outcome {
        let healthy = is_healthy(sim);
        let healthy_reward = if healthy { 1.0 } else { 0.0 };
        let ctrl_cost = 0.5 * sum_sq(action);
        let contact_cost = 5e-4
            * (sim.data().cfrc_ext().iter().flatten())
                .map(|&f| clip(f, CONTACT_FORCE_BOUND).powi(2))
                .sum::<f64>();
        Outcome {
            reward: (x_velocity + healthy_reward) - (ctrl_cost + contact_cost),
            terminated: !healthy,
        }
    }
}

/// Healthy while the whole state is finite and 0.2 ≤ z ≤ 1 (inclusive, unlike the others).
fn is_healthy(sim: &Sim) -> bool {
    let finite = sim.qpos().iter().chain(sim.qvel()).all(|s| s.is_finite());
    let z = sim.qpos()[2];
    finite && (0.2..=1.0).contains(&z)
}
