//! The entropy temperature α of SAC and FLAME, learned as log α by Adam on the device.
//!
//! Why on the device: every update reads α (TD target, Q-weights, exploration noise) and
//! some change it. Kept as a host number it would be baked into a CUDA graph at capture
//! and every change would need a read-back; as a one-element tensor beside the networks
//! an update neither reads nor writes the host. The step is torch.optim.Adam's (the fused
//! kernel of [`Adam`]), which is what CleanRL and the official FLAME code use for log α.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use tch::{Device, Kind, Tensor};

use crate::mlp::{step_count, Adam, AdamConfig};

/// log α (one float64 element, the optimized parameter) and its Adam.
pub struct Temperature {
    log_alpha: Tensor,
    adam: Adam,
}

impl Temperature {
    /// α starting at `init_alpha`, stepped by Adam at learning rate `lr`.
    pub fn new(init_alpha: f64, lr: f64, device: Device) -> Self {
        let log_alpha = Tensor::full([1], init_alpha.ln(), (Kind::Double, device));
        Self {
            adam: Adam::new(AdamConfig::with_lr(lr), &log_alpha),
            log_alpha,
        }
    }

    /// α as a fresh zero-dimensional float64 tensor on the device: a factor that
    /// multiplies float32 tensors without promoting them (libtorch treats a 0-dim tensor
    /// like a number), and that later steps do not change.
    pub fn alpha(&self) -> Tensor {
        self.log_alpha.exp().view([])
    }

    /// α on the host (a device read: for progress lines and metrics, not inside updates).
    pub fn value(&self) -> f64 {
        self.log_alpha.double_value(&[0]).exp()
    }

    /// One Adam step on log α with gradient `grad` (one element, any float kind).
    pub fn step(&mut self, grad: &Tensor) {
        let grad = grad.to_kind(Kind::Double).reshape([1]);
        self.adam.step(&self.log_alpha, &grad);
    }

    /// Checkpoint entries: `alpha.state` = [log α, Adam's m, Adam's v] and
    /// `alpha.adam_steps`.
    pub fn entries(&self) -> Vec<(String, Tensor)> {
        let state = Tensor::cat(&[&self.log_alpha, &self.adam.m, &self.adam.v], 0);
        vec![
            ("alpha.state".to_string(), state.to_device(Device::Cpu)),
            (
                "alpha.adam_steps".to_string(),
                Tensor::from_slice(&[self.adam.steps()]),
            ),
        ]
    }

    /// Restores [`Temperature::entries`] in place.
    pub fn restore(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |name: &str| {
            state
                .get(name)
                .with_context(|| format!("checkpoint lacks {name}"))
        };
        let saved = get("alpha.state")?;
        ensure!(
            saved.kind() == Kind::Double && saved.size() == [3],
            "checkpoint alpha.state is {:?} {:?}, expected Double [3]",
            saved.kind(),
            saved.size()
        );
        tch::no_grad(|| {
            for (k, dst) in [&mut self.log_alpha, &mut self.adam.m, &mut self.adam.v]
                .into_iter()
                .enumerate()
            {
                dst.copy_(&saved.narrow(0, k as i64, 1));
            }
        });
        let steps = step_count("alpha.adam_steps", get("alpha.adam_steps")?)?;
        self.adam.set_steps(steps);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps on log α are torch.optim.Adam's on a scalar parameter, and the checkpoint
    /// entries restore them exactly (the next steps go on identically).
    #[test]
    fn steps_follow_torch_adam_and_restore_exactly() {
        use tch::nn::OptimizerConfig;
        let mut vs = tch::nn::VarStore::new(Device::Cpu);
        let _ = vs
            .root()
            .var_copy("log_alpha", &Tensor::from_slice(&[0.2f64.ln()]));
        vs.double();
        let mut reference = vs.root().get("log_alpha").expect("made above");
        // The variable was made in float32: give it the exact float64 start.
        tch::no_grad(|| reference.copy_(&Tensor::from_slice(&[0.2f64.ln()])));
        let mut opt = tch::nn::Adam::default().build(&vs, 3e-4).unwrap();
        let mut ours = Temperature::new(0.2, 3e-4, Device::Cpu);
        let gap = |log_alpha: f64| (log_alpha.exp() - 0.15) * 4.0;
        for _ in 0..30 {
            let g = gap(reference.double_value(&[0]));
            opt.zero_grad();
            (&reference * g).sum(Kind::Double).backward();
            opt.step();
            ours.step(&Tensor::from(gap(ours.value().ln())));
        }
        let (a, b) = (ours.value().ln(), reference.double_value(&[0]));
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");

        let saved: HashMap<String, Tensor> = ours.entries().into_iter().collect();
        let mut restored = Temperature::new(1.0, 3e-4, Device::Cpu);
        restored.restore(&saved).unwrap();
        for t in [&mut ours, &mut restored] {
            t.step(&Tensor::from(0.7));
        }
        assert_eq!(ours.value(), restored.value());
        assert!(ours.alpha().size().is_empty(), "α is zero-dimensional");

        let mut bad = saved;
        bad.insert(
            "alpha.state".into(),
            Tensor::from_slice(&[1.0f32, 2.0, 3.0]),
        );
        let err = restored.restore(&bad).unwrap_err().to_string();
        assert!(err.contains("alpha.state is Float [3]"), "{err}");
    }
}
