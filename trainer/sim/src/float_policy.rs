//! The float reference policy: a flow policy as plain f32 layers, structured exactly as
//! the `runtime` evaluates its int8 counterpart (DESIGN §6).
//!
//! The network `u_θ(z, r, t | s)` is an MLP on `[normalized obs, z, emb(r), emb(t)]` with
//! mish hidden activations. The time inputs of each flow step are constants, so their
//! contribution is folded into one first-layer bias per step ([`FloatPolicy::step_biases`]):
//! one set of weights serves all NFE steps, as on the MCU.
//!
//! It is built from a run's checkpoint (`policy.safetensors`, tensors named
//! `hidden{i}.weight` `[out, in]`, `hidden{i}.bias`, `output.weight`, `output.bias`)
//! without libtorch, so the lab bench (`tools hil --float-run`) and the trainer's exporter
//! read the same thing the same way. The trainer's quantizer calibrates on it through
//! [`FloatPolicy::act_observed`].

use std::path::Path;

use anyhow::{ensure, Context, Result};
use runtime::blob::Algorithm;
use safetensors::{Dtype, SafeTensors};

use crate::env::{self, EnvSpec};
use crate::rollout::to_f32;
use crate::run_dir::{Normalizer, RunConfig, RunDir};

/// The sinusoidal features each time input (r and t) enters the policy network with:
/// `a·[sin(ω_j t), cos(ω_j t)]` for j < dim/2, interleaved.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum TimeEmbedding {
    /// ω_j = (j + 1)·π/2, a = 1: up to 4π rad at dim 16. Linearly spaced so ∂u/∂t (a
    /// factor ω_j in the MeanFlow target) stays bounded, but still large at init.
    #[default]
    Raw,
    /// The official code's encoding: ω_j = 10000^(−j/(dim/2)) (at most 1 rad),
    /// a = 1/√dim (¼ at dim 16), so ∂u/∂t starts small. (The official code follows it
    /// with a learned 2-layer MLP per time input; not here — see docs/ablations.md.)
    Scaled,
}

impl TimeEmbedding {
    /// Angular frequency ω_j of the j-th feature pair.
    pub fn frequency(self, j: usize, dim: usize) -> f64 {
        match self {
            TimeEmbedding::Raw => (j + 1) as f64 * std::f64::consts::FRAC_PI_2,
            TimeEmbedding::Scaled => 10_000f64.powf(-(j as f64) / (dim / 2) as f64),
        }
    }

    /// The amplitude a of every feature.
    pub fn amplitude(self, dim: usize) -> f64 {
        match self {
            TimeEmbedding::Raw => 1.0,
            TimeEmbedding::Scaled => 1.0 / (dim as f64).sqrt(),
        }
    }

    /// The features of a time value: `a·[sin(ω_j t), cos(ω_j t)]` for j < dim/2.
    pub fn features(self, t: f64, dim: usize) -> Vec<f64> {
        let a = self.amplitude(dim);
        (0..dim / 2)
            .flat_map(|j| {
                let w = self.frequency(j, dim) * t;
                [a * w.sin(), a * w.cos()]
            })
            .collect()
    }
}

/// The `(r, t)` pairs of each network evaluation; each step is `z ← z − u(z, r, t)/N`
/// from t = 1 (noise) to 0 (data). FLAME-M: one step (0, 1), the mean velocity over the
/// whole interval. FLAME-R: N uniform Euler steps of the instantaneous velocity
/// `v(z, t_k) = u(z, t_k, t_k)` at `t_k = 1 − k/N` (its network is trained on r = t).
pub fn flow_steps(algorithm: Algorithm, nfe: usize) -> Vec<(f64, f64)> {
    match algorithm {
        Algorithm::FlameM => vec![(0.0, 1.0)],
        Algorithm::FlameR => (0..nfe)
            .map(|k| {
                let t = 1.0 - k as f64 / nfe as f64;
                (t, t)
            })
            .collect(),
    }
}

/// Sizes of the policy network.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicyShape {
    pub obs_dim: usize,
    pub act_dim: usize,
    pub hidden: Vec<usize>,
    /// Features per time input (r and t each get this many).
    pub time_dim: usize,
    /// How the times become features (runs before it existed used [`TimeEmbedding::Raw`]).
    #[serde(default)]
    pub time_embedding: TimeEmbedding,
    /// Each time input's features pass through a learned MLP before the trunk (the
    /// official FLAME network): `Linear(d → 2d) → mish → Linear(2d → d)`, tensors
    /// `time_r.{0,1}.*` and `time_t.{0,1}.*`. Left out of config.json when absent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub time_mlp: bool,
}

