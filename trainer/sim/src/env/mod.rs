//! MuJoCo v5 tasks matching gymnasium 1.4 bit for bit (DESIGN §4).
//!
//! Given the same initial state and actions, observations are bit-identical f64,
//! rewards agree to ~1e-15 and terminated/truncated are identical to gymnasium's
//! `gymnasium.make("<id>")` (with its 1000-step `TimeLimit`); the conformance test in
//! `tests/tests/env_conformance.rs` checks this against the reference python.
//! Reset noise comes from our own seeded RNG, not numpy's.
//!
//! - [`make`] / [`specs`]: the task registry;
//! - [`VecEnv`]: several envs stepped together with auto-reset, for the trainer;
//! - [`bench()`]: env steps/s, single and vectorized.

mod ant;
pub mod bench;
mod error;
mod half_cheetah;
mod hopper;
mod humanoid;
mod inverted_pendulum;
mod log;
mod mujoco_env;
mod paths;
mod planar_walker;
mod vec_env;
mod walker2d;

pub use bench::{bench, BenchResult};
pub use error::EnvError;
pub use mujoco_env::MAX_EPISODE_STEPS;
pub use paths::{assets_dir, deps_dir, reference_python};
pub use vec_env::{EpisodeStats, VecEnv, VecEnvSnapshot, VecStep};

use mujoco_env::{spec_of, Task, TaskEnv};

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

impl Step {
    /// The episode is over (terminated or truncated): reset before stepping again.
    pub fn done(&self) -> bool {
        self.terminated || self.truncated
    }
}

/// A gymnasium-style episodic environment (the time limit included).
pub trait Env: Send {
    fn spec(&self) -> &EnvSpec;

    /// Starts a new episode from the task's initial state plus noise drawn from an RNG
    /// seeded with `seed`; returns the first observation.
    fn reset(&mut self, seed: u64) -> Vec<f64>;

    /// Applies `action` (raw: it is not clipped to the bounds, as in gymnasium, and the
    /// costs see it unclipped). Errors on a wrongly sized or non-finite action, leaving
    /// the state untouched.
    fn step(&mut self, action: &[f64]) -> Result<Step, EnvError>;

    /// Starts a new episode at exactly (qpos, qvel), as gymnasium's `reset` followed by
    /// `set_state` would (`mj_resetData`, set, `mj_forward`); returns the observation.
    /// Used to replay reference traces from the same initial state.
    fn set_state(&mut self, qpos: &[f64], qvel: &[f64]) -> Result<Vec<f64>, EnvError>;
}

/// One registry entry: the id and how to build it.
struct Registered {
    spec: fn() -> EnvSpec,
    make: fn() -> Result<Box<dyn Env>, EnvError>,
}

const fn register<T: Task>() -> Registered {
    fn make<T: Task>() -> Result<Box<dyn Env>, EnvError> {
        Ok(Box::new(TaskEnv::<T>::new()?))
    }
    Registered {
        spec: spec_of::<T>,
        make: make::<T>,
    }
}

/// Every task, in the order `trainer envs` lists them.
const REGISTRY: [Registered; 6] = [
    register::<half_cheetah::HalfCheetah>(),
    register::<hopper::Hopper>(),
    register::<walker2d::Walker2d>(),
    register::<ant::Ant>(),
    register::<humanoid::Humanoid>(),
    register::<inverted_pendulum::InvertedPendulum>(),
];

/// The specs of every task (needs no MuJoCo and no assets).
pub fn specs() -> Vec<EnvSpec> {
    REGISTRY.iter().map(|r| (r.spec)()).collect()
}

/// The ids of every task.
pub fn ids() -> Vec<&'static str> {
    specs().iter().map(|s| s.id).collect()
}

/// The spec of task `id` without loading it.
pub fn spec(id: &str) -> Result<EnvSpec, EnvError> {
    specs()
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| unknown(id))
}

/// Builds task `id` (e.g. "Hopper-v5"), loading its XML from [`assets_dir`]. Call
/// [`Env::reset`] (or [`Env::set_state`]) before stepping: a fresh env sits at qpos0
/// with zero velocity.
pub fn make(id: &str) -> Result<Box<dyn Env>, EnvError> {
    let entry = (REGISTRY.iter())
        .find(|r| (r.spec)().id == id)
        .ok_or_else(|| unknown(id))?;
    (entry.make)()
}

fn unknown(id: &str) -> EnvError {
    EnvError::UnknownId {
        id: id.to_string(),
        valid: ids(),
    }
}
