//! MLPs whose parameters live in one flat tensor, and Adam on such a tensor.
//!
//! Why flat: on a 2-core CPU a SAC update is dominated by per-op overhead, not FLOPs.
//! With all of a network's weights in one leaf tensor, Adam, the Polyak average and the
//! checkpoint are each a handful of ops on one buffer instead of one per layer, gradients
//! come back from one `run_backward` call, and the optimizer state is two tensors that
//! save and load exactly (tch's `nn::Optimizer` state cannot be saved, so resuming with
//! it would silently restart Adam's moments).
//!
//! Two ways to differentiate: autograd ([`Mlp::forward`] then [`Mlp::grad`]), for any
//! loss; and a hand-written backward pass ([`Mlp::forward_taped`] then
//! [`Mlp::backward`]) for callers that know the loss's gradient at the output (the
//! critics' TD loss, SAC's actor loss). The second calls the same kernels without
//! building a graph, and `tests::taped_backward_equals_autograd` holds it to the first.
//!
//! An [`Mlp`] may hold an *ensemble* of `E` members with identical shapes (the twin
//! critics are `E = 2`): each layer's weights are `[E, in, out]` and one batched matmul
//! evaluates every member.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Hidden-layer nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// CleanRL's SAC networks.
    Relu,
    /// The FLAME paper's networks.
    Mish,
}

impl Activation {
    /// The activation of a fresh (non-leaf) pre-activation `x`: ReLU in place (autograd
    /// allows it: the matmul that made `x` does not save its output), and tensors that
    /// need no gradient take the faster [`mish_no_grad`].
    pub fn apply(self, mut x: Tensor) -> Tensor {
        match self {
            Activation::Relu => x.relu_(),
            Activation::Mish if x.requires_grad() => x.mish(),
            Activation::Mish => mish_no_grad(&x),
        }
    }

    /// The derivative at `x`, for forward-mode tangents:
    /// mish'(x) = tanh(sp(x)) + x · sigmoid(x) · (1 − tanh²(sp(x))), sp = softplus.
    pub fn derivative(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Relu => x.gt(0.0).to_kind(x.kind()),
            Activation::Mish => {
                let tanh_sp = x.softplus().tanh();
                &tanh_sp + x * x.sigmoid() * (1.0 - &tanh_sp * &tanh_sp)
            }
        }
    }
}

impl Activation {
    /// The activation of a fresh pre-activation `z` for a [`Mlp::forward_taped`] pass,
    /// and what [`Activation::backward`] needs of it: ReLU is taken in place and keeps its
    /// output (`relu'(z) = [out > 0]`, as libtorch's autograd saves it), mish keeps `z`.
    /// libtorch's own kernels (not [`mish_no_grad`]'s shortcut), so the pass computes the
    /// same values as the autograd pass.
    fn forward_taped(self, mut z: Tensor) -> (Tensor, Tensor) {
        match self {
            Activation::Relu => {
                let out = z.relu_();
                (out.shallow_clone(), out)
            }
            Activation::Mish => (z.mish(), z),
        }
    }

    /// The gradient with respect to the pre-activation, given the gradient `grad` with
    /// respect to the activation and what [`Activation::forward_taped`] saved: the
    /// kernels libtorch's autograd calls.
    fn backward(self, grad: &Tensor, saved: &Tensor) -> Tensor {
        match self {
            Activation::Relu => saved.threshold_backward(grad, 0.0),
            Activation::Mish => saved.mish_backward(grad),
        }
    }
}

/// mish(x) = x·tanh(softplus(x)) = x·n/(n + 2) with n = eˣ·(eˣ + 2): one exp where
/// libtorch's kernel takes an exp, a log1p and a tanh, and in-place steps on fresh
/// buffers. On the cache-blocked critic pass over FLAME's candidates it is ~23% faster
/// than `Tensor::mish` (145 vs 188 ms for 25,600 rows of the 3×256 twin critic here) and
/// equal to it within f32 rounding. Autograd cannot go through the in-place steps: only
/// for tensors that need no gradient. Above x = 20, n/(n + 2) is 1 in f32, so the
/// exponent is clamped there.
fn mish_no_grad(x: &Tensor) -> Tensor {
    let mut exp = x.clamp_max(20.0);
    let _ = exp.exp_();
    let mut ratio = &exp + 2.0;
    let _ = ratio.g_mul_(&exp);
    let denominator = &ratio + 2.0;
    let _ = ratio.g_div_(&denominator);
    let _ = ratio.g_mul_(x);
    ratio
}

/// The shape of an (ensemble) MLP: `sizes = [in, hidden.., out]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpShape {
    pub sizes: Vec<usize>,
    pub activation: Activation,
    /// Ensemble members (1 for a plain network).
    pub members: usize,
}

impl MlpShape {
    /// `(weight offset, bias offset, in, out)` of each layer in the flat vector; the
    /// weight block is `[members, in, out]`, the bias block `[members, 1, out]`.
    fn layout(&self) -> Vec<(i64, i64, i64, i64)> {
        let e = self.members as i64;
        let mut offset = 0i64;
        self.sizes
            .windows(2)
            .map(|w| {
                let (i, o) = (w[0] as i64, w[1] as i64);
                let wo = offset;
                let bo = wo + e * i * o;
                offset = bo + e * o;
                (wo, bo, i, o)
            })
            .collect()
    }

