//! Conformance of `sim::env` with gymnasium 1.4's MuJoCo v5 environments (DESIGN §4),
//! plus the env API's edge cases (time limit, bad ids and actions, VecEnv auto-reset).
//!
//! The reference traces come from `tests/python/gym_reference.py`, run once by the venv
//! python (`<deps>/python`) for every task and seed, with random actions generated here
//! and passed as JSON (floats round-trip exactly both ways). Python resets gymnasium with
//! the seed; we start from the same qpos/qvel with `set_state` and replay the actions.
//! Observations must be bit-identical, rewards within 1e-6, flags identical.
//!
//! When an episode ends early (the walkers fall within tens of steps under random
//! actions), python resets (numpy's RNG continues) and starts a new segment; we
//! `set_state` to the new segment's initial state and go on, so every action is compared
//! and the reset path is covered many times per seed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sim::env::{self, EnvError, EnvSpec, VecEnv};

const SEEDS: [u64; 3] = [0, 1, 2];
const STEPS_PER_SEED: usize = 300;
/// HalfCheetah never terminates: its first seed runs past the time limit, so python's
/// truncation at step 1000 (and the reset after it) is compared too.
const CHEETAH_LONG_RUN: usize = 1010;
/// Actions are drawn from ±1.1× the bounds: gymnasium does not clip, and the costs see
/// the raw action while MuJoCo clamps the control, so out-of-range actions must agree too.
const ACTION_OVERSHOOT: f64 = 1.1;
const REWARD_TOLERANCE: f64 = 1e-6;

struct Job {
    id: &'static str,
    seed: u64,
    actions: Vec<Vec<f64>>,
}

fn jobs() -> Vec<Job> {
    let mut jobs = Vec::new();
    for spec in env::specs() {
        for seed in SEEDS {
            let steps = match (spec.id, seed) {
                ("HalfCheetah-v5", 0) => CHEETAH_LONG_RUN,
                _ => STEPS_PER_SEED,
            };
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED);
            let actions = (0..steps).map(|_| random_action(&spec, &mut rng)).collect();
            jobs.push(Job {
                id: spec.id,
                seed,
                actions,
            });
        }
    }
    jobs
}

fn random_action(spec: &EnvSpec, rng: &mut StdRng) -> Vec<f64> {
    (spec.action_low.iter().zip(&spec.action_high))
        .map(|(lo, hi)| ACTION_OVERSHOOT * rng.random_range(*lo..*hi))
        .collect()
}

/// Runs the reference python once for every job; shared by the per-task tests.
fn reference() -> &'static (Vec<Job>, Vec<Value>) {
    static REFERENCE: OnceLock<(Vec<Job>, Vec<Value>)> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let jobs = jobs();
        let dir =
            std::env::temp_dir().join(format!("flame-env-conformance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (input, output) = (dir.join("jobs.json"), dir.join("traces.json"));
        let payload = json!({
            "jobs": jobs.iter().map(|j| json!({"id": j.id, "seed": j.seed, "actions": j.actions}))
                .collect::<Vec<_>>()
        });
        std::fs::write(&input, serde_json::to_vec(&payload).unwrap()).unwrap();
        run_python(&dir, &input, &output);
        let traces: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let traces = traces["traces"].as_array().unwrap().clone();
        assert_eq!(traces.len(), jobs.len());
        (jobs, traces)
    })
}

/// Runs the reference in `dir`, where MuJoCo's default log handler (python's) may write
/// its `MUJOCO_LOG.TXT`, so it does not land in the source tree.
fn run_python(dir: &Path, input: &Path, output: &Path) {
    let python = env::reference_python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/gym_reference.py");
    assert!(
        python.exists(),
        "reference python {} not found: run scripts/setup.sh",
        python.display()
    );
    let result = Command::new(&python)
        .arg(&script)
        .arg(input)
        .arg(output)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        result.status.success(),
        "{} {} failed:\n{}",
        python.display(),
        script.display(),
        String::from_utf8_lossy(&result.stderr)
    );
}

