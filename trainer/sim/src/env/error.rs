//! Errors of the environment layer: every bad input gets a message that says what was
//! wrong and what to do about it (DESIGN §9), instead of a panic or a silent NaN run.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong when making or stepping an environment.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvError {
    /// `make` was asked for an id we do not implement.
    UnknownId {
        id: String,
        valid: Vec<&'static str>,
    },
    /// The action has the wrong number of components.
    ActionLength {
        id: &'static str,
        expected: usize,
        got: usize,
    },
    /// The action contains NaN or ±Inf. MuJoCo would happily integrate it (and warn on
    /// its log), poisoning the whole episode, so we refuse it at the boundary.
    NonFiniteAction {
        id: &'static str,
        index: usize,
        value: f64,
    },
    /// `set_state` got qpos/qvel of the wrong length.
    StateLength {
        id: &'static str,
        expected: (usize, usize),
        got: (usize, usize),
    },
    /// `set_state` got a NaN or ±Inf.
    NonFiniteState { id: &'static str },
    /// The task XML is not where we look for it.
    MissingAssets { path: PathBuf },
    /// MuJoCo could not compile the XML.
    Load { path: PathBuf, message: String },
    /// The XML compiled but does not have the shape this task expects (wrong file, or a
    /// gymnasium release with different models).
    ModelMismatch { id: &'static str, what: String },
    /// A vectorized env was asked for zero envs or handed a wrongly sized batch.
    Batch { what: String },
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvError::UnknownId { id, valid } => {
                write!(
                    f,
                    "unknown environment id {id:?}; valid ids: {}",
                    valid.join(", ")
                )
            }
            EnvError::ActionLength { id, expected, got } => {
                write!(f, "{id}: action has {got} components, expected {expected}")
            }
            EnvError::NonFiniteAction { id, index, value } => {
                write!(
                    f,
                    "{id}: action[{index}] is {value}; actions must be finite"
                )
            }
            EnvError::StateLength { id, expected, got } => write!(
                f,
                "{id}: set_state got qpos/qvel of lengths {}/{}, expected {}/{}",
                got.0, got.1, expected.0, expected.1
            ),
            EnvError::NonFiniteState { id } => {
                write!(f, "{id}: set_state got a non-finite qpos/qvel value")
            }
            EnvError::MissingAssets { path } => write!(
                f,
                "MuJoCo task model {} not found: run scripts/setup.sh (it links the gymnasium \
                 assets into .deps/mujoco-assets), or point FLAME_MUJOCO_ASSETS at a directory \
                 holding gymnasium 1.4's envs/mujoco/assets",
                path.display()
            ),
            EnvError::Load { path, message } => {
                write!(f, "MuJoCo could not load {}: {message}", path.display())
            }
            EnvError::ModelMismatch { id, what } => write!(
                f,
                "{id}: the task XML does not match gymnasium 1.4's model: {what}"
            ),
            EnvError::Batch { what } => write!(f, "vectorized env: {what}"),
        }
    }
}

impl std::error::Error for EnvError {}
