//! Where the native dependencies live at run time (DESIGN §3).
//!
//! The task XMLs are read from the gymnasium wheel that `scripts/setup.sh` installs,
//! never from copies in the repository, so the models are exactly gymnasium 1.4's.

use std::path::PathBuf;

/// The dependency directory: `FLAME_DEPS_DIR` if set when the program runs, else the one
/// the build used (baked in by `trainer/sim/build.rs`), so installed binaries work without
/// any environment variables.
pub fn deps_dir() -> PathBuf {
    std::env::var_os("FLAME_DEPS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("FLAME_DEFAULT_DEPS")))
}

/// The directory holding the task XMLs: `FLAME_MUJOCO_ASSETS` if set, else
/// `<deps>/mujoco-assets` (a link to gymnasium's `envs/mujoco/assets`).
pub fn assets_dir() -> PathBuf {
    std::env::var_os("FLAME_MUJOCO_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| deps_dir().join("mujoco-assets"))
}

/// The venv python with gymnasium 1.4 and mujoco 3.17, used by the conformance tests to
/// run the reference environments: `<deps>/python`, a wrapper script that `setup.sh`
/// writes (a plain symlink would start Python outside its venv).
pub fn reference_python() -> PathBuf {
    deps_dir().join("python")
}
