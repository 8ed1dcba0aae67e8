//! The run directory: what `trainer init` (and later `trainer train`) writes and
//! `trainer export` reads.
//!
//! ```text
//! config.json          RunConfig: algorithm, env, seed, network shape, provenance
//! normalizer.json      observation mean/std the policy was trained with
//! policy.safetensors   the policy network's weights (tch VarStore)
//! states.bin           observations seen in the run, f32 LE rows (calibration, held-out)
//! ```
//!
//! A seed group (`trainer train --seeds 0,1,…`) is a directory of such runs, `seed-N/`.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::float_policy::PolicyShape;

/// Which agent (CLI spelling in `--algo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Algo {
    /// Gaussian SAC baseline (CleanRL-style); trains, but the MCU runtime cannot run it.
    Sac,
    FlameM,
    FlameR,
}

impl Algo {
    /// The blob's algorithm tag; SAC policies are not flow policies and cannot be exported.
    pub fn blob_algorithm(self) -> Result<runtime::blob::Algorithm> {
        match self {
            Algo::Sac => bail!(
                "SAC runs cannot be exported: the MCU runtime evaluates flow policies only \
                 (train with --algo flame-m or flame-r)"
            ),
            Algo::FlameM => Ok(runtime::blob::Algorithm::FlameM),
            Algo::FlameR => Ok(runtime::blob::Algorithm::FlameR),
        }
    }

    /// The CLI spelling.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Sac => "sac",
            Algo::FlameM => "flame-m",
            Algo::FlameR => "flame-r",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub algo: Algo,
    pub env_id: String,
    pub seed: u64,
    pub shape: PolicyShape,
    /// Network evaluations per action (1 for FLAME-M).
    pub nfe: usize,
    /// σ_z of the base noise when acting stochastically.
    pub noise_std: f32,
    /// Normalized observations are clipped to ±obs_clip.
    pub obs_clip: f32,
    /// Env steps the policy was trained on (0: untrained).
    pub env_steps: u64,
    /// The git revision of the trainer binary that last wrote this file (recorded when
    /// the binary was built: `build_revision::REVISION`).
    pub git_revision: String,
    /// `trainer train`'s full configuration (every hyperparameter); absent for runs made
    /// by `trainer init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalizer {
    /// Per-dimension mean and std of `rows`, with a floor on the std so constant
    /// dimensions do not blow up.
    pub fn fit(rows: &[Vec<f32>]) -> Self {
        let dim = rows.first().map_or(0, Vec::len);
        let n = rows.len().max(1) as f64;
        let mut mean = vec![0f64; dim];
        let mut sq = vec![0f64; dim];
        for row in rows {
            for (i, &v) in row.iter().enumerate() {
                mean[i] += v as f64 / n;
            }
        }
        for row in rows {
            for (i, &v) in row.iter().enumerate() {
                sq[i] += (v as f64 - mean[i]).powi(2) / n;
            }
        }
        Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: sq.iter().map(|&v| v.sqrt().max(1e-2) as f32).collect(),
        }
    }
}

/// Run directory of `seed` in a seed group's directory (`trainer train --seeds`).
pub fn seed_dir(group: &Path, seed: u64) -> PathBuf {
    group.join(format!("seed-{seed}"))
}

/// The seed runs of a group directory (`seed-N/` holding a `config.json`), by seed; empty
/// when `dir` holds none (a single run, or not a run at all).
pub fn group_runs(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let seed = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("seed-"))
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(seed) = seed.filter(|_| path.join("config.json").is_file()) {
            runs.push((seed, path));
        }
    }
    runs.sort();
    Ok(runs.into_iter().map(|(_, path)| path).collect())
}

/// Paths of a run directory's files.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn normalizer(&self) -> PathBuf {
        self.root.join("normalizer.json")
    }
    pub fn weights(&self) -> PathBuf {
        self.root.join("policy.safetensors")
    }
    pub fn states(&self) -> PathBuf {
        self.root.join("states.bin")
    }

    /// Open an existing run, with a clear error if `root` is not one.
    pub fn open(root: &Path) -> Result<Self> {
        ensure!(
            root.is_dir(),
            "run directory {} does not exist",
            root.display()
        );
        let run = Self::new(root);
        if !run.config().is_file() && !group_runs(root)?.is_empty() {
            bail!(
                "{} is a seed group (`trainer train --seeds`), not a run: name one of its runs, {}",
                root.display(),
                root.join("seed-N").display()
            );
        }
        for p in [run.config(), run.normalizer(), run.weights(), run.states()] {
            if !p.is_file() {
                bail!(
                    "{} is not a run directory: {} is missing",
                    root.display(),
                    p.display()
                );
            }
        }
        Ok(run)
    }

    pub fn read_config(&self) -> Result<RunConfig> {
        read_json(&self.config())
    }
    pub fn read_normalizer(&self) -> Result<Normalizer> {
        read_json(&self.normalizer())
    }

    pub fn write_states(&self, rows: &[Vec<f32>]) -> Result<()> {
        let bytes: Vec<u8> = rows
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(self.states(), bytes)
            .with_context(|| format!("writing {}", self.states().display()))
    }

    pub fn read_states(&self, dim: usize) -> Result<Vec<Vec<f32>>> {
        let bytes = std::fs::read(self.states())
            .with_context(|| format!("reading {}", self.states().display()))?;
        let row = dim
            .checked_mul(4)
            .filter(|&r| r > 0 && bytes.len().is_multiple_of(r));
        let row =
            row.with_context(|| format!("{} is not rows of {dim} f32", self.states().display()))?;
        Ok(bytes
            .chunks_exact(row)
            .map(|row| {
                row.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            })
            .collect())
    }
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
