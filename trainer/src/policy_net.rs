//! The flow policy network in tch: `u_θ(z, r, t | s)`, an MLP on
//! `[normalized obs, z, emb(r), emb(t)]` with mish hidden activations (DESIGN §5).
//!
//! For FLAME-M the same network gives the mean velocity over `[r, t]`; acting uses one
//! evaluation at `(r, t) = (0, 1)`. For export, the time inputs of each flow step are
//! constants, so their contribution is folded into the first layer's bias
//! ([`FlowPolicyNet::to_float_policy`]).

use anyhow::{ensure, Result};
use tch::{nn, nn::Module, Kind, Tensor};

use crate::quantize::{Activation, DenseF32, FloatPolicy, PolicyMeta};
use runtime::blob::Algorithm;

/// Angular frequency of the j-th sinusoidal time feature: ω_j = (j + 1)·π/2.
///
/// Low and linearly spaced on purpose: the MeanFlow target contains ∂u/∂t, which
/// carries each ω_j as a factor, so geometric (2^j·π) frequencies make targets and their
/// gradients explode.
pub fn time_frequency(j: usize) -> f64 {
    (j + 1) as f64 * std::f64::consts::FRAC_PI_2
}

/// Sinusoidal features of a time value: `[sin(ω_j t), cos(ω_j t)]` for j < dim/2.
pub fn time_features(t: f64, dim: usize) -> Vec<f64> {
    (0..dim / 2)
        .flat_map(|j| {
            let w = time_frequency(j) * t;
            [w.sin(), w.cos()]
        })
        .collect()
}

/// `[1, dim/2]` tensor of the ω_j on `t`'s device.
fn frequencies(t: &Tensor, dim: usize) -> Tensor {
    let freqs: Vec<f32> = (0..dim / 2).map(|j| time_frequency(j) as f32).collect();
    Tensor::from_slice(&freqs)
        .to_device(t.device())
        .view([1, -1])
}

/// The same features for a batch `[B, 1]` of times, in tch.
pub fn time_features_tensor(t: &Tensor, dim: usize) -> Tensor {
    let w = t * frequencies(t, dim);
    Tensor::cat(&[w.sin(), w.cos()], 1)
        .view([-1, 2, (dim / 2) as i64])
        .transpose(1, 2)
        .reshape([-1, dim as i64])
}

/// d/dt of [`time_features_tensor`] along a tangent `t_dot` ([B, 1]):
/// `[ω cos(ωt), −ω sin(ωt)] · ṫ` in the same interleaved order.
pub fn time_features_derivative(t: &Tensor, t_dot: &Tensor, dim: usize) -> Tensor {
    let omega = frequencies(t, dim);
    let w = t * &omega;
    let scale = &omega * t_dot;
    Tensor::cat(&[w.cos() * &scale, -(w.sin() * &scale)], 1)
        .view([-1, 2, (dim / 2) as i64])
        .transpose(1, 2)
        .reshape([-1, dim as i64])
}

/// Sizes of the network.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicyShape {
    pub obs_dim: usize,
    pub act_dim: usize,
    pub hidden: Vec<usize>,
    /// Features per time input (r and t each get this many).
    pub time_dim: usize,
}

pub struct FlowPolicyNet {
    pub shape: PolicyShape,
    hidden: Vec<nn::Linear>,
    output: nn::Linear,
}

impl FlowPolicyNet {
    pub fn new(path: &nn::Path, shape: PolicyShape) -> Self {
        let mut width = shape.obs_dim + shape.act_dim + 2 * shape.time_dim;
        let mut hidden = Vec::new();
        for (i, &h) in shape.hidden.iter().enumerate() {
            hidden.push(nn::linear(
                path / format!("hidden{i}"),
                width as i64,
                h as i64,
                Default::default(),
            ));
            width = h;
        }
        let output = nn::linear(
            path / "output",
            width as i64,
            shape.act_dim as i64,
            Default::default(),
        );
        Self {
            shape,
            hidden,
            output,
        }
    }