    /// Matmul FLOPs (2·m·n·k) of one forward pass over `rows` inputs, all members;
    /// biases and activations are not counted.
    pub fn matmul_flops(&self, rows: usize) -> f64 {
        let per_row: usize = self.sizes.windows(2).map(|w| w[0] * w[1]).sum();
        2.0 * rows as f64 * (self.members * per_row) as f64
    }

    pub fn num_params(&self) -> i64 {
        let e = self.members as i64;
        self.sizes
            .windows(2)
            .map(|w| e * (w[0] * w[1] + w[1]) as i64)
            .sum()
    }
}

/// How a layer's matmul runs, from its weight's shape.
enum LayerKind {
    /// `[in, out]`: one `addmm`.
    Single,
    /// `[E, in, out]`: one batched matmul.
    Ensemble,
    /// `[E, in, 1]` (a critic's output layer): an elementwise product and a row sum.
    /// libtorch's batched matmul with one output column runs at ~3 GFLOP/s on the
    /// 2-core workstation (~85 µs for 2×256 rows of 256 inputs, forward, weight gradient
    /// or input gradient alike) against ~10–35 µs for the elementwise forms.
    EnsembleColumn,
}

impl LayerKind {
    fn of(w: &Tensor) -> Self {
        match w.size().as_slice() {
            [_, _] => LayerKind::Single,
            [_, _, 1] => LayerKind::EnsembleColumn,
            _ => LayerKind::Ensemble,
        }
    }
}

/// What [`Mlp::forward_taped`] keeps for [`Mlp::backward`]: each layer's input and what
/// each hidden layer's activation saved ([`Activation::forward_taped`]).
pub struct Tape {
    inputs: Vec<Tensor>,
    activations: Vec<Tensor>,
}

/// A parameter gradient written by [`Mlp::backward`]: one flat vector laid out like the
/// network's `params` (what [`Adam::step`] takes) and its per-layer views.
pub struct ParamGrad {
    pub flat: Tensor,
    layers: Vec<(Tensor, Tensor)>,
}

/// An MLP (or ensemble of MLPs) with flat parameters.
pub struct Mlp {
    pub shape: MlpShape,
    /// All weights and biases in one buffer (no grad); optimizers, Polyak averages and
    /// checkpoints work on it.
    pub params: Tensor,
    /// Per layer `(weight [E, in, out] or [in, out], bias [E, 1, out] or [out])`: leaf
    /// tensors that require grad and share `params`' storage, so autograd never has to
    /// scatter gradients back into the flat buffer.
    leaves: Vec<(Tensor, Tensor)>,
    layout: Vec<(i64, i64, i64, i64)>,
}

/// How an [`Mlp`]'s weights and biases start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// PyTorch's `nn.Linear`: weights and biases U(±1/√fan_in) (weight std 0.58/√fan_in).
    #[default]
    Torch,
    /// Haiku's `hk.Linear` (the official FLAME code): weights N(0, 1/fan_in) truncated at
    /// ±2 std (std 0.88/√fan_in), biases zero.
    Haiku,
}

impl Init {
    pub fn is_torch(&self) -> bool {
        *self == Init::Torch
    }
}

/// `n` draws of the standard normal truncated to [−2, 2] (inverse CDF of a uniform on
/// the truncated range).
fn truncated_standard_normal(n: i64, opts: (Kind, Device)) -> Tensor {
    /// Φ(2), the standard normal CDF at the upper bound.
    const CDF_AT_2: f64 = 0.977_249_868_051_820_8;
    let p = Tensor::empty([n], opts).uniform_(1.0 - CDF_AT_2, CDF_AT_2);
    (p * 2.0 - 1.0).erfinv() * std::f64::consts::SQRT_2
}

impl Mlp {
    /// An MLP with PyTorch's `nn.Linear` default initialization ([`Init::Torch`]).
    pub fn new(shape: MlpShape, device: Device) -> Self {
        Self::with_init(shape, Init::Torch, device)
    }

    /// An MLP initialized by `init`, drawn from torch's global generator.
    pub fn with_init(shape: MlpShape, init: Init, device: Device) -> Self {
        let layout = shape.layout();
        let e = shape.members as i64;
        let mut chunks = Vec::new();
        for &(_, _, i, o) in &layout {
            let scale = 1.0 / (i as f64).sqrt();
            let opts = (Kind::Float, device);
            let (w, b) = match init {
                Init::Torch => (
                    Tensor::empty([e * i * o], opts).uniform_(-scale, scale),
                    Tensor::empty([e * o], opts).uniform_(-scale, scale),
                ),
                Init::Haiku => (
                    truncated_standard_normal(e * i * o, opts) * scale,
                    Tensor::zeros([e * o], opts),
                ),
            };
            chunks.push(w);
            chunks.push(b);
        }
        let params = Tensor::cat(&chunks, 0);
        let leaves = Self::leaves_of(&shape, &layout, &params);
        Self {
            shape,
            params,
            leaves,
            layout,
        }
    }

