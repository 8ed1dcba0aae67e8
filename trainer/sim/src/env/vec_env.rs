//! Several environments of one task stepped together, with auto-reset.
//!
//! Stepping is sequential: one MuJoCo step is tens of microseconds, so threads would buy
//! little on the 2-core machines we train on and would compete with libtorch for them.

use super::{make, Env, EnvError, EnvSpec, Step};

/// The return and length of an episode that just ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpisodeStats {
    pub ret: f64,
    pub len: usize,
}

/// The result of stepping every env once.
#[derive(Debug, Clone, PartialEq)]
pub struct VecStep {
    /// Per env, exactly what that env's step returned: `obs` is the true next observation,
    /// the final one where the episode ended, so the trainer can bootstrap through
    /// truncation from it. The observation to act on next is [`VecEnv::obs`].
    pub steps: Vec<Step>,
    /// Per env, the stats of the episode this step ended, if it ended one (the env has
    /// then already been reset).
    pub finished: Vec<Option<EpisodeStats>>,
}

/// `n` envs of one task with auto-reset at episode end.
///
/// Env `i`'s `k`-th episode is seeded with a hash of (base seed, i, k), so runs are
/// reproducible and no two episodes share their reset noise.
pub struct VecEnv {
    envs: Vec<Box<dyn Env>>,
    /// The observation each env's next action should be chosen from.
    obs: Vec<Vec<f64>>,
    base_seed: u64,
    /// Per env: episodes started so far.
    episodes: Vec<u64>,
    /// Per env: return and length of the running episode.
    running: Vec<EpisodeStats>,
    /// Per env: the actions of the running episode, so [`VecEnv::snapshot`] can describe
    /// the exact simulator state without reading MuJoCo's internals.
    actions: Vec<Vec<f64>>,
}

/// Everything needed to rebuild a [`VecEnv`] exactly where it was (for training
/// checkpoints): each env's running episode is re-simulated from its reset seed and
/// actions, which MuJoCo's determinism makes bit-identical (solver warm starts included).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VecEnvSnapshot {
    pub id: String,
    pub base_seed: u64,
    /// Per env: episodes started so far (the running one included).
    pub episodes: Vec<u64>,
    /// Per env: the running episode's actions, flattened.
    pub actions: Vec<Vec<f64>>,
}

impl VecEnv {
    /// Makes `n` envs of task `id` and resets them.
    pub fn new(id: &str, n: usize, seed: u64) -> Result<Self, EnvError> {
        if n == 0 {
            return Err(EnvError::Batch {
                what: "needs at least one env".into(),
            });
        }
        let envs = (0..n).map(|_| make(id)).collect::<Result<Vec<_>, _>>()?;
        let mut vec_env = Self {
            envs,
            obs: Vec::new(),
            base_seed: seed,
            episodes: vec![0; n],
            running: vec![EpisodeStats { ret: 0.0, len: 0 }; n],
            actions: vec![Vec::new(); n],
        };
        vec_env.obs = (0..n).map(|i| vec_env.reset_env(i)).collect();
        Ok(vec_env)
    }

    pub fn spec(&self) -> &EnvSpec {
        self.envs[0].spec()
    }

    pub fn len(&self) -> usize {
        self.envs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.envs.is_empty()
    }

    /// Per env, the observation to act on next.
    pub fn obs(&self) -> &[Vec<f64>] {
        &self.obs
    }

    /// Steps env `i` with `actions[i * act_dim..(i + 1) * act_dim]` (row-major, as a
    /// `[n, act_dim]` tensor lays it out), resetting every env whose episode ended. The
    /// whole batch is validated first, so an error leaves every env untouched.
    pub fn step(&mut self, actions: &[f64]) -> Result<VecStep, EnvError> {
        let act_dim = self.spec().act_dim;
        if actions.len() != self.len() * act_dim {
            return Err(EnvError::Batch {
                what: format!(
                    "got {} action values for {} envs of action size {act_dim}",
                    actions.len(),
                    self.len()
                ),
            });
        }
        if let Some(i) = actions.iter().position(|a| !a.is_finite()) {
            return Err(EnvError::NonFiniteAction {
                id: self.spec().id,
                index: i % act_dim,
                value: actions[i],
            });
        }
        let mut steps = Vec::with_capacity(self.len());
        let mut finished = Vec::with_capacity(self.len());
        for (i, action) in actions.chunks_exact(act_dim).enumerate() {
            let step = self.envs[i].step(action)?;
            self.actions[i].extend_from_slice(action);
            let stats = &mut self.running[i];
            stats.ret += step.reward;
            stats.len += 1;
            if step.done() {
                finished.push(Some(*stats));
                self.obs[i] = self.reset_env(i);
            } else {
                finished.push(None);
                self.obs[i].clone_from(&step.obs);
            }
            steps.push(step);
        }
        Ok(VecStep { steps, finished })
    }

    /// Resets env `i` with its next episode seed and returns the first observation.
    fn reset_env(&mut self, i: usize) -> Vec<f64> {
        let seed = episode_seed(self.base_seed, i, self.episodes[i]);
        self.episodes[i] += 1;
        self.running[i] = EpisodeStats { ret: 0.0, len: 0 };
        self.actions[i].clear();
        self.envs[i].reset(seed)
    }

    /// The state to checkpoint (see [`VecEnvSnapshot`]).
    pub fn snapshot(&self) -> VecEnvSnapshot {
        VecEnvSnapshot {
            id: self.spec().id.to_string(),
            base_seed: self.base_seed,
            episodes: self.episodes.clone(),
            actions: self.actions.clone(),
        }
    }

    /// Rebuilds the envs of `snapshot`: each running episode is reset with its seed and
    /// replayed action by action, so observations, returns and the time limit continue
    /// exactly as in the run that took the snapshot.
    pub fn restore(snapshot: &VecEnvSnapshot) -> Result<Self, EnvError> {
        let n = snapshot.episodes.len();
        let bad = |what: String| EnvError::Batch { what };
        if n == 0 || snapshot.actions.len() != n || snapshot.episodes.contains(&0) {
            return Err(bad("snapshot has inconsistent per-env lists".into()));
        }
        let mut vec_env = Self::new(&snapshot.id, n, snapshot.base_seed)?;
        let act_dim = vec_env.spec().act_dim;
        for i in 0..n {
            vec_env.episodes[i] = snapshot.episodes[i] - 1;
            vec_env.obs[i] = vec_env.reset_env(i);
            let actions = &snapshot.actions[i];
            if !actions.len().is_multiple_of(act_dim) {
                return Err(bad(format!("snapshot env {i} has a partial action")));
            }
            for action in actions.chunks_exact(act_dim) {
                let step = vec_env.envs[i].step(action)?;
                if step.done() {
                    return Err(bad(format!("snapshot env {i}'s episode ends early")));
                }
                vec_env.running[i].ret += step.reward;
                vec_env.running[i].len += 1;
                vec_env.actions[i].extend_from_slice(action);
                vec_env.obs[i] = step.obs;
            }
        }
        Ok(vec_env)
    }
}

/// A well-mixed seed for env `env`'s episode `episode` (SplitMix64 finalizer over the
/// three inputs), so neighbouring base seeds do not produce overlapping streams.
fn episode_seed(base: u64, env: usize, episode: u64) -> u64 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    mix(mix(mix(base) ^ env as u64) ^ episode)
}