/// Largest width a policy network may declare: far above any task's (Humanoid observes
/// 348 values); anything beyond is a damaged or foreign config, refused before any size
/// is computed from it.
const MAX_WIDTH: usize = 1 << 16;

impl PolicyShape {
    /// Every width positive (the time features may be absent) and at most `MAX_WIDTH`.
    pub fn validate(&self) -> Result<()> {
        let widths = [self.obs_dim, self.act_dim]
            .into_iter()
            .chain(self.hidden.iter().copied());
        for w in widths {
            ensure!(
                (1..=MAX_WIDTH).contains(&w),
                "policy shape {self:?}: widths must be 1..={MAX_WIDTH}"
            );
        }
        ensure!(
            self.time_dim <= MAX_WIDTH && self.time_dim.is_multiple_of(2),
            "policy shape {self:?}: time_dim must be even and at most {MAX_WIDTH}"
        );
        ensure!(
            !self.hidden.is_empty(),
            "policy shape {self:?}: no hidden layer"
        );
        Ok(())
    }

    /// The checkpoint's tensor names and shapes, layer by layer: `(name, out, in)`.
    fn layers(&self) -> Vec<(String, usize, usize)> {
        let mut width = self.obs_dim + self.act_dim + 2 * self.time_dim;
        let mut layers = Vec::with_capacity(self.hidden.len() + 1);
        for (i, &h) in self.hidden.iter().enumerate() {
            layers.push((format!("hidden{i}"), h, width));
            width = h;
        }
        layers.push(("output".to_string(), self.act_dim, width));
        layers
    }

    /// The time MLPs' tensor names and shapes `(name, out, in)`: r's two layers, then
    /// t's (none without [`PolicyShape::time_mlp`]).
    fn time_layers(&self) -> Vec<(String, usize, usize)> {
        if !self.time_mlp {
            return Vec::new();
        }
        let d = self.time_dim;
        ["time_r", "time_t"]
            .iter()
            .flat_map(|net| {
                [
                    (format!("{net}.0"), 2 * d, d),
                    (format!("{net}.1"), d, 2 * d),
                ]
            })
            .collect()
    }
}

/// A dense layer in f32: `y = W x + b`, `W` row-major `[out][in]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseF32 {
    pub in_dim: usize,
    pub out_dim: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl DenseF32 {
    /// `W x + bias` in f64 (the float reference the quantizer calibrates against).
    pub fn apply(&self, x: &[f64], bias: &[f32]) -> Vec<f64> {
        (0..self.out_dim)
            .map(|c| {
                let row = &self.weight[c * self.in_dim..(c + 1) * self.in_dim];
                bias[c] as f64 + row.iter().zip(x).map(|(&w, &v)| w as f64 * v).sum::<f64>()
            })
            .collect()
    }
}

/// Hidden-layer nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    Mish,
    Relu,
}

impl Activation {
    pub fn apply(self, x: f64) -> f64 {
        match self {
            // mish(x) = x · tanh(softplus(x)), softplus computed without overflow.
            Activation::Mish => {
                let softplus = if x > 20.0 { x } else { x.exp().ln_1p() };
                x * softplus.tanh()
            }
            Activation::Relu => x.max(0.0),
        }
    }
}

/// Where a policy came from (owned part of `runtime::blob::Provenance`). The measured
/// returns are not known when quantizing: `trainer export` writes them into the blob.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProvenanceInfo {
    pub git_revision: String,
    pub env_steps: u64,
    pub seed: u64,
}

/// Everything about a flow policy besides its layers: task, bounds, normalization,
/// base noise and provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyMeta {
    pub env_id: String,
    pub algorithm: Algorithm,
    pub action_low: Vec<f32>,
    pub action_high: Vec<f32>,
    pub obs_mean: Vec<f32>,
    pub obs_std: Vec<f32>,
    pub obs_clip: f32,
    /// σ_z of the base noise in stochastic mode.
    pub noise_std: f32,
    pub provenance: ProvenanceInfo,
}