    /// Per layer `(weight, bias)` leaves that require grad and share `params`' storage.
    fn leaves_of(
        shape: &MlpShape,
        layout: &[(i64, i64, i64, i64)],
        params: &Tensor,
    ) -> Vec<(Tensor, Tensor)> {
        Self::views(shape, layout, params)
            .into_iter()
            .map(|(w, b)| {
                (
                    w.detach().set_requires_grad(true),
                    b.detach().set_requires_grad(true),
                )
            })
            .collect()
    }

    /// Per layer (weight, bias) views into a flat parameter vector.
    fn views(
        shape: &MlpShape,
        layout: &[(i64, i64, i64, i64)],
        params: &Tensor,
    ) -> Vec<(Tensor, Tensor)> {
        let e = shape.members as i64;
        layout
            .iter()
            .map(|&(wo, bo, i, o)| {
                if e == 1 {
                    (
                        params.narrow(0, wo, i * o).view([i, o]),
                        params.narrow(0, bo, o),
                    )
                } else {
                    (
                        params.narrow(0, wo, e * i * o).view([e, i, o]),
                        params.narrow(0, bo, e * o).view([e, 1, o]),
                    )
                }
            })
            .collect()
    }

    /// The first layer's input: an ensemble's members all get a shared `[B, in]` input.
    fn members_input(&self, x: &Tensor) -> Tensor {
        let e = self.shape.members as i64;
        if e > 1 && x.dim() == 2 {
            let (b, i) = x.size2().expect("2-d input");
            x.unsqueeze(0).expand([e, b, i], false).contiguous()
        } else {
            x.shallow_clone()
        }
    }

    /// `h·w + b`, batched over an ensemble's members.
    fn linear(&self, h: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
        match LayerKind::of(w) {
            LayerKind::Single => b.addmm(h, w),
            LayerKind::Ensemble => b.baddbmm(h, w, 1.0, 1.0),
            LayerKind::EnsembleColumn => {
                (h * w.transpose(1, 2)).sum_dim_intlist(-1, true, Kind::Float) + b
            }
        }
    }

    /// Writes `∂L/∂w` of a layer into `dw` from its input `h` and `dz = ∂L/∂(h·w + b)`.
    fn weight_grad_into(dw: &Tensor, h: &Tensor, dz: &Tensor) {
        let _ = match LayerKind::of(dw) {
            LayerKind::Single => h.tr().mm_out(dw, dz),
            LayerKind::Ensemble => h.transpose(1, 2).bmm_out(dw, dz),
            LayerKind::EnsembleColumn => {
                (h * dz).sum_intlist_out(&dw.squeeze_dim(2), [1i64].as_slice(), false, Kind::Float)
            }
        };
    }

    /// `∂L/∂h = dz·wᵀ` of a layer (`w` may be a row slice of the weight, for the
    /// gradient of some input columns only).
    fn input_grad(w: &Tensor, dz: &Tensor) -> Tensor {
        match LayerKind::of(w) {
            LayerKind::EnsembleColumn => dz * w.transpose(1, 2),
            _ => dz.matmul(&w.transpose(-1, -2)),
        }
    }

    /// The network evaluated with per-layer `(weight, bias)` views such as
    /// [`Mlp::layer_views`] returns (callers that evaluate a Polyak copy often keep its
    /// views instead of making them per call).
    pub fn forward_layers(&self, layers: &[(Tensor, Tensor)], x: &Tensor) -> Tensor {
        let last = layers.len() - 1;
        let mut h = self.members_input(x);
        for (k, (w, b)) in layers.iter().enumerate() {
            h = self.linear(&h, w, b);
            if k < last {
                h = self.shape.activation.apply(h);
            }
        }
        h
    }

    /// Per layer `(weight [in, out], bias [out])` views into `params` (a flat vector of
    /// this network's layout, e.g. `self.params` or a Polyak/EMA copy of it).
    pub fn layer_views(&self, params: &Tensor) -> Vec<(Tensor, Tensor)> {
        Self::views(&self.shape, &self.layout, params)
    }

    /// Forward pass of a single network (`members == 1`) with parameters `params` that
    /// also carries a tangent: returns `(f(x), J_f(x)·ẋ)` exactly (forward-mode AD, which
    /// tch lacks). The tangent goes through each layer's weight (no bias) and is scaled
    /// by the activation's derivative at the primal pre-activation: one extra matmul per
    /// layer. Differentiable in `params` like [`Mlp::forward_with`].
    pub fn forward_with_tangent(
        &self,
        params: &Tensor,
        x: &Tensor,
        x_dot: &Tensor,
    ) -> (Tensor, Tensor) {
        assert_eq!(self.shape.members, 1, "tangents are for single networks");
        let layers = self.layer_views(params);
        let last = layers.len() - 1;
        let (mut h, mut h_dot) = (x.shallow_clone(), x_dot.shallow_clone());
        for (k, (w, b)) in layers.iter().enumerate() {
            h = b.addmm(&h, w);
            h_dot = h_dot.matmul(w);
            if k < last {
                let scaled = &h_dot * self.shape.activation.derivative(&h);
                h_dot = scaled;
                h = self.shape.activation.apply(h);
            }
        }
        (h, h_dot)
    }

