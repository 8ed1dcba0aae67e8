//! Hopper-v5: a one-legged planar hopper (observation and reward in [`super::planar_walker`]).

use super::mujoco_env::Sim;
use super::planar_walker::PlanarWalker;

pub(crate) struct Hopper;

impl PlanarWalker for Hopper {
    const ID: &'static str = "Hopper-v5";
    const XML: &'static str = "hopper.xml";
    const OBS_DIM: usize = 11;
    const ACT_DIM: usize = 3;

    /// Healthy while every state entry except x and z is inside (-100, 100), the torso
    /// height inside (0.7, ∞) and its angle inside (-0.2, 0.2), all strict (gymnasium's
    /// defaults).
    fn is_healthy(sim: &Sim) -> bool {
        let qpos = sim.qpos();
        let (z, angle) = (qpos[1], qpos[2]);
        let state_ok = (qpos[2..].iter().chain(sim.qvel())).all(|&s| -100.0 < s && s < 100.0);
        state_ok && 0.7 < z && z < f64::INFINITY && -0.2 < angle && angle < 0.2
    }
}
