//! Helpers of the tests that drive [`Trainer`] in their own process (`train_loop.rs`,
//! `seed_group.rs`), included by path.

use std::collections::HashMap;
use std::path::PathBuf;

use runtime::blob::Algorithm;
use sim::run_dir::Algo;
use tch::Tensor;
use trainer::agents::flame::FlameConfig;
use trainer::threads::Threads;
use trainer::train::{EvalRow, TrainConfig, Trainer};

/// `algo` on InvertedPendulum with small networks (a few seconds): 200 warm-up steps,
/// batch 32, evaluations of 2 episodes, a checkpoint every 300 steps, one thread. The
/// caller sets the budget and the evaluation schedule.
pub fn tiny(algo: Algo) -> TrainConfig {
    let mut c = TrainConfig::defaults(algo, "InvertedPendulum-v5");
    c.learning_starts = 200;
    c.batch_size = 32;
    c.buffer_size = 10_000;
    c.eval_episodes = 2;
    c.checkpoint_every = 300;
    c.progress_secs = 0.0;
    c.threads = Threads::Fixed(1);
    if let Some(sac) = c.sac.as_mut() {
        sac.policy_hidden = vec![32, 32];
        sac.critic_hidden = vec![32, 32];
    }
    if let Some(flame) = c.flame.as_mut() {
        *flame = FlameConfig {
            alpha_every: 4,
            ..FlameConfig::small_for_tests(Algorithm::FlameM)
        };
    }
    c
}

/// Training reseeds torch's one global generator before every agent call; tests in one
/// binary run on parallel threads, so each holds this lock to keep its draws its own.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh, empty path in the temp directory for this test process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flame-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// An evaluation row without its timing fields.
pub fn timeless(rows: &[EvalRow]) -> Vec<EvalRow> {
    rows.iter()
        .map(|r| EvalRow {
            wall_s: 0.0,
            updates_per_s: 0.0,
            env_steps_per_s: 0.0,
            ..r.clone()
        })
        .collect()
}

/// The agent's whole state (weights, optimizer moments, α), by name.
pub fn agent_state(t: &Trainer) -> HashMap<String, Tensor> {
    t.agent.state().into_iter().collect()
}
