//! Where the native dependencies live at run time (DESIGN §3).
//!
//! The task XMLs are read from the gymnasium wheel that `scripts/setup.sh` installs,
//! never from copies in the repository, so the models are exactly gymnasium 1.4's.

use std::path::PathBuf;

/// The dependency directory: `FLAME_DEPS_DIR` if set when the program runs, else the one
/// the build used (baked in by `trainer/build.rs`), so installed binaries work without
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
/// run the reference environments: `<deps>/python`.
///
/// If that is a symlink we follow it one level (to `<venv>/bin/python`): Python finds its
/// venv from the path it was started by (`pyvenv.cfg` next to or above the executable),
/// so started through a link outside the venv it would run without the venv's packages.
/// Resolving fully would be as wrong, since `<venv>/bin/python` itself links to the base
/// interpreter.
pub fn reference_python() -> PathBuf {
    let link = deps_dir().join("python");
    match std::fs::read_link(&link) {
        // A relative target is relative to the link's directory.
        Ok(target) => link
            .parent()
            .map_or(target.clone(), |dir| dir.join(&target)),
        Err(_) => link,
    }
}
