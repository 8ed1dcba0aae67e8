//! What every task shares: the MuJoCo simulation wrapper ([`Sim`]), the per-task hooks
//! ([`Task`]) and the generic environment built from them ([`TaskEnv`]).
//!
//! This mirrors gymnasium's `MujocoEnv` base class operation by operation, because the
//! order of MuJoCo calls decides whether the observations come out bit-identical
//! (DESIGN §4):
//! - step: `ctrl = action` (raw, unclipped), `mj_step` × frame_skip, then one
//!   `mj_rnePostConstraint` so `cfrc_ext` describes the final state;
//! - reset: `mj_resetData`, add noise to `qpos0` / zero velocity, `mj_forward` (no
//!   `mj_rnePostConstraint`, so the first observation's `cfrc_ext` is zero).

use std::marker::PhantomData;

use mujoco_rs::prelude::{MjData, MjModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use super::log::route_mujoco_log;
use super::{assets_dir, Env, EnvError, EnvSpec, Step};

/// Every v5 task here is cut off after this many steps (gymnasium's `TimeLimit`).
pub const MAX_EPISODE_STEPS: usize = 1000;

/// How a task perturbs the initial state at reset (gymnasium's `reset_model`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ResetNoise {
    /// qpos = qpos0 + U(-s, s), qvel = U(-s, s).
    Uniform(f64),
    /// qpos = qpos0 + U(-s, s), qvel = s·N(0, 1).
    UniformNormal(f64),
}

/// A MuJoCo model and its data, stepped the way gymnasium steps them.
pub(crate) struct Sim {
    data: MjData<Box<MjModel>>,
    frame_skip: usize,
    /// Seconds per env step: `timestep * frame_skip`, computed as gymnasium does so the
    /// velocity finite differences divide by the same double.
    dt: f64,
}

impl Sim {
    /// Loads `xml` from the assets directory.
    pub fn load(xml: &str, frame_skip: usize) -> Result<Self, EnvError> {
        route_mujoco_log();
        let path = assets_dir().join(xml);
        if !path.is_file() {
            return Err(EnvError::MissingAssets { path });
        }
        let model = MjModel::from_xml(&path).map_err(|e| EnvError::Load {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let dt = model.opt().timestep * frame_skip as f64;
        let data = MjData::try_new(Box::new(model)).map_err(|e| EnvError::Load {
            path,
            message: e.to_string(),
        })?;
        Ok(Self {
            data,
            frame_skip,
            dt,
        })
    }

    pub fn model(&self) -> &MjModel {
        self.data.model()
    }

    pub fn data(&self) -> &MjData<Box<MjModel>> {
        &self.data
    }

    pub fn qpos(&self) -> &[f64] {
        self.data.qpos()
    }

    pub fn qvel(&self) -> &[f64] {
        self.data.qvel()
    }

    pub fn dt(&self) -> f64 {
        self.dt
    }

    /// Starts a new episode at (qpos, qvel): `mj_resetData` (time, warm start and
    /// controls back to their defaults, as gymnasium's `reset` does before
    /// `reset_model`), set the state, `mj_forward`.
    pub fn reset_to(&mut self, qpos: &[f64], qvel: &[f64]) {
        self.data.reset();
        self.data.qpos_mut().copy_from_slice(qpos);
        self.data.qvel_mut().copy_from_slice(qvel);
        self.data.forward();
    }

    /// One env step: raw action into `ctrl`, `frame_skip` physics steps, then
    /// `mj_rnePostConstraint` to fill `cfrc_ext`.
    pub fn step(&mut self, action: &[f64]) {
        self.data.ctrl_mut().copy_from_slice(action);
        for _ in 0..self.frame_skip {
            self.data.step();
        }
        self.data.rne_post_constraint();
    }
}

/// Reward and termination of one step.
pub(crate) struct Outcome {
    pub reward: f64,
    pub terminated: bool,
}

/// The task-specific parts of a gymnasium v5 environment, with its default arguments.
pub(crate) trait Task: Send + 'static {
    const ID: &'static str;
    /// File name inside the assets directory.
    const XML: &'static str;
    const FRAME_SKIP: usize;
    const OBS_DIM: usize;
    const ACT_DIM: usize;
    /// Every actuator's ctrlrange is `[-ACTION_BOUND, ACTION_BOUND]` (checked at load).
    const ACTION_BOUND: f64;
    const RESET_NOISE: ResetNoise;

    /// The coordinate whose change over a step, divided by `dt`, is the forward velocity.
    /// Read right after stepping with no extra `mj_forward`, so for quantities derived
    /// from kinematics (Ant, Humanoid) it lags one physics step, as in gymnasium.
    fn x_position(sim: &Sim) -> f64 {
        sim.qpos()[0]
    }

    /// Appends the observation of the current state to `obs`.
    fn observe(sim: &Sim, obs: &mut Vec<f64>);

    /// Reward and termination after the physics step. `action` is the raw action.
    fn outcome(sim: &Sim, x_velocity: f64, action: &[f64]) -> Outcome;
}

/// The static description of task `T`.
pub(crate) fn spec_of<T: Task>() -> EnvSpec {
    EnvSpec {
        id: T::ID,
        obs_dim: T::OBS_DIM,
        act_dim: T::ACT_DIM,
        action_low: vec![-T::ACTION_BOUND; T::ACT_DIM],
        action_high: vec![T::ACTION_BOUND; T::ACT_DIM],
        max_episode_steps: MAX_EPISODE_STEPS,
    }
}

/// A gymnasium v5 environment for task `T`, including its 1000-step time limit.
pub(crate) struct TaskEnv<T: Task> {
    sim: Sim,
    spec: EnvSpec,
    /// The state `mj_makeData` leaves (qpos0, zero velocity): the centre of the reset noise.
    init_qpos: Vec<f64>,
    init_qvel: Vec<f64>,
    /// Steps since the last reset, for the time limit.
    elapsed: usize,
    _task: PhantomData<fn() -> T>,
}

impl<T: Task> TaskEnv<T> {
    /// Loads the model and checks it has the shape `T` expects, so a wrong or changed XML
    /// fails here with a clear message rather than as an index panic mid-training.
    pub fn new() -> Result<Self, EnvError> {
        let sim = Sim::load(T::XML, T::FRAME_SKIP)?;
        let mismatch = |what: String| EnvError::ModelMismatch { id: T::ID, what };
        let model = sim.model();
        if model.nu() as usize != T::ACT_DIM {
            return Err(mismatch(format!(
                "{} actuators, expected {}",
                model.nu(),
                T::ACT_DIM
            )));
        }
        let bound = T::ACTION_BOUND;
        if let Some((i, r)) =
            (model.actuator_ctrlrange().iter().enumerate()).find(|(_, r)| **r != [-bound, bound])
        {
            return Err(mismatch(format!(
                "actuator {i} has ctrlrange {r:?}, expected [-{bound}, {bound}]"
            )));
        }
        let mut obs = Vec::new();
        T::observe(&sim, &mut obs);
        if obs.len() != T::OBS_DIM {
            return Err(mismatch(format!(
                "observation has {} components, expected {}",
                obs.len(),
                T::OBS_DIM
            )));
        }
        Ok(Self {
            init_qpos: sim.qpos().to_vec(),
            init_qvel: sim.qvel().to_vec(),
            sim,
            spec: spec_of::<T>(),
            elapsed: 0,
            _task: PhantomData,
        })
    }

