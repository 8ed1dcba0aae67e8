//! `trainer export`: run directory → int8 blob, golden vectors and a fidelity report.
//!
//! Calibrates activation ranges on the run's recorded states, quantizes
//! ([`crate::quantize`]), then measures the quantized policy against the float one:
//! action error on held-out states, for the whole runtime and for each quantization stage
//! alone (replayed in float), and returns over the same episode seeds. A blob whose action
//! error exceeds the stated bound is not written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use runtime::golden::{push_record, GoldenSet};
use runtime::{NoiseMode, Policy, Scratch};
use serde::Serialize;
use sim::env::{self, EnvSpec};
use sim::float_policy::{CheckpointTensor, FloatPolicy, PolicyMeta};
use sim::rollout::run_episode;
use sim::run_dir::{write_json, Normalizer, RunConfig, RunDir};
use tch::{Kind, Tensor};

use crate::quantize::{quantize, Plan};

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub out: PathBuf,
    /// Episodes (seeds 0..n) over which float and int8 returns are compared; 0 skips.
    pub episodes: usize,
    /// Largest accepted |a_quantized − a_float| on held-out states, in units of the
    /// action's half-range (actions live in [−1, 1] before scaling to the env's bounds).
    pub max_action_error: f64,
    /// Golden vectors to write (half deterministic, half stochastic).
    pub golden: usize,
}

/// What the export measured. Written next to the blob as `<blob>.report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct FidelityReport {
    pub blob: PathBuf,
    pub blob_bytes: usize,
    pub blob_hash: u32,
    pub macs_per_action: u64,
    pub calibration_states: usize,
    pub held_out_states: usize,
    pub max_action_error: f64,
    pub mean_action_error: f64,
    pub action_error_bound: f64,
    /// The held-out action error of each quantization stage alone, then of the runtime.
    pub stages: Vec<StageError>,
    pub episodes: usize,
    pub float_return: Option<f64>,
    pub int8_return: Option<f64>,
    pub golden_vectors: usize,
}

impl std::fmt::Display for FidelityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "blob            {} ({} bytes, crc32 {:#010x})",
            self.blob.display(),
            self.blob_bytes,
            self.blob_hash
        )?;
        writeln!(f, "MACs/action     {}", self.macs_per_action)?;
        writeln!(
            f,
            "action error    max {:.5}  mean {:.6}  (bound {}; {} held-out states, {} calibration)",
            self.max_action_error,
            self.mean_action_error,
            self.action_error_bound,
            self.held_out_states,
            self.calibration_states
        )?;
        writeln!(
            f,
            "  {:<46} {:>9} {:>9} {:>9} {:>9}",
            "stage (alone; half-range units)", "max", "p99", "median", "mean"
        )?;
        for s in &self.stages {
            writeln!(
                f,
                "  {:<46} {:>9.5} {:>9.5} {:>9.6} {:>9.6}",
                s.stage, s.max, s.p99, s.median, s.mean
            )?;
        }
        match (self.float_return, self.int8_return) {
            (Some(fl), Some(q)) => writeln!(
                f,
                "return          float {fl:.2}  quantized {q:.2}  ({} episodes, same seeds)",
                self.episodes
            )?,
            _ => writeln!(f, "return          not evaluated")?,
        }
        write!(f, "golden vectors  {}", self.golden_vectors)
    }
}

/// Held-out action error (half-range units) of one quantization stage alone, or of the
/// whole runtime (`stage` = "runtime (all stages, integer kernels)").
#[derive(Debug, Clone, Serialize)]
pub struct StageError {
    pub stage: String,
    pub max: f64,
    pub p99: f64,
    pub median: f64,
    pub mean: f64,
}