impl PolicyMeta {
    /// The metadata a run's config, its env's spec (action bounds) and its normalizer
    /// describe.
    pub fn of_run(config: &RunConfig, spec: &EnvSpec, normalizer: Normalizer) -> Result<Self> {
        Ok(Self {
            env_id: config.env_id.clone(),
            algorithm: config.algo.blob_algorithm()?,
            action_low: to_f32(&spec.action_low),
            action_high: to_f32(&spec.action_high),
            obs_mean: normalizer.mean,
            obs_std: normalizer.std,
            obs_clip: config.obs_clip,
            noise_std: config.noise_std,
            provenance: ProvenanceInfo {
                git_revision: config.git_revision.clone(),
                env_steps: config.env_steps,
                seed: config.seed,
            },
        })
    }
}

/// One named f32 tensor of a policy checkpoint, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The tensors of a safetensors file (f32 only, as the trainer writes them).
pub fn read_checkpoint(path: &Path) -> Result<Vec<CheckpointTensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let mut tensors = Vec::with_capacity(file.len());
    for (name, view) in file.iter() {
        ensure!(
            view.dtype() == Dtype::F32,
            "{}: tensor {name} is {:?}; policy checkpoints hold F32 tensors",
            path.display(),
            view.dtype()
        );
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.push(CheckpointTensor {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            values,
        });
    }
    Ok(tensors)
}