    /// `x [B, in]` (shared by all members) or `[E, B, in]` → `[E, B, out]` for an
    /// ensemble, `[B, out]` for a single network, differentiable in the parameters.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_layers(&self.leaves, x)
    }

    /// The same network evaluated with another flat parameter vector of the same shape
    /// (a Polyak target), not differentiable in those parameters.
    pub fn forward_with(&self, params: &Tensor, x: &Tensor) -> Tensor {
        self.forward_layers(&Self::views(&self.shape, &self.layout, params), x)
    }

    /// Forward pass of the network's own parameters without autograd, keeping what
    /// [`Mlp::backward`] needs; same shapes as [`Mlp::forward`].
    pub fn forward_taped(&self, x: &Tensor) -> (Tensor, Tape) {
        tch::no_grad(|| {
            let last = self.leaves.len() - 1;
            let mut tape = Tape {
                inputs: Vec::with_capacity(self.leaves.len()),
                activations: Vec::with_capacity(last),
            };
            let mut h = self.members_input(x);
            for (k, (w, b)) in self.leaves.iter().enumerate() {
                let z = self.linear(&h, w, b);
                tape.inputs.push(h);
                h = if k < last {
                    let (activated, saved) = self.shape.activation.forward_taped(z);
                    tape.activations.push(saved);
                    activated
                } else {
                    z
                };
            }
            (h, tape)
        })
    }

    /// A zeroed gradient buffer for [`Mlp::backward`], laid out like `params`.
    pub fn param_grad(&self) -> ParamGrad {
        let flat = self.params.zeros_like();
        let layers = self.layer_views(&flat);
        ParamGrad { flat, layers }
    }

    /// Backward pass of a [`Mlp::forward_taped`] pass, by hand: `grad_out` is the loss's
    /// gradient with respect to the output. Writes the gradient with respect to the
    /// parameters into `param_grad` when given, and returns the gradient with respect to
    /// the input columns `start..start + len` when `input_columns` is
    /// `Some((start, len))` (`[E, B, len]` for an ensemble: one slice per member).
    /// It calls the kernels libtorch's autograd calls, without building a graph and into
    /// a buffer whose layer views are made once: on a 2-core CPU a SAC update is mostly
    /// per-op overhead (the README's status gives the measured rates).
    pub fn backward(
        &self,
        tape: &Tape,
        grad_out: &Tensor,
        mut param_grad: Option<&mut ParamGrad>,
        input_columns: Option<(i64, i64)>,
    ) -> Option<Tensor> {
        tch::no_grad(|| {
            // Leading member dimensions (0 or 1): the activations' row dimension and the
            // weights' input dimension both come after them.
            let lead = self.shape.members.min(2) as i64 - 1;
            let mut dz = grad_out.shallow_clone();
            for k in (0..self.leaves.len()).rev() {
                if let Some(grad) = param_grad.as_deref_mut() {
                    let (dw, db) = &grad.layers[k];
                    Self::weight_grad_into(dw, &tape.inputs[k], &dz);
                    let _ = dz.sum_intlist_out(db, [lead].as_slice(), lead == 1, Kind::Float);
                }
                let w = &self.leaves[k].0;
                if k == 0 {
                    return input_columns
                        .map(|(start, len)| Self::input_grad(&w.narrow(lead, start, len), &dz));
                }
                let dh = Self::input_grad(w, &dz);
                dz = self
                    .shape
                    .activation
                    .backward(&dh, &tape.activations[k - 1]);
            }
            unreachable!("the loop returns at the first layer")
        })
    }

    /// Gradient of `loss` with respect to the parameters, as one flat vector laid out
    /// like `params`.
    pub fn grad(&self, loss: &Tensor) -> Tensor {
        Self::joint_grad(&[self], loss)
    }

    /// `∂loss/∂params` of several networks from one backward pass, their flat gradients
    /// concatenated in the order given (the layout of [`Mlp::share_storage`]'s buffer).
    pub fn joint_grad(nets: &[&Mlp], loss: &Tensor) -> Tensor {
        let inputs: Vec<&Tensor> = nets
            .iter()
            .flat_map(|net| net.leaves.iter().flat_map(|(w, b)| [w, b]))
            .collect();
        let grads = Tensor::run_backward(&[loss], &inputs, false, false);
        let flat: Vec<Tensor> = grads.iter().map(|g| g.view([-1])).collect();
        Tensor::cat(&flat, 0)
    }

    /// Moves the parameters (values kept) into `storage`, a flat tensor of
    /// [`MlpShape::num_params`] elements: typically a slice of one buffer that several
    /// networks share, so a single optimizer, EMA and checkpoint entry cover them all.
    pub fn share_storage(&mut self, mut storage: Tensor) {
        assert_eq!(
            storage.size(),
            self.params.size(),
            "storage of another size"
        );
        tch::no_grad(|| storage.copy_(&self.params));
        self.leaves = Self::leaves_of(&self.shape, &self.layout, &storage);
        self.params = storage;
    }

    /// A detached copy of the parameters (a Polyak target's starting point).
    pub fn detached_copy(&self) -> Tensor {
        self.params.copy()
    }

    /// `(name, tensor)` pairs of a single network's layers in `nn::Linear` layout
    /// (`{prefix}{k}.weight [out, in]`, `{prefix}{k}.bias [out]`), for files other tools read.
    pub fn linear_layers(&self, prefix: &str) -> Vec<(String, Tensor)> {
        assert_eq!(
            self.shape.members, 1,
            "only single networks export as layers"
        );
        let p = &self.params;
        self.layout
            .iter()
            .enumerate()
            .flat_map(|(k, &(wo, bo, i, o))| {
                [
                    (
                        format!("{prefix}{k}.weight"),
                        p.narrow(0, wo, i * o)
                            .view([i, o])
                            .transpose(0, 1)
                            .contiguous(),
                    ),
                    (format!("{prefix}{k}.bias"), p.narrow(0, bo, o).copy()),
                ]
            })
            .collect()
    }
}

