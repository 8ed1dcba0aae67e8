//! Humanoid-v5: a 3D humanoid; forward speed of the mass-weighted centre of the bodies,
//! with com-based inertias, velocities, actuator and contact forces in the observation.

use super::mujoco_env::{sum_sq, Outcome, ResetNoise, Sim, Task};

pub(crate) struct Humanoid;

impl Task for Humanoid {
    const ID: &'static str = "Humanoid-v5";
    const XML: &'static str = "humanoid.xml";
    const FRAME_SKIP: usize = 5;
    const OBS_DIM: usize = 348;
    const ACT_DIM: usize = 17;
    const ACTION_BOUND: f64 = 0.4;
    const RESET_NOISE: ResetNoise = ResetNoise::Uniform(1e-2);

    /// x of the centre of mass Σ mᵢ·xiposᵢ / Σ mᵢ (gymnasium's `mass_center`).
    fn x_position(sim: &Sim) -> f64 {
        let mass = sim.model().body_mass();
        let weighted: f64 = (mass.iter().zip(sim.data().xipos()))
            .map(|(m, p)| m * p[0])
            .sum();
        weighted / mass.iter().sum::<f64>()
    }

    /// qpos without x and y, qvel, then for every body but the world: `cinert`, `cvel`,
    /// then `qfrc_actuator` without the free joint's 6 dofs, then `cfrc_ext` (unclipped).
    fn observe(sim: &Sim, obs: &mut Vec<f64>) {
        let data = sim.data();
        obs.extend_from_slice(&sim.qpos()[2..]);
        obs.extend_from_slice(sim.qvel());
        obs.extend(data.cinert()[1..].iter().flatten());
        obs.extend(data.cvel()[1..].iter().flatten());
        obs.extend_from_slice(&data.qfrc_actuator()[6..]);
        obs.extend(data.cfrc_ext()[1..].iter().flatten());
    }

    /// 1.25·forward speed + 5 while healthy − 0.1‖ctrl‖² − min(5e-7·Σ cfrc_ext², 10).
    fn outcome(sim: &Sim, x_velocity: f64, _action: &[f64]) -> Outcome {
        let z = sim.qpos()[2];
        let healthy = 1.0 < z && z < 2.0;
        let healthy_reward = if healthy { 5.0 } else { 0.0 };
        // gymnasium's Humanoid charges the control actually applied (`data.ctrl`), which
        // is the raw action.
        let ctrl_cost = 0.1 * sum_sq(sim.data().ctrl());
        let contact_cost = (5e-7 * sum_sq(sim.data().cfrc_ext().iter().flatten())).min(10.0);
        Outcome {
            reward: (1.25 * x_velocity + healthy_reward) - (ctrl_cost + contact_cost),
            terminated: !healthy,
        }
    }
}