/// A value the float forward pass computed, shown to [`FloatPolicy::act_observed`]'s
/// observer. The observer may change it (the pass goes on with what it left): the
/// quantizer's calibration records the ranges, its per-stage fidelity report rounds one
/// stage to its integer grid.
#[derive(Debug)]
pub enum Probe<'a> {
    /// The first layer's input `[normalized obs, z]` of one flow step.
    Input(&'a mut [f64]),
    /// Hidden layer `layer`'s pre-activation.
    PreActivation { layer: usize, values: &'a mut [f64] },
    /// Hidden layer `layer`'s output.
    PostActivation { layer: usize, values: &'a mut [f64] },
}

/// A flow policy in f32, structured exactly as the runtime evaluates it.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatPolicy {
    pub meta: PolicyMeta,
    pub obs_dim: usize,
    pub act_dim: usize,
    /// Hidden layers; the first takes `[normalized obs, z]` and its `bias` is unused:
    /// `step_biases[k]` (bias plus the folded time embedding of flow step k) replaces it.
    pub hidden: Vec<DenseF32>,
    pub step_biases: Vec<Vec<f32>>,
    pub activation: Activation,
    pub output: DenseF32,
}

impl FloatPolicy {
    /// The policy of run directory `run`: its config, normalizer, task bounds and
    /// `policy.safetensors`. Needs neither libtorch nor MuJoCo.
    pub fn load(run: &Path) -> Result<Self> {
        let run = RunDir::open(run)?;
        let config = run.read_config()?;
        let spec = env::spec(&config.env_id)?;
        let meta = PolicyMeta::of_run(&config, &spec, run.read_normalizer()?)?;
        let tensors = read_checkpoint(&run.weights())?;
        Self::from_checkpoint(meta, &config.shape, config.nfe, &tensors)
            .with_context(|| format!("loading {}", run.weights().display()))
    }

    /// The policy whose network (of `shape`, mish activations) has the weights
    /// `tensors`, with the time inputs of its flow steps (`flow_steps(algorithm, nfe)`)
    /// folded into per-step first-layer biases.
    pub fn from_checkpoint(
        meta: PolicyMeta,
        shape: &PolicyShape,
        nfe: usize,
        tensors: &[CheckpointTensor],
    ) -> Result<Self> {
        shape.validate()?;
        let expected = shape.layers();
        let time_layers = shape.time_layers();
        let count = 2 * (expected.len() + time_layers.len());
        ensure!(
            tensors.len() == count,
            "the policy weights hold {} tensors, the {:?} network{} has {count}",
            tensors.len(),
            shape.hidden,
            if shape.time_mlp {
                " with time MLPs"
            } else {
                ""
            },
        );
        let tensor = |name: &str, dims: &[usize]| -> Result<Vec<f32>> {
            let t = (tensors.iter().find(|t| t.name == name))
                .with_context(|| format!("the policy weights have no tensor {name}"))?;
            ensure!(
                t.shape == dims,
                "{name}: shape {:?}, the network expects {dims:?}",
                t.shape
            );
            // dims passed `PolicyShape::validate`: their product is at most 2^32.
            ensure!(
                t.values.len() == dims.iter().product::<usize>(),
                "{name}: {} values for shape {dims:?}",
                t.values.len()
            );
            Ok(t.values.clone())
        };
        let dense = |layers: &[(String, usize, usize)]| {
            layers
                .iter()
                .map(|(name, out_dim, in_dim)| {
                    Ok(DenseF32 {
                        in_dim: *in_dim,
                        out_dim: *out_dim,
                        weight: tensor(&format!("{name}.weight"), &[*out_dim, *in_dim])?,
                        bias: tensor(&format!("{name}.bias"), &[*out_dim])?,
                    })
                })
                .collect::<Result<Vec<_>>>()
        };
        let mut layers = dense(&expected)?;
        let time_mlps = dense(&time_layers)?;
        let output = layers.pop().expect("the output layer is always listed");
        let steps = flow_steps(meta.algorithm, nfe);
        ensure!(!steps.is_empty(), "at least one flow step");
        let features = |net: usize, time: f64| {
            let embedding = shape.time_embedding.features(time, shape.time_dim);
            match time_mlps.get(2 * net..2 * net + 2) {
                Some([inner, outer]) => {
                    let hidden = inner.apply(&embedding, &inner.bias);
                    let hidden: Vec<f64> =
                        hidden.iter().map(|&v| Activation::Mish.apply(v)).collect();
                    outer.apply(&hidden, &outer.bias)
                }
                _ => embedding,
            }
        };
        let step_features: Vec<Vec<f64>> = steps
            .iter()
            .map(|&(r, t)| features(0, r).into_iter().chain(features(1, t)).collect())
            .collect();
        let (first, step_biases) = fold_time_inputs(&layers[0], shape, &step_features);
        layers[0] = first;
        let policy = Self {
            meta,
            obs_dim: shape.obs_dim,
            act_dim: shape.act_dim,
            hidden: layers,
            step_biases,
            activation: Activation::Mish,
            output,
        };
        policy.validate()?;
        Ok(policy)
    }

    pub fn nfe(&self) -> usize {
        self.step_biases.len()
    }

    /// Normalized, clipped observation (same operation order as the runtime, in f32).
    pub fn normalize(&self, obs: &[f32]) -> Vec<f32> {
        obs.iter()
            .enumerate()
            .map(|(i, &o)| {
                ((o - self.meta.obs_mean[i]) * (1.0 / self.meta.obs_std[i]))
                    .clamp(-self.meta.obs_clip, self.meta.obs_clip)
            })
            .collect()
    }

    /// The float action (env units) for `obs` from base sample `z0`; `observe` sees (and
    /// may alter) every intermediate value of every flow step.
    pub fn act_observed(
        &self,
        obs: &[f32],
        z0: &[f32],
        mut observe: impl FnMut(Probe<'_>),
    ) -> Vec<f32> {
        let n: Vec<f64> = self.normalize(obs).iter().map(|&v| v as f64).collect();
        let mut z: Vec<f64> = z0.iter().map(|&v| v as f64).collect();
        let nfe = self.nfe();
        for k in 0..nfe {
            let mut x: Vec<f64> = n.iter().chain(z.iter()).copied().collect();
            observe(Probe::Input(&mut x));
            for (l, layer) in self.hidden.iter().enumerate() {
                let bias = if l == 0 {
                    &self.step_biases[k]
                } else {
                    &layer.bias
                };
                let mut pre = layer.apply(&x, bias);
                observe(Probe::PreActivation {
                    layer: l,
                    values: &mut pre,
                });
                x = pre.iter().map(|&v| self.activation.apply(v)).collect();
                observe(Probe::PostActivation {
                    layer: l,
                    values: &mut x,
                });
            }
            let u = self.output.apply(&x, &self.output.bias);
            for (zi, ui) in z.iter_mut().zip(u) {
                *zi -= ui / nfe as f64;
            }
        }
        z.iter()
            .enumerate()
            .map(|(c, &v)| {
                let (lo, hi) = (
                    self.meta.action_low[c] as f64,
                    self.meta.action_high[c] as f64,
                );
                (lo + (v.clamp(-1.0, 1.0) + 1.0) * 0.5 * (hi - lo)) as f32
            })
            .collect()
    }

    /// The float policy's action (env units) for `obs` from base sample `z0`.
    pub fn act(&self, obs: &[f32], z0: &[f32]) -> Vec<f32> {
        self.act_observed(obs, z0, |_| {})
    }

    /// The dimensions agree with each other and the normalizer is usable.
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.hidden.is_empty(), "policy has no hidden layer");
        ensure!(self.nfe() >= 1, "policy has no flow step");
        ensure!(
            self.hidden[0].in_dim == self.obs_dim + self.act_dim,
            "first layer input is not obs+act"
        );
        ensure!(
            self.meta.obs_mean.len() == self.obs_dim && self.meta.obs_std.len() == self.obs_dim,
            "normalizer dims"
        );
        ensure!(
            self.meta.obs_std.iter().all(|&s| s > 0.0 && s.is_finite()),
            "normalizer std must be positive"
        );
        ensure!(
            self.meta.action_low.len() == self.act_dim
                && self.meta.action_high.len() == self.act_dim,
            "action bounds are not act_dim wide"
        );
        ensure!(
            self.output.out_dim == self.act_dim,
            "output layer is not act_dim wide"
        );
        for b in &self.step_biases {
            ensure!(b.len() == self.hidden[0].out_dim, "step bias width");
        }
        Ok(())
    }
}

