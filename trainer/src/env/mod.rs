//! MuJoCo v5 tasks matching gymnasium 1.4 bit for bit (DESIGN §4).
//!
//! (Being written: see issue 3. Interface used by the agents and the HIL runner below.)

/// Static description of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvSpec {
    /// Gymnasium id, e.g. "HalfCheetah-v5".
    pub id: &'static str,
    pub obs_dim: usize,
    pub act_dim: usize,
    /// Action bounds in env units (per dimension).
    pub action_low: Vec<f64>,
    pub action_high: Vec<f64>,
    /// Truncation horizon (1000 for every v5 task here).
    pub max_episode_steps: usize,
}

/// The result of one env step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub obs: Vec<f64>,
    pub reward: f64,
    /// The MDP ended (unhealthy): do not bootstrap.
    pub terminated: bool,
    /// The time limit ended the episode: bootstrap through it.
    pub truncated: bool,
}