impl StageError {
    fn of(stage: &str, mut errors: Vec<f64>) -> Self {
        errors.sort_by(f64::total_cmp);
        let at = |q: f64| {
            errors
                .get(((errors.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        Self {
            stage: stage.to_string(),
            max: errors.last().copied().unwrap_or(0.0),
            p99: at(0.99),
            median: at(0.5),
            mean: errors.iter().sum::<f64>() / errors.len().max(1) as f64,
        }
    }
}

/// The [`FloatPolicy`] that a run's config, its env's spec (action bounds), normalizer
/// and policy weights (named as `FlowPolicyNet` names them) describe: what the training
/// loop quantizes for its int8 evaluation, from the agent's tensors in memory. `trainer
/// export` reads the same thing from the run directory ([`FloatPolicy::load`]).
pub fn float_policy(
    config: &RunConfig,
    spec: &EnvSpec,
    normalizer: Normalizer,
    weights: &[(String, Tensor)],
) -> Result<FloatPolicy> {
    let meta = PolicyMeta::of_run(config, spec, normalizer)?;
    FloatPolicy::from_checkpoint(
        meta,
        &config.shape,
        config.nfe,
        &checkpoint_tensors(weights)?,
    )
}

/// Named tch tensors as f32 checkpoint tensors, read back to the CPU.
pub fn checkpoint_tensors(weights: &[(String, Tensor)]) -> Result<Vec<CheckpointTensor>> {
    weights
        .iter()
        .map(|(name, tensor)| {
            let cpu = tensor
                .to_kind(Kind::Float)
                .to_device(tch::Device::Cpu)
                .contiguous();
            Ok(CheckpointTensor {
                name: name.clone(),
                shape: cpu.size().iter().map(|&d| d as usize).collect(),
                values: Vec::<f32>::try_from(cpu.view([-1]))
                    .with_context(|| format!("reading tensor {name}"))?,
            })
        })
        .collect()
}

/// Every action element's error |a − a_float| (half-range units) over `states`, with `a`
/// from `act` and the float policy deterministic (z = 0).
fn action_errors(
    float: &FloatPolicy,
    states: &[Vec<f32>],
    mut act: impl FnMut(&[f32]) -> Result<Vec<f32>>,
) -> Result<Vec<f64>> {
    let zero = vec![0f32; float.act_dim];
    let mut errors = Vec::with_capacity(states.len() * float.act_dim);
    for obs in states {
        let reference = float.act(obs, &zero);
        for (c, (q, f)) in act(obs)?.into_iter().zip(reference).enumerate() {
            let half = 0.5 * (float.meta.action_high[c] - float.meta.action_low[c]) as f64;
            errors.push((q as f64 - f as f64).abs() / half);
        }
    }
    Ok(errors)
}

/// The held-out error of each stage alone (replayed in float), then of the runtime.
fn stage_errors(
    float: &FloatPolicy,
    plan: &Plan,
    policy: &Policy<'_>,
    states: &[Vec<f32>],
) -> Result<Vec<StageError>> {
    let mut out = Vec::new();
    for stage in plan.stages() {
        let errors = action_errors(float, states, |obs| {
            Ok(plan.stage_policy_act(float, stage, obs))
        })?;
        out.push(StageError::of(&plan.stage_name(stage), errors));
    }
    let mut scratch = Scratch::new();
    let errors = action_errors(float, states, |obs| {
        let mut action = vec![0f32; float.act_dim];
        policy
            .act(obs, NoiseMode::Deterministic, &mut scratch, &mut action)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(action)
    })?;
    out.push(StageError::of(RUNTIME_STAGE, errors));
    Ok(out)
}

/// The [`StageError::stage`] of the whole runtime.
pub const RUNTIME_STAGE: &str = "runtime (all stages, integer kernels)";

/// Mean return over `episodes` seeds of the float and of the int8 policy (deterministic).
fn compare_returns(
    float: &FloatPolicy,
    policy: &Policy<'_>,
    episodes: usize,
) -> Result<(f64, f64)> {
    let mut env = env::make(&float.meta.env_id)?;
    let zero = vec![0f32; float.act_dim];
    let mut scratch = Scratch::new();
    let (mut float_sum, mut int8_sum) = (0.0, 0.0);
    for seed in 0..episodes as u64 {
        float_sum += run_episode(env.as_mut(), seed, |obs| Ok(float.act(obs, &zero)))?.total_return;
        int8_sum += run_episode(env.as_mut(), seed, |obs| {
            let mut a = vec![0f32; float.act_dim];
            policy
                .act(obs, NoiseMode::Deterministic, &mut scratch, &mut a)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(a)
        })?
        .total_return;
    }
    let n = episodes.max(1) as f64;
    Ok((float_sum / n, int8_sum / n))
}

/// Golden vectors from the held-out states: alternating deterministic and stochastic.
fn golden_vectors(
    policy: &Policy<'_>,
    blob_hash: u32,
    states: &[Vec<f32>],
    count: usize,
) -> Result<Vec<u8>> {
    let mut scratch = Scratch::new();
    let mut records = Vec::new();
    let mut action = vec![0f32; policy.act_dim()];
    for (i, obs) in states
        .iter()
        .cycle()
        .take(count.min(states.len() * 2))
        .enumerate()
    {
        let mode = if i % 2 == 0 {
            NoiseMode::Deterministic
        } else {
            NoiseMode::Stochastic {
                seed: 0x5EED_0000 + i as u64,
            }
        };
        policy
            .act(obs, mode, &mut scratch, &mut action)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        push_record(&mut records, mode, obs, &action);
    }
    let set = GoldenSet {
        blob_hash,
        obs_dim: policy.obs_dim() as u16,
        act_dim: policy.act_dim() as u16,
        records: &records,
    };
    Ok(postcard::to_stdvec(&set)?)
}

/// The golden-vector file that belongs to a blob path.
pub fn golden_path(blob: &Path) -> PathBuf {
    blob.with_extension("golden")
}

pub fn export(run: &Path, opts: &ExportOptions) -> Result<FidelityReport> {
    let float = FloatPolicy::load(run)?;
    let states = RunDir::new(run).read_states(float.obs_dim)?;
    if states.len() < 20 {
        bail!(
            "{} holds only {} states; export needs at least 20",
            run.display(),
            states.len()
        );
    }
    // Every 5th state is held out; the rest calibrate.
    let (held_out, calibration): (Vec<_>, Vec<_>) = states
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 5 == 0);
    let held_out: Vec<Vec<f32>> = held_out.into_iter().map(|(_, s)| s).collect();
    let calibration: Vec<Vec<f32>> = calibration.into_iter().map(|(_, s)| s).collect();

    let draft = quantize(&float, &calibration, 0)?;
    let draft_policy = Policy::from_bytes(&draft.bytes)
        .map_err(|e| anyhow::anyhow!("exported blob does not parse: {e}"))?;
    let stages = stage_errors(&float, &draft.plan, &draft_policy, &held_out)?;
    let runtime_error = stages.last().expect("the runtime's row is always there");
    let (max_err, mean_err) = (runtime_error.max, runtime_error.mean);
    if max_err > opts.max_action_error {
        let table: Vec<String> = stages
            .iter()
            .map(|s| format!("{}: max {:.4}, mean {:.5}", s.stage, s.max, s.mean))
            .collect();
        bail!(
            "quantized policy diverges from the float policy: max action error {max_err:.4} > bound {} (half-range units); blob not written. Per stage: {}",
            opts.max_action_error,
            table.join("; ")
        );
    }
    let returns = if opts.episodes > 0 {
        Some(compare_returns(&float, &draft_policy, opts.episodes)?)
    } else {
        None
    };
    // Record the measured returns in the provenance: the same blob, re-encoded.
    let mut blob = draft_policy.blob().clone();
    blob.meta.provenance.float_return = returns.map(|r| r.0 as f32);
    blob.meta.provenance.int8_return = returns.map(|r| r.1 as f32);
    let bytes = runtime::blob::encode(&blob).context("encoding the blob")?;
    let policy = Policy::from_bytes(&bytes)
        .map_err(|e| anyhow::anyhow!("exported blob does not parse: {e}"))?;
    let blob_hash = runtime::blob::blob_hash(&bytes);
    let golden = golden_vectors(&policy, blob_hash, &held_out, opts.golden)?;

    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&opts.out, &bytes).with_context(|| format!("writing {}", opts.out.display()))?;
    std::fs::write(golden_path(&opts.out), &golden)?;
    let report = FidelityReport {
        blob: opts.out.clone(),
        blob_bytes: bytes.len(),
        blob_hash,
        macs_per_action: policy.macs_per_action(),
        calibration_states: calibration.len(),
        held_out_states: held_out.len(),
        max_action_error: max_err,
        mean_action_error: mean_err,
        action_error_bound: opts.max_action_error,
        stages,
        episodes: opts.episodes,
        float_return: returns.map(|r| r.0),
        int8_return: returns.map(|r| r.1),
        golden_vectors: opts.golden.min(held_out.len() * 2),
    };
    write_json(&opts.out.with_extension("report.json"), &report)?;
    Ok(report)
}
