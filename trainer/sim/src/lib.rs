//! What both the trainer and the lab bench need, without libtorch:
//!
//! - [`env`]: the MuJoCo v5 tasks (gymnasium-exact), the vector env and its benchmark;
//! - [`rollout`]: the episode loop;
//! - [`run_dir`]: the run directory that `trainer` writes and `trainer export` and
//!   `tools hil --float-run` read;
//! - [`float_policy`]: the float reference policy, structured as the `runtime` evaluates
//!   it and read from a run's safetensors checkpoint.
//!
//! Training (replay, networks, agents, quantization) stays in the tch-linked `trainer`;
//! `tools` depends on this crate and on `runtime` only, so a bench with a board on USB
//! installs no torch (DESIGN §2).

pub mod env;
pub mod float_policy;
pub mod rollout;
pub mod run_dir;