/// Adam hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl AdamConfig {
    /// torch.optim.Adam's defaults with learning rate `lr`.
    pub fn with_lr(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Adam (as torch.optim.Adam, no weight decay) on one flat parameter tensor; its state
/// is two tensors and a step count, all saved in checkpoints.
///
/// The step count and the learning rate live on the parameters' device, as
/// `torch.optim.Adam(capturable=True)` keeps them: a step increments the count there and
/// the kernel reads both there, so an update recorded in a CUDA graph
/// ([`crate::cuda_graph`]) steps with the right bias corrections and learning rate at every
/// replay, and no step reads anything back to the host.
pub struct Adam {
    pub config: AdamConfig,
    pub m: Tensor,
    pub v: Tensor,
    /// Steps taken, one float32 element (exact to 2²⁴ steps; torch.optim keeps it so).
    steps: Tensor,
    /// The learning rate the next step uses (`config.lr` until [`Adam::set_lr`]); float64
    /// on the CPU, where libtorch's kernel reads it as a double (the steps then equal those
    /// of a host learning rate bit for bit), float32 on CUDA, whose kernel reads floats.
    lr: Tensor,
}

extern "C" {
    /// `csrc/fused_adam.cpp`: takes `tch::Tensor`'s `at::Tensor*` handles.
    fn flame_fused_adam_step(
        params: *const c_void,
        grad: *const c_void,
        m: *const c_void,
        v: *const c_void,
        steps: *const c_void,
        lr: *const c_void,
        beta1: f64,
        beta2: f64,
        eps: f64,
    ) -> *const c_char;
}

impl Adam {
    pub fn new(config: AdamConfig, params: &Tensor) -> Self {
        let device = params.device();
        let lr_kind = match device {
            Device::Cpu => Kind::Double,
            _ => Kind::Float,
        };
        Self {
            config,
            m: params.zeros_like(),
            v: params.zeros_like(),
            steps: Tensor::zeros([1], (Kind::Float, device)),
            lr: Tensor::full([1], config.lr, (lr_kind, device)),
        }
    }

    /// The steps taken (reads the device count: not for use inside an update).
    pub fn steps(&self) -> i64 {
        self.steps.double_value(&[0]) as i64
    }

    /// Sets the step count (a restored checkpoint; tests).
    pub fn set_steps(&mut self, steps: i64) {
        let _ = self.steps.fill_(steps as f64);
    }

    /// The step count as a one-element float32 tensor on the device, for schedules that
    /// are computed there.
    pub fn steps_tensor(&self) -> &Tensor {
        &self.steps
    }

    /// The learning rate of the next steps, from a one-element tensor on the device
    /// (copied in place, so a graph that captured this keeps reading the new value).
    pub fn set_lr(&mut self, lr: &Tensor) {
        tch::no_grad(|| self.lr.copy_(lr));
    }

    /// One step: `params ← params − lr·m̂/(√v̂ + ε)` with bias-corrected moments, by
    /// libtorch's fused kernel (`torch.optim.Adam(fused=True)`): one pass over the four
    /// buffers. The op-by-op step (lerp, mul, addcmul, sqrt, div, add, mul, addcdiv)
    /// took 130–190 µs on the SAC critic's 145k parameters on the 2-core CPU, this one
    /// ~40 µs, the same moments bit for bit and parameters within an ulp
    /// (`tests::adam_matches_torch_adam` holds it to tch's `nn::Adam`).
    ///
    /// Panics if the gradient or the moments do not match the parameters (size, dtype,
    /// device, contiguity), which only a bug can cause: every caller builds `m` and `v`
    /// from `params`. The kernel itself checks none of this (it walks raw pointers over
    /// the parameters' length), so the check is here.
    pub fn step(&mut self, params: &Tensor, grad: &Tensor) {
        let c = self.config;
        assert!(
            params.is_contiguous(),
            "fused Adam step: the parameters are not contiguous"
        );
        for (name, t) in [("gradient", grad), ("m", &self.m), ("v", &self.v)] {
            assert!(
                t.numel() == params.numel()
                    && t.kind() == params.kind()
                    && t.device() == params.device()
                    && t.is_contiguous(),
                "fused Adam step: the {name} ({:?} {:?} on {:?}) does not match the contiguous parameters ({:?} {:?} on {:?})",
                t.size(),
                t.kind(),
                t.device(),
                params.size(),
                params.kind(),
                params.device(),
            );
        }
        let error = tch::no_grad(|| {
            let _ = self.steps.g_add_scalar_(1.0);
            // SAFETY: each pointer is a live `at::Tensor` handle owned by a `Tensor`
            // borrowed for the whole call; the C++ side copies the handles and returns
            // null or a NUL-terminated message in a thread-local buffer.
            unsafe {
                let error = flame_fused_adam_step(
                    params.as_ptr().cast(),
                    grad.as_ptr().cast(),
                    self.m.as_ptr().cast(),
                    self.v.as_ptr().cast(),
                    self.steps.as_ptr().cast(),
                    self.lr.as_ptr().cast(),
                    c.beta1,
                    c.beta2,
                    c.eps,
                );
                (!error.is_null()).then(|| CStr::from_ptr(error).to_string_lossy().into_owned())
            }
        });
        if let Some(error) = error {
            panic!("fused Adam step: {error}");
        }
    }
}

/// A checkpoint tensor fits the buffer it restores: same shape and element type, so a
/// damaged or foreign checkpoint is an error naming the entry, not a panic inside
/// libtorch's copy.
fn ensure_fits(name: &str, src: &Tensor, dst: &Tensor) -> Result<()> {
    ensure!(
        src.size() == dst.size() && src.kind() == dst.kind(),
        "checkpoint tensor {name} is {:?} {:?}, expected {:?} {:?}",
        src.kind(),
        src.size(),
        dst.kind(),
        dst.size()
    );
    Ok(())
}

/// An Adam step count stored in a checkpoint (one non-negative int64), or an error
/// naming the entry.
pub fn step_count(name: &str, t: &Tensor) -> Result<i64> {
    ensure!(
        t.kind() == Kind::Int64 && t.numel() == 1,
        "checkpoint tensor {name} is {:?} {:?}, expected one int64 step count",
        t.kind(),
        t.size()
    );
    let steps = t.f_view([1])?.f_int64_value(&[0])?;
    ensure!(steps >= 0, "checkpoint tensor {name} holds {steps} steps");
    Ok(steps)
}

/// Checkpoint entries `{prefix}.{name}` of a trained network: its flat buffers (the
/// parameters and same-sized copies such as Polyak targets or an EMA) and its Adam state
/// (`adam_m`, `adam_v`, `adam_steps`).
pub fn checkpoint_entries(
    prefix: &str,
    buffers: &[(&str, &Tensor)],
    adam: &Adam,
) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = buffers
        .iter()
        .map(|(name, t)| (format!("{prefix}.{name}"), t.shallow_clone()))
        .collect();
    out.extend([
        (format!("{prefix}.adam_m"), adam.m.shallow_clone()),
        (format!("{prefix}.adam_v"), adam.v.shallow_clone()),
        (
            format!("{prefix}.adam_steps"),
            Tensor::from_slice(&[adam.steps()]),
        ),
    ]);
    out
}

