//! The host-in-the-loop runner: MuJoCo on the host, the policy on the device.
//!
//! Each step sends the observation to the device (`Act`), applies the device's action to
//! the env, and checks it bit for bit against the host `runtime` on the same observation
//! and mode. Link faults (timeouts, frame errors reported by either side) are retried with
//! a fresh sequence number and counted; they never pass unseen.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use runtime::wire::CostUnit;
use runtime::{NoiseMode, Policy, Scratch};
use serde::Serialize;
use trainer::env;
use trainer::rollout::{run_episode, to_f32};

use crate::link::{DeviceLink, LinkError};

/// How the base sample is drawn on both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeArg {
    /// z = 0.
    Deterministic,
    /// z from the runtime's integer generator, seeded per step.
    Stochastic,
}

#[derive(Debug, Clone)]
pub struct HilOptions {
    pub episodes: usize,
    /// Episode e resets the env with seed `seed + e`.
    pub seed: u64,
    pub mode: ModeArg,
    /// Stop an episode after this many steps (the env's own limit otherwise).
    pub max_steps: Option<usize>,
    /// Attempts per step before the run fails.
    pub attempts: usize,
    /// A run directory whose float policy is rolled out on the same seeds for comparison.
    pub float_run: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EpisodeReport {
    pub seed: u64,
    pub steps: usize,
    pub total_return: f64,
    pub terminated: bool,
    /// Steps whose device action equals the host runtime's bit for bit.
    pub bit_exact_steps: usize,
    /// Failed attempts (timeouts, corrupted frames, device errors) that were retried.
    pub link_errors: usize,
    /// The float policy's return on the same seed, when a run directory was given.
    pub float_return: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HilReport {
    pub env_id: String,
    pub blob_hash: u32,
    pub mode: ModeArg,
    pub cost_unit: Option<String>,
    pub episodes: Vec<EpisodeReport>,
    pub cost_min: u32,
    pub cost_median: u32,
    pub cost_max: u32,
    /// The float return recorded in the blob's provenance at export, if any.
    pub export_float_return: Option<f32>,
    pub export_int8_return: Option<f32>,
}

impl HilReport {
    pub fn bit_exact(&self) -> bool {
        self.episodes.iter().all(|e| e.bit_exact_steps == e.steps)
    }
    pub fn mean_return(&self) -> f64 {
        self.episodes.iter().map(|e| e.total_return).sum::<f64>()
            / self.episodes.len().max(1) as f64
    }
}

impl std::fmt::Display for HilReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "host-in-the-loop: {} | blob crc32 {:#010x} | mode {:?}",
            self.env_id, self.blob_hash, self.mode
        )?;
        writeln!(
            f,
            "{:>7} {:>6} {:>6} {:>12} {:>12} {:>11} {:>11}",
            "episode", "seed", "steps", "return", "float ret", "bit-exact", "link errs"
        )?;
        for (i, e) in self.episodes.iter().enumerate() {
            let float = e
                .float_return
                .map_or("-".to_string(), |r| format!("{r:.2}"));
            writeln!(
                f,
                "{:>7} {:>6} {:>6} {:>12.2} {:>12} {:>5}/{:<5} {:>11}",
                i,
                e.seed,
                e.steps,
                e.total_return,
                float,
                e.bit_exact_steps,
                e.steps,
                e.link_errors
            )?;
        }
        writeln!(
            f,
            "mean return     {:.2} over {} episode(s)",
            self.mean_return(),
            self.episodes.len()
        )?;
        if let (Some(fl), Some(q)) = (self.export_float_return, self.export_int8_return) {
            writeln!(
                f,
                "at export       float {fl:.2}, int8 {q:.2} (blob provenance)"
            )?;
        }
        let unit = self.cost_unit.as_deref().unwrap_or("cost units");
        writeln!(
            f,
            "cost/action     min {}  median {}  max {} {unit}",
            self.cost_min, self.cost_median, self.cost_max
        )?;
        let links: usize = self.episodes.iter().map(|e| e.link_errors).sum();
        writeln!(f, "link errors     {links}")?;
        write!(
            f,
            "bit-exact: {}",
            if self.bit_exact() { "yes" } else { "NO" }
        )
    }
}

/// The per-step seed of stochastic mode: distinct for every (run seed, episode, step).
fn step_seed(seed: u64, episode: usize, step: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((episode as u64) << 32) ^ step as u64
}