/// Splits the network's first layer (input `[obs, z, emb(r), emb(t)]`) into its
/// `[obs, z]` columns and one bias per flow step: the layer's bias plus the time columns
/// applied to that step's constant time features `[f(r), f(t)]` (the embeddings, through
/// the time MLPs where the network has them), summed in f64.
fn fold_time_inputs(
    first: &DenseF32,
    shape: &PolicyShape,
    step_features: &[Vec<f64>],
) -> (DenseF32, Vec<Vec<f32>>) {
    let direct = shape.obs_dim + shape.act_dim;
    let row = |c: usize| &first.weight[c * first.in_dim..(c + 1) * first.in_dim];
    let step_biases = step_features
        .iter()
        .map(|feats| {
            (0..first.out_dim)
                .map(|c| {
                    let time_columns = &row(c)[direct..];
                    (first.bias[c] as f64
                        + time_columns
                            .iter()
                            .zip(feats.iter())
                            .map(|(&w, &f)| w as f64 * f)
                            .sum::<f64>()) as f32
                })
                .collect()
        })
        .collect();
    let first_direct = DenseF32 {
        in_dim: direct,
        out_dim: first.out_dim,
        weight: (0..first.out_dim)
            .flat_map(|c| row(c)[..direct].to_vec())
            .collect(),
        bias: first.bias.clone(),
    };
    (first_direct, step_biases)
}