    fn observe(&self) -> Vec<f64> {
        let mut obs = Vec::with_capacity(T::OBS_DIM);
        T::observe(&self.sim, &mut obs);
        obs
    }

    fn check_action(action: &[f64]) -> Result<(), EnvError> {
        if action.len() != T::ACT_DIM {
            return Err(EnvError::ActionLength {
                id: T::ID,
                expected: T::ACT_DIM,
                got: action.len(),
            });
        }
        match action.iter().enumerate().find(|(_, a)| !a.is_finite()) {
            Some((index, &value)) => Err(EnvError::NonFiniteAction {
                id: T::ID,
                index,
                value,
            }),
            None => Ok(()),
        }
    }
}

impl<T: Task> Env for TaskEnv<T> {
    fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    fn reset(&mut self, seed: u64) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let (scale, normal_qvel) = match T::RESET_NOISE {
            ResetNoise::Uniform(s) => (s, false),
            ResetNoise::UniformNormal(s) => (s, true),
        };
        // Same draw order as gymnasium: all of qpos first, then all of qvel.
        let qpos: Vec<f64> = (self.init_qpos.iter())
            .map(|q| q + rng.random_range(-scale..scale))
            .collect();
        let qvel: Vec<f64> = (self.init_qvel.iter())
            .map(|v| match normal_qvel {
                true => v + scale * rng.sample::<f64, _>(StandardNormal),
                false => v + rng.random_range(-scale..scale),
            })
            .collect();
        self.sim.reset_to(&qpos, &qvel);
        self.elapsed = 0;
        self.observe()
    }

    fn step(&mut self, action: &[f64]) -> Result<Step, EnvError> {
        Self::check_action(action)?;
        let x_before = T::x_position(&self.sim);
        self.sim.step(action);
        let x_velocity = (T::x_position(&self.sim) - x_before) / self.sim.dt();
        let obs = self.observe();
        let Outcome { reward, terminated } = T::outcome(&self.sim, x_velocity, action);
        self.elapsed += 1;
        Ok(Step {
            obs,
            reward,
            terminated,
            // gymnasium's TimeLimit: set on step 1000 (and any later step), whether or
            // not the step also terminated.
            truncated: self.elapsed >= MAX_EPISODE_STEPS,
        })
    }

    fn set_state(&mut self, qpos: &[f64], qvel: &[f64]) -> Result<Vec<f64>, EnvError> {
        let expected = (self.init_qpos.len(), self.init_qvel.len());
        if (qpos.len(), qvel.len()) != expected {
            return Err(EnvError::StateLength {
                id: T::ID,
                expected,
                got: (qpos.len(), qvel.len()),
            });
        }
        if !qpos.iter().chain(qvel).all(|x| x.is_finite()) {
            return Err(EnvError::NonFiniteState { id: T::ID });
        }
        self.sim.reset_to(qpos, qvel);
        self.elapsed = 0;
        Ok(self.observe())
    }
}

/// Σ xᵢ² (the control and contact costs).
pub(crate) fn sum_sq<'a>(xs: impl IntoIterator<Item = &'a f64>) -> f64 {
    xs.into_iter().map(|x| x * x).sum()
}

/// `np.clip(x, -bound, bound)`.
pub(crate) fn clip(x: f64, bound: f64) -> f64 {
    x.clamp(-bound, bound)
}

/// Appends `xs` clipped to ±`bound`.
pub(crate) fn extend_clipped<'a>(
    obs: &mut Vec<f64>,
    xs: impl IntoIterator<Item = &'a f64>,
    bound: f64,
) {
    obs.extend(xs.into_iter().map(|&x| clip(x, bound)));
}