/// Run `opts.episodes` episodes of `blob`'s task with the device in the loop.
pub fn run_hil<T: Read + Write>(
    link: &mut DeviceLink<T>,
    blob: &[u8],
    opts: &HilOptions,
) -> Result<HilReport> {
    let policy = Policy::from_bytes(blob).map_err(|e| anyhow::anyhow!("policy blob: {e}"))?;
    let meta = &policy.blob().meta;
    let env_id = meta.env_id.to_string();
    let mut env = env::make(&env_id)?;
    if env.spec().obs_dim != policy.obs_dim() || env.spec().act_dim != policy.act_dim() {
        bail!(
            "blob dims (obs {}, act {}) do not match {env_id}",
            policy.obs_dim(),
            policy.act_dim()
        );
    }
    let cost_unit = match link.sync(std::time::Duration::from_secs(10))? {
        runtime::wire::Response::Info {
            blob_hash,
            cost_unit,
            ..
        } => {
            let host_hash = runtime::blob::blob_hash(blob);
            if blob_hash != host_hash {
                bail!("the device runs blob {blob_hash:#010x}, not {host_hash:#010x}: flash or build the firmware with this blob");
            }
            Some(match cost_unit {
                CostUnit::Instructions => "instructions".to_string(),
                CostUnit::Cycles => "cycles".to_string(),
            })
        }
        runtime::wire::Response::Error { code, .. } => bail!("the device refuses to act: {code:?}"),
        other => bail!("unexpected answer to Info: {other:?}"),
    };
    let float = match &opts.float_run {
        Some(run) => Some(trainer::export::load_float_policy(run)?.0),
        None => None,
    };

    let mut scratch = Scratch::new();
    let mut host_action = vec![0f32; policy.act_dim()];
    let mut costs = Vec::new();
    let mut episodes = Vec::new();
    for e in 0..opts.episodes {
        let seed = opts.seed + e as u64;
        let mut obs = to_f32(&env.reset(seed));
        let mut report = EpisodeReport {
            seed,
            steps: 0,
            total_return: 0.0,
            terminated: false,
            bit_exact_steps: 0,
            link_errors: 0,
            float_return: None,
        };
        loop {
            let mode = match opts.mode {
                ModeArg::Deterministic => NoiseMode::Deterministic,
                ModeArg::Stochastic => NoiseMode::Stochastic {
                    seed: step_seed(opts.seed, e, report.steps),
                },
            };
            let device = act_with_retries(link, &obs, mode, opts.attempts, &mut report.link_errors)
                .with_context(|| format!("episode {e} step {}", report.steps))?;
            policy
                .act(&obs, mode, &mut scratch, &mut host_action)
                .map_err(|err| anyhow::anyhow!("host runtime: {err}"))?;
            let exact = device.action.len() == host_action.len()
                && device
                    .action
                    .iter()
                    .zip(&host_action)
                    .all(|(d, h)| d.to_bits() == h.to_bits());
            report.bit_exact_steps += usize::from(exact);
            costs.push(device.cost);
            let action: Vec<f64> = device.action.iter().map(|&a| a as f64).collect();
            let step = env.step(&action)?;
            report.total_return += step.reward;
            report.steps += 1;
            let capped = opts.max_steps.is_some_and(|m| report.steps >= m);
            if step.terminated || step.truncated || capped {
                report.terminated = step.terminated;
                break;
            }
            obs = to_f32(&step.obs);
        }
        if let Some(float) = &float {
            let zero = vec![0f32; float.act_dim];
            let mut float_env = env::make(&env_id)?;
            let result = run_episode(float_env.as_mut(), seed, |o| Ok(float.act(o, &zero)))?;
            report.float_return = Some(result.total_return);
        }
        episodes.push(report);
    }
    costs.sort_unstable();
    let pick = |q: f64| {
        costs
            .get(((costs.len().saturating_sub(1)) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    Ok(HilReport {
        env_id,
        blob_hash: runtime::blob::blob_hash(blob),
        mode: opts.mode,
        cost_unit,
        episodes,
        cost_min: pick(0.0),
        cost_median: pick(0.5),
        cost_max: pick(1.0),
        export_float_return: meta.provenance.float_return,
        export_int8_return: meta.provenance.int8_return,
    })
}

/// One `Act`, retried on link faults with a fresh sequence number. Device refusals that a
/// retry cannot fix (wrong length, NaN observation, no policy) fail at once.
fn act_with_retries<T: Read + Write>(
    link: &mut DeviceLink<T>,
    obs: &[f32],
    mode: NoiseMode,
    attempts: usize,
    errors: &mut usize,
) -> Result<crate::link::DeviceAction> {
    let mut last = None;
    for _ in 0..attempts.max(1) {
        match link.act(obs, mode) {
            Ok(a) => return Ok(a),
            Err(e @ LinkError::Device { .. })
            | Err(e @ LinkError::Closed)
            | Err(e @ LinkError::Encode(_)) => return Err(e.into()),
            Err(e) => {
                *errors += 1;
                last = Some(e);
                // Drop whatever is in flight before retrying.
                let _ = link.sync(std::time::Duration::from_secs(5));
            }
        }
    }
    Err(anyhow::anyhow!(
        "gave up after {attempts} attempts: {}",
        last.map_or("no attempt".into(), |e| e.to_string())
    ))
}