/// Writes `tensors` as a safetensors file (the layout `read_checkpoint` reads).
#[cfg(test)]
fn write_checkpoint(tensors: &[CheckpointTensor], path: &Path) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), b)?;
            Ok((t.name.clone(), view))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    safetensors::serialize_to_file(views, None, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> PolicyShape {
        PolicyShape {
            obs_dim: 3,
            act_dim: 2,
            hidden: vec![4, 4],
            time_dim: 2,
            time_embedding: TimeEmbedding::Raw,
            time_mlp: false,
        }
    }

    fn meta(algorithm: Algorithm) -> PolicyMeta {
        PolicyMeta {
            env_id: "Test-v0".into(),
            algorithm,
            action_low: vec![-1.0; 2],
            action_high: vec![1.0; 2],
            obs_mean: vec![0.0; 3],
            obs_std: vec![1.0; 3],
            obs_clip: 10.0,
            noise_std: 0.5,
            provenance: ProvenanceInfo::default(),
        }
    }

    /// Deterministic, distinct values for every tensor of `shape`'s network.
    fn tensors(shape: &PolicyShape) -> Vec<CheckpointTensor> {
        let mut k = 0u32;
        let mut next = || {
            k += 1;
            ((k * 37 % 101) as f32 - 50.0) / 100.0
        };
        shape
            .layers()
            .into_iter()
            .flat_map(|(name, out_dim, in_dim)| {
                [
                    (format!("{name}.weight"), vec![out_dim, in_dim]),
                    (format!("{name}.bias"), vec![out_dim]),
                ]
            })
            .map(|(name, shape)| CheckpointTensor {
                values: (0..shape.iter().product()).map(|_| next()).collect(),
                name,
                shape,
            })
            .collect()
    }

    /// The unfolded network on `[obs, z, emb(r), emb(t)]`, written out plainly.
    fn unfolded_velocity(t: &[CheckpointTensor], x: &[f64]) -> Vec<f64> {
        let get = |n: &str| t.iter().find(|c| c.name == n).unwrap();
        let dense = |name: &str, x: &[f64]| -> Vec<f64> {
            let (w, b) = (get(&format!("{name}.weight")), get(&format!("{name}.bias")));
            (0..w.shape[0])
                .map(|c| {
                    b.values[c] as f64
                        + (0..w.shape[1])
                            .map(|i| w.values[c * w.shape[1] + i] as f64 * x[i])
                            .sum::<f64>()
                })
                .collect()
        };
        let mish = |v: Vec<f64>| v.into_iter().map(|x| Activation::Mish.apply(x)).collect();
        let h: Vec<f64> = mish(dense("hidden0", x));
        let h: Vec<f64> = mish(dense("hidden1", &h));
        dense("output", &h)
    }

    #[test]
    fn folded_time_biases_equal_the_unfolded_network() {
        let shape = shape();
        let t = tensors(&shape);
        let policy = FloatPolicy::from_checkpoint(meta(Algorithm::FlameR), &shape, 3, &t).unwrap();
        assert_eq!(policy.nfe(), 3);
        let (obs, z0) = ([0.3f32, -0.2, 0.9], [0.1f32, -0.4]);
        let mut z: Vec<f64> = z0.iter().map(|&v| v as f64).collect();
        for (r, time) in flow_steps(Algorithm::FlameR, 3) {
            let x: Vec<f64> = (obs.iter().map(|&o| o as f64))
                .chain(z.iter().copied())
                .chain(TimeEmbedding::Raw.features(r, 2))
                .chain(TimeEmbedding::Raw.features(time, 2))
                .collect();
            for (zi, u) in z.iter_mut().zip(unfolded_velocity(&t, &x)) {
                *zi -= u / 3.0;
            }
        }
        let action = policy.act(&obs, &z0);
        for c in 0..2 {
            let expect = z[c].clamp(-1.0, 1.0) as f32;
            assert!(
                (action[c] - expect).abs() < 1e-6,
                "{c}: {action:?} vs {z:?}"
            );
        }
    }

    #[test]
    fn a_checkpoint_round_trips_through_safetensors() {
        let shape = shape();
        let t = tensors(&shape);
        let path =
            std::env::temp_dir().join(format!("sim-ckpt-{}.safetensors", std::process::id()));
        write_checkpoint(&t, &path).unwrap();
        let mut back = read_checkpoint(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        back.sort_by(|a, b| a.name.cmp(&b.name));
        let mut t = t;
        t.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back, t);
    }

    #[test]
    fn checkpoint_mismatches_are_named() {
        let shape = shape();
        let err = |t: &[CheckpointTensor]| {
            FloatPolicy::from_checkpoint(meta(Algorithm::FlameM), &shape, 1, t)
                .unwrap_err()
                .to_string()
        };
        let mut t = tensors(&shape);
        t.pop();
        assert!(err(&t).contains("hold 5 tensors"), "{}", err(&t));
        let mut t = tensors(&shape);
        t[2].name = "hidden9.weight".into();
        assert!(err(&t).contains("no tensor hidden1.weight"), "{}", err(&t));
        let mut t = tensors(&shape);
        t[0].shape = vec![7, 4];
        assert!(
            err(&t).contains("hidden0.weight: shape [7, 4]"),
            "{}",
            err(&t)
        );
        let mut t = tensors(&shape);
        t[1].values.pop();
        assert!(err(&t).contains("hidden0.bias: 3 values"), "{}", err(&t));
    }

    /// A config.json with absurd widths (hand-edited or foreign) is refused before any
    /// size is computed from them: `obs + act + 2·time` once overflowed.
    #[test]
    fn absurd_shapes_are_refused_before_any_arithmetic() {
        let t = tensors(&shape());
        for bad in [
            PolicyShape {
                obs_dim: usize::MAX / 2,
                ..shape()
            },
            PolicyShape {
                time_dim: usize::MAX,
                ..shape()
            },
            PolicyShape {
                time_dim: 3,
                ..shape()
            },
            PolicyShape {
                hidden: vec![4, 0],
                ..shape()
            },
        ] {
            let err = FloatPolicy::from_checkpoint(meta(Algorithm::FlameM), &bad, 1, &t)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("policy shape"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_file_that_is_not_safetensors_is_refused() {
        let path = std::env::temp_dir().join(format!("sim-bad-{}.safetensors", std::process::id()));
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\xffgarbage").unwrap();
        let err = read_checkpoint(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("is not a safetensors file"), "{err}");
    }
}
