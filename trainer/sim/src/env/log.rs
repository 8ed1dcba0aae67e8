//! Routes MuJoCo's log messages to stderr, each distinct message once per process.
//!
//! MuJoCo's default handler prints warnings to stdout and appends them to
//! `MUJOCO_LOG.TXT` in the current directory. gymnasium 1.4's `half_cheetah.xml` uses the
//! deprecated `settotalmass` attribute, so every HalfCheetah load would print a warning
//! into the trainer's stdout and litter the user's directory. Simulation warnings (e.g.
//! "Nan, Inf or huge value in QACC") still reach stderr, once each.

use std::io::Write;
use std::sync::{Mutex, Once};

use mujoco_rs::prelude::{set_log_handler, MjLogMessage, MjtLogLevel};

/// Installs the handler; called by every model load before touching MuJoCo.
pub(crate) fn route_mujoco_log() {
    static INSTALL: Once = Once::new();
    // SAFETY: `set_log_handler` must not race with other MuJoCo use. Every MuJoCo call in
    // this crate happens after a model load, and every load passes through this `Once`,
    // which blocks concurrent callers until the handler is in place.
    INSTALL.call_once(|| unsafe { set_log_handler(to_stderr) });
}

/// The handler: runs on whichever thread logs, across the FFI boundary, so it must be
/// thread-safe and must not panic (hence no `eprintln!`, which panics on a closed stderr).
/// Debug and info messages (mujoco-rs enables every info topic, e.g. compile timings) are
/// dropped, as MuJoCo's default handler does.
fn to_stderr(message: &MjLogMessage) {
    if matches!(
        message.level(),
        MjtLogLevel::mjLOG_DEBUG | MjtLogLevel::mjLOG_INFO
    ) {
        return;
    }
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let text = match message.body() {
        Some(body) if !body.is_empty() => format!("{}\n{body}", message.subject()),
        _ => message.subject().to_string(),
    };
    let mut seen = SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !seen.contains(&text) {
        let _ = writeln!(std::io::stderr(), "MuJoCo {:?}: {text}", message.level());
        seen.push(text);
    }
}
