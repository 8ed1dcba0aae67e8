//! Walker2d-v5: a two-legged planar walker, from `walker2d_v5.xml` (both feet with
//! friction 1.9, where the older XML gave one 0.9); observation and reward in
//! [`super::planar_walker`].

use super::mujoco_env::Sim;
use super::planar_walker::PlanarWalker;

pub(crate) struct Walker2d;

impl PlanarWalker for Walker2d {
    const ID: &'static str = "Walker2d-v5";
    const XML: &'static str = "walker2d_v5.xml";
    const OBS_DIM: usize = 17;
    const ACT_DIM: usize = 6;

    /// Healthy while 0.8 < z < 2 and -1 < angle < 1, strict; unlike Hopper there is no
    /// bound on the rest of the state (and no finiteness check).
    fn is_healthy(sim: &Sim) -> bool {
        let qpos = sim.qpos();
        let (z, angle) = (qpos[1], qpos[2]);
        0.8 < z && z < 2.0 && -1.0 < angle && angle < 1.0
    }
}