/// Restores the entries [`checkpoint_entries`] wrote, in place, checking every size.
pub fn restore_entries(
    prefix: &str,
    buffers: &mut [(&str, &mut Tensor)],
    adam: &mut Adam,
    state: &HashMap<String, Tensor>,
) -> Result<()> {
    let get = |name: &str| {
        let key = format!("{prefix}.{name}");
        state
            .get(&key)
            .with_context(|| format!("checkpoint lacks {key}"))
    };
    tch::no_grad(|| -> Result<()> {
        let Adam { m, v, .. } = &mut *adam;
        let moments: [(&str, &mut Tensor); 2] = [("adam_m", m), ("adam_v", v)];
        for (name, dst) in buffers
            .iter_mut()
            .map(|(n, t)| (*n, &mut **t))
            .chain(moments)
        {
            let src = get(name)?;
            ensure_fits(&format!("{prefix}.{name}"), src, dst)?;
            dst.copy_(src);
        }
        Ok(())
    })?;
    adam.set_steps(step_count(
        &format!("{prefix}.adam_steps"),
        get("adam_steps")?,
    )?);
    Ok(())
}

#[cfg(test)]
mod tangent_tests {
    use super::*;

    /// The forward-mode tangent pass equals autograd's JVP, obtained by double backward:
    /// g ↦ Jᵀg is linear in g, and d/dg ⟨Jᵀg, v⟩ = J v.
    #[test]
    fn tangent_pass_equals_autograd_jvp() {
        tch::manual_seed(11);
        for activation in [Activation::Mish, Activation::Relu] {
            let mlp = Mlp::new(
                MlpShape {
                    sizes: vec![7, 32, 32, 3],
                    activation,
                    members: 1,
                },
                Device::Cpu,
            );
            let opts = (Kind::Float, Device::Cpu);
            let x = Tensor::randn([5, 7], opts).set_requires_grad(true);
            let x_dot = Tensor::randn([5, 7], opts);
            let (y, y_dot) = mlp.forward_with_tangent(&mlp.params, &x, &x_dot);
            let g = y.zeros_like().set_requires_grad(true);
            let vjp =
                Tensor::run_backward(&[(&y * &g).sum(Kind::Float)], &[&x], true, true).remove(0);
            let jvp = Tensor::run_backward(&[(vjp * &x_dot).sum(Kind::Float)], &[&g], false, false)
                .remove(0);
            let err = (&y_dot - &jvp).abs().max().double_value(&[]);
            assert!(err < 1e-5, "{activation:?}: max |Δ| {err}");
            let plain = mlp.forward_with(&mlp.params, &x);
            assert!((plain - y).abs().max().double_value(&[]) < 1e-6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, OptimizerConfig};

    fn shape(members: usize) -> MlpShape {
        MlpShape {
            sizes: vec![3, 8, 2],
            activation: Activation::Relu,
            members,
        }
    }

    /// Haiku's init: weights inside ±2/√fan_in with the truncated normal's std
    /// 0.880/√fan_in, zero biases; torch's: U(±1/√fan_in), std 0.577/√fan_in.
    #[test]
    fn initializations_have_their_stated_distributions() {
        tch::manual_seed(3);
        let wide = MlpShape {
            sizes: vec![400, 300],
            activation: Activation::Relu,
            members: 1,
        };
        for (init, std, bound) in [(Init::Haiku, 0.880, 2.0), (Init::Torch, 0.577, 1.0)] {
            let net = Mlp::with_init(wide.clone(), init, Device::Cpu);
            let (w, b) = net.layer_views(&net.params).remove(0);
            let w = w * 20.0; // √fan_in
            let measured = w.std(true).double_value(&[]);
            assert!((measured - std).abs() < 0.01, "{init:?}: std {measured}");
            let max = w.abs().max().double_value(&[]);
            assert!(
                max <= bound + 1e-4 && max > 0.95 * bound,
                "{init:?}: max {max}"
            );
            let bias_max = b.abs().max().double_value(&[]);
            match init {
                Init::Haiku => assert_eq!(bias_max, 0.0),
                Init::Torch => assert!(bias_max > 0.9 / 20.0 && bias_max <= 1.0 / 20.0),
            }
        }
    }

    #[test]
    fn fast_mish_equals_libtorch_mish() {
        let x = Tensor::linspace(-60.0, 60.0, 100_001, (Kind::Float, Device::Cpu));
        let fast = mish_no_grad(&x);
        let err = (&fast - x.mish()).abs() / (x.mish().abs() + 1e-30);
        let worst = err.max().double_value(&[]);
        assert!(worst < 2e-6, "max relative error {worst}");
        // apply() picks the fast path only where no gradient is needed.
        let leaf = x.detach().set_requires_grad(true);
        let through = Activation::Mish.apply(&leaf * 1.0);
        assert!(through.requires_grad());
        assert!(!Activation::Mish.apply(x.shallow_clone()).requires_grad());
    }

    #[test]
    fn leaves_share_the_flat_parameters() {
        let mut net = Mlp::new(shape(2), Device::Cpu);
        let x = Tensor::randn([5, 3], (Kind::Float, Device::Cpu));
        let before = net.forward(&x).detach();
        assert_eq!(before.size(), [2, 5, 2]);
        assert!(before.allclose(&net.forward_with(&net.params.copy(), &x), 1e-6, 1e-6, false));
        let _ = tch::no_grad(|| net.params.g_add_scalar_(0.1));
        assert!(!before.allclose(&net.forward(&x).detach(), 1e-6, 1e-6, false));
    }

    #[test]
    fn flat_grad_matches_autograd_and_ensemble_members_are_independent() {
        let net = Mlp::new(shape(2), Device::Cpu);
        let x = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
        // Member 1 alone: its gradient must not touch member 0's parameters.
        let loss = net.forward(&x).get(1).square().sum(Kind::Float);
        let g = net.grad(&loss);
        assert_eq!(g.size(), net.params.size());
        let p = net.params.detach().copy().set_requires_grad(true);
        let loss2 = net.forward_with(&p, &x).get(1).square().sum(Kind::Float);
        let g2 = Tensor::run_backward(&[&loss2], &[&p], false, false).remove(0);
        assert!(g.allclose(&g2, 1e-5, 1e-6, false));
    }

    /// The hand-written backward pass equals autograd's, for single networks and
    /// ensembles (with and without a one-column output layer), both activations, in the
    /// parameters and in a slice of the input columns.
    #[test]
    fn taped_backward_equals_autograd() {
        tch::manual_seed(5);
        let opts = (Kind::Float, Device::Cpu);
        for activation in [Activation::Relu, Activation::Mish] {
            for (members, out) in [(1, 3), (2, 3), (2, 1)] {
                let net = Mlp::new(
                    MlpShape {
                        sizes: vec![6, 16, 16, out],
                        activation,
                        members,
                    },
                    Device::Cpu,
                );
                let x = Tensor::randn([9, 6], opts);
                let (y, tape) = net.forward_taped(&x);
                let weights = Tensor::randn_like(&y);
                let mut grad = net.param_grad();
                let input_grad = net
                    .backward(&tape, &weights, Some(&mut grad), Some((2, 4)))
                    .unwrap();

                let leaf = x.detach().set_requires_grad(true);
                let loss = (net.forward(&leaf) * &weights).sum(Kind::Float);
                let expected_params = net.grad(&loss);
                let loss = (net.forward(&leaf) * &weights).sum(Kind::Float);
                let expected_input = Tensor::run_backward(&[&loss], &[&leaf], false, false)
                    .remove(0)
                    .narrow(1, 2, 4);
                let case = format!("{activation:?}, {members} members, {out} outputs");
                assert!(
                    y.allclose(&net.forward(&x).detach(), 1e-6, 1e-6, false),
                    "{case}"
                );
                let err = (&grad.flat - &expected_params)
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(err < 1e-5, "{case}: parameter gradient off by {err}");
                let summed = match members {
                    1 => input_grad,
                    _ => input_grad.sum_dim_intlist(0, false, Kind::Float),
                };
                let err = (summed - expected_input).abs().max().double_value(&[]);
                assert!(err < 1e-5, "{case}: input gradient off by {err}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "fused Adam step: the gradient ([5] Float on Cpu) does not match")]
    fn adam_names_a_gradient_of_the_wrong_size() {
        let params = Tensor::zeros([6], (Kind::Float, Device::Cpu));
        let mut adam = Adam::new(AdamConfig::with_lr(1e-2), &params);
        adam.step(&params, &Tensor::zeros([5], (Kind::Float, Device::Cpu)));
    }

    /// What libtorch refuses comes back through the C++ shim as a message, not an abort.
    #[test]
    #[should_panic(expected = "fused Adam step: \"fused_adam_kernel\" not implemented for 'Long'")]
    fn adam_reports_what_libtorch_refuses() {
        let params = Tensor::zeros([6], (Kind::Int64, Device::Cpu));
        let mut adam = Adam::new(AdamConfig::with_lr(1e-2), &params);
        adam.step(&params, &params.zeros_like());
    }

    #[test]
    fn adam_matches_torch_adam() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs
            .root()
            .var("w", &[6], nn::Init::Uniform { lo: -1.0, up: 1.0 });
        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        let ours = w.detach().copy();
        let mut adam = Adam::new(AdamConfig::with_lr(1e-2), &ours);
        let target = Tensor::from_slice(&[0.5f32, -0.3, 0.1, 0.9, -1.0, 0.0]);
        for _ in 0..50 {
            let loss = (&w - &target).pow_tensor_scalar(4).sum(Kind::Float);
            opt.backward_step(&loss);
            let g = (&ours - &target).pow_tensor_scalar(3) * 4.0;
            adam.step(&ours, &g);
        }
        assert!(
            ours.allclose(&w.detach(), 1e-5, 1e-6, false),
            "{ours} vs {w}"
        );
    }

    /// A checkpoint whose entries do not fit (another shape with the same count, another
    /// element type, a step count that is not one int64, or a negative one) is refused
    /// with the entry's name; it was a panic inside libtorch or tch (`int64_value`).
    #[test]
    fn malformed_checkpoint_entries_are_named() {
        let net = Mlp::new(shape(1), Device::Cpu);
        let mut adam = Adam::new(AdamConfig::with_lr(1e-3), &net.params);
        adam.set_steps(7);
        let good: HashMap<String, Tensor> =
            checkpoint_entries("net", &[("params", &net.params)], &adam)
                .into_iter()
                .collect();
        let n = net.params.numel() as i64;
        let cases: [(&str, Tensor, &str); 5] = [
            (
                "net.params",
                net.params.view([1, n]),
                "net.params is Float [1, ",
            ),
            (
                "net.adam_m",
                adam.m.to_kind(Kind::Double),
                "net.adam_m is Double",
            ),
            (
                "net.adam_steps",
                Tensor::from_slice::<i64>(&[]),
                "net.adam_steps is Int64 [0]",
            ),
            (
                "net.adam_steps",
                Tensor::from_slice(&[1.5f32]),
                "expected one int64 step count",
            ),
            (
                "net.adam_steps",
                Tensor::from_slice(&[-3i64]),
                "holds -3 steps",
            ),
        ];
        for (key, bad, reason) in cases {
            let mut state: HashMap<String, Tensor> = good
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect();
            state.insert(key.to_string(), bad);
            let mut restored = Mlp::new(shape(1), Device::Cpu);
            let mut restored_adam = Adam::new(AdamConfig::with_lr(1e-3), &restored.params);
            let buffers: &mut [(&str, &mut Tensor)] = &mut [("params", &mut restored.params)];
            let err = restore_entries("net", buffers, &mut restored_adam, &state)
                .expect_err("refused")
                .to_string();
            assert!(err.contains(reason), "{key}: {err}");
        }
        let mut restored = Mlp::new(shape(1), Device::Cpu);
        let mut restored_adam = Adam::new(AdamConfig::with_lr(1e-3), &restored.params);
        let buffers: &mut [(&str, &mut Tensor)] = &mut [("params", &mut restored.params)];
        restore_entries("net", buffers, &mut restored_adam, &good).unwrap();
        assert_eq!(restored_adam.steps(), 7);
        assert!(restored.params.equal(&net.params));
    }
}