    /// `u(z, r, t | s)` for a batch: `obs_norm [B, obs]`, `z [B, act]`, `r, t [B, 1]`.
    pub fn forward(&self, obs_norm: &Tensor, z: &Tensor, r: &Tensor, t: &Tensor) -> Tensor {
        let d = self.shape.time_dim;
        let mut x = Tensor::cat(
            &[
                obs_norm,
                z,
                &time_features_tensor(r, d),
                &time_features_tensor(t, d),
            ],
            1,
        );
        for layer in &self.hidden {
            x = layer.forward(&x).mish();
        }
        self.output.forward(&x)
    }

    /// Plain f32 copy of the network with the time inputs of each flow step folded into
    /// the first layer's bias. `steps` lists `(r, t)` per network evaluation.
    pub fn to_float_policy(&self, meta: PolicyMeta, steps: &[(f64, f64)]) -> Result<FloatPolicy> {
        ensure!(!steps.is_empty(), "at least one flow step");
        let dense = |l: &nn::Linear| -> Result<DenseF32> {
            let w = l.ws.to_kind(Kind::Float).to_device(tch::Device::Cpu);
            let (out_dim, in_dim) = w.size2()?;
            let b =
                l.bs.as_ref()
                    .expect("linear layers have biases")
                    .to_kind(Kind::Float)
                    .to_device(tch::Device::Cpu);
            Ok(DenseF32 {
                in_dim: in_dim as usize,
                out_dim: out_dim as usize,
                weight: Vec::<f32>::try_from(w.contiguous().view([-1]))?,
                bias: Vec::<f32>::try_from(b.contiguous())?,
            })
        };
        let s = &self.shape;
        let first = dense(&self.hidden[0])?;
        let direct = s.obs_dim + s.act_dim;
        let step_biases = steps
            .iter()
            .map(|&(r, t)| {
                let feats: Vec<f64> = time_features(r, s.time_dim)
                    .into_iter()
                    .chain(time_features(t, s.time_dim))
                    .collect();
                (0..first.out_dim)
                    .map(|c| {
                        let row = &first.weight[c * first.in_dim + direct..(c + 1) * first.in_dim];
                        (first.bias[c] as f64
                            + row
                                .iter()
                                .zip(&feats)
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
                .flat_map(|c| first.weight[c * first.in_dim..c * first.in_dim + direct].to_vec())
                .collect(),
            bias: first.bias.clone(),
        };
        let mut hidden = vec![first_direct];
        for l in &self.hidden[1..] {
            hidden.push(dense(l)?);
        }
        Ok(FloatPolicy {
            meta,
            obs_dim: s.obs_dim,
            act_dim: s.act_dim,
            hidden,
            step_biases,
            activation: Activation::Mish,
            output: dense(&self.output)?,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::ProvenanceInfo;

    #[test]
    fn folded_float_policy_matches_tch_forward() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let shape = PolicyShape {
            obs_dim: 5,
            act_dim: 3,
            hidden: vec![16, 16],
            time_dim: 8,
        };
        let net = FlowPolicyNet::new(&vs.root(), shape);
        let meta = PolicyMeta {
            env_id: "Test-v0".into(),
            algorithm: Algorithm::FlameM,
            action_low: vec![-1.0; 3],
            action_high: vec![1.0; 3],
            obs_mean: vec![0.0; 5],
            obs_std: vec![1.0; 5],
            obs_clip: 10.0,
            noise_std: 0.5,
            provenance: ProvenanceInfo::default(),
        };
        let fp = net
            .to_float_policy(meta, &flow_steps(Algorithm::FlameM, 1))
            .unwrap();
        let obs = [0.3f32, -0.2, 0.9, 0.0, -1.1];
        let z = [0.1f32, -0.4, 0.2];
        let u = net.forward(
            &Tensor::from_slice(&obs).view([1, 5]),
            &Tensor::from_slice(&z).view([1, 3]),
            &Tensor::from_slice(&[0.0f32]).view([1, 1]),
            &Tensor::from_slice(&[1.0f32]).view([1, 1]),
        );
        let u = Vec::<f32>::try_from(u.view([-1])).unwrap();
        let a = fp.act(&obs, &z);
        for c in 0..3 {
            let expect = (z[c] - u[c]).clamp(-1.0, 1.0);
            assert!((a[c] - expect).abs() < 1e-5, "{c}: {} vs {}", a[c], expect);
        }
    }
}