fn floats(v: &Value) -> Vec<f64> {
    (v.as_array().unwrap().iter())
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Largest |a - b| over two observations, after checking they are bit-identical.
fn assert_obs_identical(ours: &[f64], theirs: &[f64], context: &str) -> f64 {
    assert_eq!(ours.len(), theirs.len(), "{context}: observation length");
    let max_diff = (ours.iter().zip(theirs))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    if let Some(i) = (0..ours.len()).find(|&i| ours[i].to_bits() != theirs[i].to_bits()) {
        panic!(
            "{context}: obs[{i}] = {:e}, gymnasium {:e} (max |diff| {max_diff:e})",
            ours[i], theirs[i]
        );
    }
    max_diff
}

/// Replays every job of task `id` and compares it step by step with gymnasium.
fn conformance(id: &str) {
    let (jobs, traces) = reference();
    let mut env = env::make(id).unwrap();
    let (mut steps, mut segments, mut terminations, mut truncations) = (0, 0, 0, 0);
    let (mut max_obs_diff, mut max_reward_diff) = (0.0_f64, 0.0_f64);
    for (job, trace) in jobs.iter().zip(traces).filter(|(j, _)| j.id == id) {
        let mut actions = job.actions.iter();
        for (k, segment) in trace["segments"].as_array().unwrap().iter().enumerate() {
            let context = format!("{id} seed {} segment {k}", job.seed);
            let obs = env
                .set_state(&floats(&segment["qpos"]), &floats(&segment["qvel"]))
                .unwrap();
            assert_obs_identical(&obs, &floats(&segment["obs"]), &format!("{context} reset"));
            segments += 1;
            for (t, expected) in segment["steps"].as_array().unwrap().iter().enumerate() {
                let context = format!("{context} step {t}");
                let step = env.step(actions.next().unwrap()).unwrap();
                let obs_diff = assert_obs_identical(&step.obs, &floats(&expected["obs"]), &context);
                let reward_diff = (step.reward - expected["reward"].as_f64().unwrap()).abs();
                assert!(
                    reward_diff <= REWARD_TOLERANCE,
                    "{context}: reward {} vs gymnasium {}",
                    step.reward,
                    expected["reward"]
                );
                assert_eq!(
                    step.terminated,
                    expected["terminated"].as_bool().unwrap(),
                    "{context}: terminated"
                );
                assert_eq!(
                    step.truncated,
                    expected["truncated"].as_bool().unwrap(),
                    "{context}: truncated"
                );
                max_obs_diff = max_obs_diff.max(obs_diff);
                max_reward_diff = max_reward_diff.max(reward_diff);
                terminations += step.terminated as usize;
                truncations += step.truncated as usize;
                steps += 1;
            }
        }
        assert!(
            actions.next().is_none(),
            "{id} seed {}: unused actions",
            job.seed
        );
    }
    println!(
        "{id}: {steps} steps in {segments} segments ({terminations} terminated, {truncations} \
         truncated), max obs diff {max_obs_diff:e}, max reward diff {max_reward_diff:e}"
    );
    assert!(steps >= SEEDS.len() * STEPS_PER_SEED);
}

#[test]
fn half_cheetah_matches_gymnasium() {
    conformance("HalfCheetah-v5");
}

#[test]
fn hopper_matches_gymnasium() {
    conformance("Hopper-v5");
}

#[test]
fn walker2d_matches_gymnasium() {
    conformance("Walker2d-v5");
}

#[test]
fn ant_matches_gymnasium() {
    conformance("Ant-v5");
}

#[test]
fn humanoid_matches_gymnasium() {
    conformance("Humanoid-v5");
}

#[test]
fn inverted_pendulum_matches_gymnasium() {
    conformance("InvertedPendulum-v5");
}

#[test]
fn every_task_is_checked_against_gymnasium() {
    // Guards against a task being added to the registry without a conformance test.
    let checked = [
        "HalfCheetah-v5",
        "Hopper-v5",
        "Walker2d-v5",
        "Ant-v5",
        "Humanoid-v5",
        "InvertedPendulum-v5",
    ];
    assert_eq!(env::ids(), checked);
}

#[test]
fn truncates_at_step_1000() {
    let mut env = env::make("HalfCheetah-v5").unwrap();
    env.reset(7);
    let zero = vec![0.0; env.spec().act_dim];
    for t in 1..=1000 {
        let step = env.step(&zero).unwrap();
        assert!(!step.terminated, "HalfCheetah never terminates");
        assert_eq!(step.truncated, t == 1000, "step {t}");
    }
    // A reset starts a fresh time limit.
    env.reset(8);
    assert!(!env.step(&zero).unwrap().truncated);
}

#[test]
fn unknown_id_lists_valid_ids() {
    let err = env::make("Hopper-v4").err().unwrap();
    assert!(matches!(err, EnvError::UnknownId { .. }));
    let message = err.to_string();
    assert!(message.contains("Hopper-v4"), "{message}");
    for id in env::ids() {
        assert!(message.contains(id), "{message} should list {id}");
    }
    assert!(env::spec("Nope").is_err());
}

#[test]
fn bad_actions_are_errors_and_leave_the_state_alone() {
    let mut env = env::make("Hopper-v5").unwrap();
    let obs = env.reset(3);
    let bad = [
        vec![0.0; 2],
        vec![0.0; 4],
        vec![0.0, f64::NAN, 0.0],
        vec![f64::INFINITY, 0.0, 0.0],
        vec![0.0, 0.0, f64::NEG_INFINITY],
    ];
    for action in &bad {
        let err = env.step(action).unwrap_err();
        assert!(
            matches!(
                err,
                EnvError::ActionLength { .. } | EnvError::NonFiniteAction { .. }
            ),
            "{action:?}: {err}"
        );
        assert!(err.to_string().contains("Hopper-v5"), "{err}");
    }
    // Nothing was simulated: the first good step matches a fresh env's.
    let mut fresh = env::make("Hopper-v5").unwrap();
    assert_eq!(fresh.reset(3), obs);
    assert_eq!(env.step(&[0.1; 3]).unwrap(), fresh.step(&[0.1; 3]).unwrap());
    // set_state checks its input too.
    assert!(env.set_state(&[0.0; 5], &[0.0; 6]).is_err());
    assert!(env.set_state(&[f64::NAN; 6], &[0.0; 6]).is_err());
}

#[test]
fn reset_is_seeded_and_noisy() {
    for spec in env::specs() {
        let mut a = env::make(spec.id).unwrap();
        let mut b = env::make(spec.id).unwrap();
        let first = a.reset(11);
        assert_eq!(first.len(), spec.obs_dim);
        assert_eq!(first, b.reset(11), "{}: same seed, same state", spec.id);
        assert_ne!(first, b.reset(12), "{}: other seed, other state", spec.id);
    }
}

#[test]
fn vec_env_auto_resets_and_reports_episodes() {
    // InvertedPendulum falls within a few steps under a constant full push.
    let mut vec_env = VecEnv::new("InvertedPendulum-v5", 5, 42).unwrap();
    assert_eq!(vec_env.len(), 5);
    let start: Vec<Vec<f64>> = vec_env.obs().to_vec();
    assert!(
        start.windows(2).all(|w| w[0] != w[1]),
        "envs get distinct seeds"
    );
    let push = vec![3.0; 5];
    let mut ended = 0;
    for _ in 0..100 {
        let out = vec_env.step(&push).unwrap();
        for (i, (step, finished)) in out.steps.iter().zip(&out.finished).enumerate() {
            assert_eq!(step.done(), finished.is_some());
            if let Some(stats) = finished {
                ended += 1;
                assert!(step.terminated && stats.len > 0);
                assert_eq!(stats.ret, (stats.len - 1) as f64, "1 per step but the last");
                // The next observation is a fresh reset, not the final one.
                assert_ne!(vec_env.obs()[i], step.obs);
                assert!(vec_env.obs()[i][1].abs() <= 0.01);
            } else {
                assert_eq!(vec_env.obs()[i], step.obs);
            }
        }
    }
    assert!(ended >= 5, "every env finished an episode");
    // Batch errors leave everything untouched.
    let before = vec_env.obs().to_vec();
    assert!(vec_env.step(&[0.0; 4]).is_err());
    assert!(vec_env.step(&[0.0, 0.0, f64::NAN, 0.0, 0.0]).is_err());
    assert_eq!(vec_env.obs(), &before[..]);
    assert!(VecEnv::new("InvertedPendulum-v5", 0, 0).is_err());
}

/// Runs in a child process (see `missing_assets_names_path_and_setup`) so that setting
/// `FLAME_MUJOCO_ASSETS` cannot race with the other tests; a no-op otherwise.
#[test]
fn missing_assets_child() {
    if std::env::var_os("FLAME_ENV_TEST_CHILD").is_none() {
        return;
    }
    let err = env::make("Hopper-v5").err().unwrap();
    let message = err.to_string();
    assert!(matches!(err, EnvError::MissingAssets { .. }), "{message}");
    assert!(
        message.contains("/nonexistent/assets/hopper.xml"),
        "{message}"
    );
    assert!(message.contains("scripts/setup.sh"), "{message}");
    // specs need no assets.
    assert_eq!(env::specs().len(), 6);
}

#[test]
fn missing_assets_names_path_and_setup() {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "missing_assets_child"])
        .env("FLAME_ENV_TEST_CHILD", "1")
        .env("FLAME_MUJOCO_ASSETS", "/nonexistent/assets")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success() && stdout.contains("1 passed"),
        "{stdout}"
    );
}
