//! The flow policy network in tch: `u_θ(z, r, t | s)`, an MLP on
//! `[normalized obs, z, emb(r), emb(t)]` with mish hidden activations (DESIGN §5).
//!
//! For FLAME-M the same network gives the mean velocity over `[r, t]`; acting uses one
//! evaluation at `(r, t) = (0, 1)`. Its weights, saved under the names this module gives
//! them, are what `sim::float_policy::FloatPolicy` reads for export, with the time inputs
//! of each flow step folded into the first layer's bias; the time features here are the
//! tensor form of `sim::float_policy::TimeEmbedding::features`.

use sim::float_policy::{PolicyShape, TimeEmbedding};
use tch::{nn, nn::Module, Tensor};

/// `[1, dim/2]` tensor of the ω_j on `t`'s device.
fn frequencies(t: &Tensor, dim: usize, embedding: TimeEmbedding) -> Tensor {
    let freqs: Vec<f32> = (0..dim / 2)
        .map(|j| embedding.frequency(j, dim) as f32)
        .collect();
    Tensor::from_slice(&freqs)
        .to_device(t.device())
        .view([1, -1])
}

/// [`TimeEmbedding::features`] for a batch `[B, 1]` of times, in tch.
pub fn time_features_tensor(t: &Tensor, dim: usize, embedding: TimeEmbedding) -> Tensor {
    let w = t * frequencies(t, dim, embedding);
    Tensor::cat(&[w.sin(), w.cos()], 1)
        .view([-1, 2, (dim / 2) as i64])
        .transpose(1, 2)
        .reshape([-1, dim as i64])
        * embedding.amplitude(dim)
}

/// d/dt of [`time_features_tensor`] along a tangent `t_dot` ([B, 1]):
/// `a·[ω cos(ωt), −ω sin(ωt)] · ṫ` in the same interleaved order.
pub fn time_features_derivative(
    t: &Tensor,
    t_dot: &Tensor,
    dim: usize,
    embedding: TimeEmbedding,
) -> Tensor {
    let omega = frequencies(t, dim, embedding);
    let w = t * &omega;
    let scale = &omega * t_dot * embedding.amplitude(dim);
    Tensor::cat(&[w.cos() * &scale, -(w.sin() * &scale)], 1)
        .view([-1, 2, (dim / 2) as i64])
        .transpose(1, 2)
        .reshape([-1, dim as i64])
}

pub struct FlowPolicyNet {
    pub shape: PolicyShape,
    hidden: Vec<nn::Linear>,
    output: nn::Linear,
    /// With `shape.time_mlp`: r's and t's `Linear(d → 2d) → mish → Linear(2d → d)`.
    time_mlps: Vec<[nn::Linear; 2]>,
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
        let d = shape.time_dim as i64;
        let time_mlps = if shape.time_mlp {
            ["time_r", "time_t"]
                .iter()
                .map(|net| {
                    let layer = |k: usize, i, o| {
                        nn::linear(path / *net / k.to_string(), i, o, Default::default())
                    };
                    [layer(0, d, 2 * d), layer(1, 2 * d, d)]
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            shape,
            hidden,
            output,
            time_mlps,
        }
    }

    /// The trunk's features of a time input: its embedding, through time MLP `net`
    /// (0: r, 1: t) where the network has them.
    fn time_features(&self, net: usize, time: &Tensor) -> Tensor {
        let features = time_features_tensor(time, self.shape.time_dim, self.shape.time_embedding);
        match self.time_mlps.get(net) {
            Some([inner, outer]) => outer.forward(&inner.forward(&features).mish()),
            None => features,
        }
    }

    /// `u(z, r, t | s)` for a batch: `obs_norm [B, obs]`, `z [B, act]`, `r, t [B, 1]`.
    pub fn forward(&self, obs_norm: &Tensor, z: &Tensor, r: &Tensor, t: &Tensor) -> Tensor {
        let mut x = Tensor::cat(
            &[
                obs_norm,
                z,
                &self.time_features(0, r),
                &self.time_features(1, t),
            ],
            1,
        );
        for layer in &self.hidden {
            x = layer.forward(&x).mish();
        }
        self.output.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::checkpoint_tensors;
    use runtime::blob::Algorithm;
    use sim::float_policy::{FloatPolicy, PolicyMeta, ProvenanceInfo};

    #[test]
    fn folded_float_policy_matches_tch_forward() {
        for embedding in [TimeEmbedding::Raw, TimeEmbedding::Scaled] {
            for time_mlp in [false, true] {
                folded_float_policy_matches_tch_forward_with(embedding, time_mlp);
            }
        }
    }

    fn folded_float_policy_matches_tch_forward_with(time_embedding: TimeEmbedding, time_mlp: bool) {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let shape = PolicyShape {
            obs_dim: 5,
            act_dim: 3,
            hidden: vec![16, 16],
            time_dim: 8,
            time_embedding,
            time_mlp,
        };
        let net = FlowPolicyNet::new(&vs.root(), shape.clone());
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
        let weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        let fp =
            FloatPolicy::from_checkpoint(meta, &shape, 1, &checkpoint_tensors(&weights).unwrap())
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
            assert!(
                (a[c] - expect).abs() < 1e-5,
                "{time_embedding:?} time MLP {time_mlp} {c}: {} vs {}",
                a[c],
                expect
            );
        }
    }
}
