//! Post-training quantization of a flow policy into a runtime blob (DESIGN §6): int8
//! weights, int16 activations (the "16x8" scheme of TFLite Micro and CMSIS-NN).
//!
//! Input: the policy as plain f32 arrays ([`FloatPolicy`], read from the run's checkpoint
//! or the agent's tensors with the time embedding already folded into per-step
//! first-layer biases) and calibration observations. Output: the blob bytes the `runtime`
//! evaluates, and the [`Plan`] (every scale and code) that the per-stage fidelity report
//! replays in float.
//!
//! The scheme:
//! - inputs: symmetric int16, one scale per element (`s_i = headroom · max|x_i| / 32767`),
//!   folded into the first layer's weight columns so that layer sees an input scale of 1;
//! - weights: symmetric per output channel, int8 in [−127, 127], `s_w[c] = max|W[c,:]| / 127`;
//! - bias: int32 at scale `s_in · s_w[c]`;
//! - pre-activations: symmetric int16 per layer, `s_pre = headroom · max|pre| / 32767`
//!   over the calibration data, reached by the fixed-point multiplier `s_in · s_w[c] /
//!   s_pre` (see `runtime::quant`);
//! - the activation function as a 513-entry int16 table over the whole int16
//!   pre-activation range, interpolated by the runtime; its output scale covers the
//!   function over that range (`s_post = max|f| / 32767`), so no output ever saturates;
//! - the output layer is dequantized per channel in f32 (`u = acc · s_in · s_w[c]`);
//! - every row's worst-case accumulator (`Σ|w| · 32767 + |bias|`) is checked against
//!   int32: a layer that could overflow is refused with its name.

use anyhow::{bail, ensure, Context, Result};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use runtime::blob::{self, HiddenLayer, InputStage, Metadata, OutputLayer, PolicyBlob, Provenance};
use runtime::kernels::Weights;
use runtime::quant::{quantize_multiplier, ACTIVATION_MAX, TABLE_ENTRIES};
use sim::float_policy::{DenseF32, FloatPolicy, Probe};

/// `Σ x xᵀ` of one dense layer's inputs over the calibration data (lower triangle,
/// row-major `dim × dim`): what [`round_weights`] needs to know which output errors the
/// data would show.
#[derive(Debug, Clone)]
struct Gram {
    dim: usize,
    sum: Vec<f64>,
}

impl Gram {
    fn new(dim: usize) -> Self {
        Self {
            dim,
            sum: vec![0.0; dim * dim],
        }
    }

    fn add(&mut self, x: &[f64]) {
        for (i, &xi) in x.iter().enumerate().take(self.dim) {
            if xi != 0.0 {
                let row = &mut self.sum[i * self.dim..i * self.dim + i + 1];
                for (s, &xj) in row.iter_mut().zip(x) {
                    *s += xi * xj;
                }
            }
        }
    }

    /// The full symmetric matrix for inputs measured in units of `column_scales` (empty:
    /// unchanged).
    fn scaled(&self, column_scales: &[f64]) -> Vec<f64> {
        let n = self.dim;
        let unit = |i: usize| column_scales.get(i).copied().unwrap_or(1.0);
        let mut full = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let v = self.sum[i * n + j] / (unit(i) * unit(j));
                full[i * n + j] = v;
                full[j * n + i] = v;
            }
        }
        full
    }
}

/// What the calibration data showed: the largest magnitude of each tensor, and each dense
/// layer's input Gram matrix.
#[derive(Debug, Clone)]
struct Ranges {
    /// Per input element (obs_dim + act_dim).
    input: Vec<f64>,
    /// Per hidden layer.
    preact: Vec<f64>,
    /// Per dense layer (the hidden layers, then the output layer), in float units.
    grams: Vec<Gram>,
}

impl Ranges {
    /// Widens the range of the tensor `probe` shows to contain its values, and adds the
    /// inputs of a dense layer to its Gram matrix.
    fn record(&mut self, probe: Probe<'_>) {
        let widen = |m: &mut f64, v: f64| *m = m.max(v.abs());
        match probe {
            Probe::Input(x) => {
                for (m, &v) in self.input.iter_mut().zip(x.iter()) {
                    widen(m, v);
                }
                self.grams[0].add(x);
            }
            Probe::PreActivation { layer, values } => values
                .iter()
                .for_each(|&v| widen(&mut self.preact[layer], v)),
            Probe::PostActivation { layer, values } => self.grams[layer + 1].add(values),
        }
    }
}

/// Calibration inputs: each observation in deterministic mode (z = 0) and with one
/// stochastic base sample, so the ranges cover both runtime modes.
fn calibrate(policy: &FloatPolicy, observations: &[Vec<f32>], seed: u64) -> Ranges {
    let mut grams: Vec<Gram> = policy.hidden.iter().map(|l| Gram::new(l.in_dim)).collect();
    grams.push(Gram::new(policy.output.in_dim));
    let mut ranges = Ranges {
        input: vec![0.0; policy.obs_dim + policy.act_dim],
        preact: vec![0.0; policy.hidden.len()],
        grams,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for obs in observations {
        policy.act_observed(obs, &vec![0.0; policy.act_dim], |p| ranges.record(p));
        let z: Vec<f32> = (0..policy.act_dim)
            .map(|_| policy.meta.noise_std * rng.sample::<f32, _>(StandardNormal))
            .collect();
        policy.act_observed(obs, &z, |p| ranges.record(p));
    }
    ranges
}

/// Input ranges are widened by this factor before quantization: states outside the
/// calibration set (the next episode's fastest joint) would otherwise saturate, and a
/// saturated input was the largest error of the int8 scheme on held-out states. With 15
/// bits of magnitude the headroom costs 2 bits of a resolution that is no longer the
/// limit.
const INPUT_HEADROOM: f64 = 4.0;
/// Pre-activation ranges are widened by this factor: a saturated pre-activation clips the
/// unit's output, while the table's interpolation error grows with the square of the
/// scale (intervals of 128 codes). Measured on the 150k-step FLAME-M HalfCheetah policy
/// (held-out max / mean action error of the runtime): 1.0 → 0.0108 / 0.0010, 1.2 →
/// 0.0115 / 0.0011, 1.5 → 0.0185 / 0.0014, 2.0 → 0.0255 / 0.0020; 1.2 keeps a margin for
/// states past the calibration set at almost no cost.
const PREACT_HEADROOM: f64 = 1.2;

/// Symmetric int16 scale covering `±max_abs` (never 0).
fn int16_scale(max_abs: f64) -> f64 {
    (max_abs / ACTIVATION_MAX as f64).max(1e-12)
}

/// Round to the nearest code, halves away from zero, saturated to ±`limit`.
fn code(x: f64, limit: f64) -> f64 {
    x.round().clamp(-limit, limit)
}

/// How wide a dense layer's weight codes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightWidth {
    /// int8 in [−127, 127], `s_w = max|W[c,:]| / 127`.
    Int8,
    /// int16 in [−32767, 32767], `s_w` the larger of `max|W[c,:]| / 32767` and the
    /// smallest scale at which the row's worst-case accumulator fits int32.
    Int16,
}

impl WeightWidth {
    /// The blob's `weight_bytes`.
    fn bytes(self) -> u8 {
        match self {
            WeightWidth::Int8 => 1,
            WeightWidth::Int16 => 2,
        }
    }

    fn max_code(self) -> f64 {
        match self {
            WeightWidth::Int8 => 127.0,
            WeightWidth::Int16 => 32767.0,
        }
    }
}

/// One dense layer's integer parameters.
#[derive(Debug, Clone)]
struct DensePlan {
    in_dim: usize,
    out_dim: usize,
    width: WeightWidth,
    /// Codes (int8 or int16 values), row-major.
    weights: Vec<i16>,
    /// Per output channel.
    weight_scales: Vec<f64>,
    /// Scale of the layer's int16 input (1 for the first layer, whose input scales are
    /// folded into its weights).
    input_scale: f64,
    /// int32 codes at `input_scale · weight_scales[c]`: one set per flow step for the first
    /// layer, one set otherwise.
    bias_sets: Vec<Vec<i32>>,
}

/// A hidden layer: the dense part, then requantization and the activation table.
#[derive(Debug, Clone)]
struct HiddenPlan {
    dense: DensePlan,
    preact_scale: f64,
    postact_scale: f64,
    /// [`TABLE_ENTRIES`] output codes.
    table: Vec<i16>,
}

/// Every scale and code of a quantized policy: what the blob stores, kept in a form the
/// fidelity report can replay stage by stage.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Per input element: the int16 code of `x` is `round(x / input_scales[i])`.
    input_scales: Vec<f64>,
    hidden: Vec<HiddenPlan>,
    output: DensePlan,
}

/// Lower Cholesky factor of the symmetric positive definite `a` (`n × n`), or `None`
/// where a pivot is not positive.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            let v = a[i * n + j] - dot;
            if i == j {
                if !(v > 0.0 && v.is_finite()) {
                    return None;
                }
                l[i * n + i] = v.sqrt();
            } else {
                l[i * n + j] = v / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// The upper factor `U` of `H⁻¹ = Uᵀ U` for a damped copy of `gram` (`H + λ·I`, λ 1 % of
/// the mean diagonal, raised tenfold until the factorization succeeds), the order in
/// which GPTQ visits the columns (largest diagonal first), all in that order.
fn inverse_factor(gram: &[f64], n: usize) -> Option<(Vec<f64>, Vec<usize>)> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| gram[b * n + b].total_cmp(&gram[a * n + a]));
    let mean_diag = (0..n).map(|i| gram[i * n + i]).sum::<f64>() / n.max(1) as f64;
    let mut damping = 0.01 * mean_diag.max(1e-12);
    for _ in 0..6 {
        let mut h = vec![0.0; n * n];
        for (i, &oi) in order.iter().enumerate() {
            for (j, &oj) in order.iter().enumerate() {
                h[i * n + j] = gram[oi * n + oj];
            }
            // An input that never varies (dead) gets a unit diagonal, as in GPTQ.
            if h[i * n + i] == 0.0 {
                h[i * n + i] = 1.0;
            }
            h[i * n + i] += damping;
        }
        if let Some(l) = cholesky(&h, n) {
            // L⁻¹ by forward substitution, then H⁻¹ = L⁻ᵀ L⁻¹.
            let mut inv = vec![0.0; n * n];
            for c in 0..n {
                for i in c..n {
                    let s: f64 = (c..i).map(|k| l[i * n + k] * inv[k * n + c]).sum();
                    let e = if i == c { 1.0 } else { 0.0 };
                    inv[i * n + c] = (e - s) / l[i * n + i];
                }
            }
            let mut h_inv = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..=i {
                    let v: f64 = (i..n).map(|k| inv[k * n + i] * inv[k * n + j]).sum();
                    h_inv[i * n + j] = v;
                    h_inv[j * n + i] = v;
                }
            }
            if let Some(l2) = cholesky(&h_inv, n) {
                let mut upper = vec![0.0; n * n];
                for i in 0..n {
                    for j in i..n {
                        upper[i * n + j] = l2[j * n + i];
                    }
                }
                return Some((upper, order));
            }
        }
        damping *= 10.0;
    }
    None
}

/// Per-channel symmetric weights of a row-major `out_dim × in_dim` matrix: the codes
/// (within ±`width.max_code()`) and the scales, each row's scale at least
/// `min_scales[c]` (the accumulator bound of int16 codes).
///
/// The codes are chosen by GPTQ (Frantar et al., 2023) where the layer's input Gram
/// matrix `gram` (inputs in the units the weights multiply) is known: column by column,
/// largest input energy first, each weight is rounded and its rounding error is spread
/// over the row's weights not yet rounded, weighted by the inverse Gram matrix, so that
/// the row's output on the calibration inputs moves least. Without it (or where the
/// factorization fails) each weight is rounded to the nearest code.
fn round_weights(
    weight: &[f64],
    in_dim: usize,
    width: WeightWidth,
    min_scales: &[f64],
    gram: Option<&[f64]>,
) -> (Vec<i16>, Vec<f64>) {
    let factor = gram.and_then(|g| inverse_factor(g, in_dim));
    let limit = width.max_code();
    let mut codes = vec![0i16; weight.len()];
    let mut scales = Vec::with_capacity(min_scales.len());
    for ((row, out), &min_scale) in weight
        .chunks_exact(in_dim.max(1))
        .zip(codes.chunks_exact_mut(in_dim.max(1)))
        .zip(min_scales)
    {
        let max_abs = row.iter().fold(0f64, |m, &w| m.max(w.abs()));
        let scale = if max_abs > 0.0 {
            (max_abs / limit).max(min_scale)
        } else {
            1.0
        };
        match &factor {
            Some((upper, order)) => {
                let n = in_dim;
                let mut w: Vec<f64> = order.iter().map(|&i| row[i]).collect();
                for i in 0..n {
                    let q = code(w[i] / scale, limit);
                    out[order[i]] = q as i16;
                    let err = (w[i] - q * scale) / upper[i * n + i];
                    for j in i + 1..n {
                        w[j] -= err * upper[i * n + j];
                    }
                }
            }
            None => {
                for (o, &w) in out.iter_mut().zip(row) {
                    *o = code(w / scale, limit) as i16;
                }
            }
        }
        scales.push(scale);
    }
    (codes, scales)
}

/// The dense layer `layer` quantized, its input columns multiplied by `column_scales`
/// (the first layer's folded input scales; empty for the others), with its int16 input
/// at `input_scale`; `bias_sets` are the float biases to store; `gram` the Gram matrix
/// of its float inputs, if its weights are to be rounded by GPTQ.
fn plan_dense(
    name: &str,
    layer: &DenseF32,
    width: WeightWidth,
    column_scales: &[f64],
    input_scale: f64,
    bias_sets: &[Vec<f32>],
    gram: Option<&Gram>,
) -> Result<DensePlan> {
    let unit = |i: usize| column_scales.get(i).copied().unwrap_or(1.0);
    let folded: Vec<f64> = layer
        .weight
        .iter()
        .enumerate()
        .map(|(k, &w)| w as f64 * unit(k % layer.in_dim))
        .collect();
    let gram = gram.map(|g| g.scaled(column_scales));
    // int16 codes: the smallest scale whose codes keep the worst-case accumulator
    // (Σ|q| · 32767 + |bias code|) within int32, with room for GPTQ's adjustments and
    // rounding; retried coarser if the codes still break it.
    let budget = i32::MAX as f64 - ACTIVATION_MAX as f64 * (layer.in_dim as f64 + 1.0);
    let mut slack = match width {
        WeightWidth::Int8 => 0.0,
        WeightWidth::Int16 => 1.05,
    };
    loop {
        let min_scales: Vec<f64> = (0..layer.out_dim)
            .map(|c| {
                let row = &folded[c * layer.in_dim..(c + 1) * layer.in_dim];
                let weight_sum: f64 = row.iter().map(|w| w.abs()).sum();
                let bias = bias_sets
                    .iter()
                    .map(|b| (b[c] as f64 / input_scale).abs())
                    .fold(0.0, f64::max);
                slack * (weight_sum * ACTIVATION_MAX as f64 + bias) / budget
            })
            .collect();
        let (weights, weight_scales) =
            round_weights(&folded, layer.in_dim, width, &min_scales, gram.as_deref());
        let bias_sets: Vec<Vec<i32>> = bias_sets
            .iter()
            .map(|bias| {
                bias.iter()
                    .zip(&weight_scales)
                    .map(|(&b, &sw)| code(b as f64 / (input_scale * sw), i32::MAX as f64) as i32)
                    .collect()
            })
            .collect();
        // The runtime's accumulator bound, checked by the parser's own function: refuse
        // here, naming the channel, rather than write a blob that the runtime refuses.
        let overflow = blob::accumulator_overflow(
            Weights::of(width.bytes(), &weight_bytes(&weights, width)),
            layer.in_dim,
            &i32_bytes(bias_sets.iter().flatten()),
        );
        match overflow {
            None => {
                return Ok(DensePlan {
                    in_dim: layer.in_dim,
                    out_dim: layer.out_dim,
                    width,
                    weights,
                    weight_scales,
                    input_scale,
                    bias_sets,
                })
            }
            Some(_) if width == WeightWidth::Int16 && slack < 2.0 => slack *= 1.1,
            Some((c, worst)) => bail!(
                "{name} channel {c}: worst-case accumulator {worst} (Σ|w| · 32767 + |bias|) \
                 exceeds int32; the layer cannot be quantized with an int32 accumulator"
            ),
        }
    }
}

/// The activation table: entry k is `f` at the pre-activation code −32768 + 128·k, as a
/// code at `postact_scale`, which covers `|f|` over all 513 knots (so every entry is
/// within ±32767 and the interpolation never saturates).
fn activation_table(policy: &FloatPolicy, preact_scale: f64) -> (Vec<i16>, f64) {
    let values: Vec<f64> = (0..TABLE_ENTRIES)
        .map(|k| {
            policy
                .activation
                .apply(preact_scale * (-32768.0 + 128.0 * k as f64))
        })
        .collect();
    let postact_scale = int16_scale(values.iter().fold(0f64, |m, v| m.max(v.abs())));
    let table = values
        .iter()
        .map(|&v| code(v / postact_scale, ACTIVATION_MAX as f64) as i16)
        .collect();
    (table, postact_scale)
}

/// The int16 input scales. The smallest scale that keeps input `i` unsaturated is
/// `r_i = headroom · max|x_i| / 32767`; folded into the first layer, it makes column `i`'s
/// largest weight `m_i = max_c |W_ci| · r_i`. Per-row int8 weight scales are set by the
/// largest column, so a column with a small `m_i` gets a few codes only, and its weight
/// rounding error (times inputs of up to 32767 / headroom codes) dominates the layer's
/// error while its inputs' own rounding costs almost nothing. Raising its scale to
/// `s_i = r_i · (M / m_i)^α` (`M = max_i m_i`) moves error from the weights to the inputs,
/// as SmoothQuant migrates it; α = [`INPUT_EQUALIZATION`].
fn input_scales(policy: &FloatPolicy, ranges: &Ranges) -> Vec<f64> {
    let first = &policy.hidden[0];
    let minimal: Vec<f64> = ranges
        .input
        .iter()
        .map(|&m| int16_scale(INPUT_HEADROOM * m).max(1e-9))
        .collect();
    let column_max: Vec<f64> = (0..first.in_dim)
        .map(|i| {
            (0..first.out_dim)
                .map(|c| (first.weight[c * first.in_dim + i] as f64).abs())
                .fold(0.0, f64::max)
        })
        .collect();
    let folded: Vec<f64> = minimal
        .iter()
        .zip(&column_max)
        .map(|(r, w)| r * w)
        .collect();
    let largest = folded.iter().copied().fold(0.0, f64::max);
    minimal
        .iter()
        .zip(&folded)
        .map(|(&r, &m)| {
            if m > 0.0 {
                r * (largest / m).powf(INPUT_EQUALIZATION)
            } else {
                r
            }
        })
        .collect()
}

/// The migration strength α of [`input_scales`].
const INPUT_EQUALIZATION: f64 = 0.25;

fn plan(policy: &FloatPolicy, ranges: &Ranges, options: QuantizeOptions) -> Result<Plan> {
    let gram = |l: usize| match options.rounding {
        Rounding::Gptq => Some(&ranges.grams[l]),
        Rounding::Nearest => None,
    };
    let input_scales = input_scales(policy, ranges);
    let mut input_scale = 1.0;
    let mut hidden = Vec::new();
    for (l, layer) in policy.hidden.iter().enumerate() {
        let name = format!("hidden layer {l}");
        let dense = if l == 0 {
            let width = options.edge_weights;
            plan_dense(
                &name,
                layer,
                width,
                &input_scales,
                1.0,
                &policy.step_biases,
                gram(0),
            )?
        } else {
            let bias = std::slice::from_ref(&layer.bias);
            plan_dense(
                &name,
                layer,
                WeightWidth::Int8,
                &[],
                input_scale,
                bias,
                gram(l),
            )?
        };
        let preact_scale = int16_scale(PREACT_HEADROOM * ranges.preact[l]);
        let (table, postact_scale) = activation_table(policy, preact_scale);
        hidden.push(HiddenPlan {
            dense,
            preact_scale,
            postact_scale,
            table,
        });
        input_scale = postact_scale;
    }
    let output = plan_dense(
        "output layer",
        &policy.output,
        options.edge_weights,
        &[],
        input_scale,
        std::slice::from_ref(&policy.output.bias),
        gram(policy.hidden.len()),
    )?;
    Ok(Plan {
        input_scales,
        hidden,
        output,
    })
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn i32_bytes<'a>(values: impl IntoIterator<Item = &'a i32>) -> Vec<u8> {
    values.into_iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A layer's weight codes as the blob stores them: one byte each (int8) or two (int16 LE).
fn weight_bytes(values: &[i16], width: WeightWidth) -> Vec<u8> {
    match width {
        WeightWidth::Int8 => values.iter().map(|&v| v as i8 as u8).collect(),
        WeightWidth::Int16 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Encode the blob that `plan` describes.
fn encode(policy: &FloatPolicy, plan: &Plan) -> Result<Vec<u8>> {
    // Owned storage that the borrowed blob structs point into.
    struct Owned {
        weights: Vec<u8>,
        biases: Vec<u8>,
        multipliers: Vec<u8>,
        shifts: Vec<u8>,
        table: Vec<u8>,
    }
    let mut owned = Vec::new();
    for (l, h) in plan.hidden.iter().enumerate() {
        let d = &h.dense;
        let mut multipliers = Vec::new();
        let mut shifts = Vec::new();
        for (c, &sw) in d.weight_scales.iter().enumerate() {
            let real = d.input_scale * sw / h.preact_scale;
            let (m, shift) = match quantize_multiplier(real) {
                Some(ms) => ms,
                // Too small to represent: the channel's pre-activation is always 0.
                None if real < 1.0 => (0, 0),
                None => {
                    bail!("layer {l} channel {c}: requantization multiplier {real} out of range")
                }
            };
            multipliers.extend_from_slice(&m.to_le_bytes());
            shifts.push(shift as i8 as u8);
        }
        owned.push(Owned {
            weights: weight_bytes(&d.weights, d.width),
            biases: i32_bytes(d.bias_sets.iter().flatten()),
            multipliers,
            shifts,
            table: h.table.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
    }
    let out = &plan.output;
    let out_weights = weight_bytes(&out.weights, out.width);
    let out_biases = i32_bytes(&out.bias_sets[0]);
    let out_scales = f32_bytes(
        out.weight_scales
            .iter()
            .map(|&sw| (out.input_scale * sw) as f32),
    );

    let action_low = f32_bytes(policy.meta.action_low.iter().copied());
    let action_high = f32_bytes(policy.meta.action_high.iter().copied());
    let obs_mean = f32_bytes(policy.meta.obs_mean.iter().copied());
    let obs_inv_std = f32_bytes(policy.meta.obs_std.iter().map(|&s| 1.0 / s));
    let inv_scales = f32_bytes(plan.input_scales.iter().map(|&s| (1.0 / s) as f32));
    let p = &policy.meta.provenance;
    let mut hidden = heapless::Vec::new();
    for (h, o) in plan.hidden.iter().zip(&owned) {
        hidden
            .push(HiddenLayer {
                in_dim: h.dense.in_dim as u16,
                out_dim: h.dense.out_dim as u16,
                weight_bytes: h.dense.width.bytes(),
                weights: &o.weights,
                biases: &o.biases,
                multipliers: &o.multipliers,
                shifts: &o.shifts,
                activation: &o.table,
            })
            .map_err(|_| {
                anyhow::anyhow!(
                    "more hidden layers than the runtime supports ({})",
                    runtime::MAX_HIDDEN_LAYERS
                )
            })?;
    }
    let blob = PolicyBlob {
        meta: Metadata {
            env_id: &policy.meta.env_id,
            algorithm: policy.meta.algorithm,
            obs_dim: policy.obs_dim as u16,
            act_dim: policy.act_dim as u16,
            nfe: policy.nfe() as u16,
            action_low: &action_low,
            action_high: &action_high,
            noise_std: policy.meta.noise_std,
            provenance: Provenance {
                trainer_version: env!("CARGO_PKG_VERSION"),
                git_revision: &p.git_revision,
                env_steps: p.env_steps,
                seed: p.seed,
                float_return: None,
                int8_return: None,
            },
        },
        input: InputStage {
            obs_mean: &obs_mean,
            obs_inv_std: &obs_inv_std,
            obs_clip: policy.meta.obs_clip,
            inv_scales: &inv_scales,
        },
        hidden,
        output: OutputLayer {
            in_dim: out.in_dim as u16,
            out_dim: out.out_dim as u16,
            weight_bytes: out.width.bytes(),
            weights: &out_weights,
            biases: &out_biases,
            scales: &out_scales,
        },
    };
    blob.validate()
        .map_err(|e| anyhow::anyhow!("quantized policy is invalid: {e}"))?;
    blob::encode(&blob).context("encoding the blob")
}

/// A quantized policy: the blob and the plan it encodes.
#[derive(Debug, Clone)]
pub struct Quantized {
    pub bytes: Vec<u8>,
    pub plan: Plan,
}

/// How weights are rounded to their int8 codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Each weight to the nearest code.
    Nearest,
    /// GPTQ on the calibration inputs (the default, see [`round_weights`]).
    Gptq,
}

/// The choices of the scheme that are measured against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantizeOptions {
    pub rounding: Rounding,
    /// Weight codes of the first and the output layer (the hidden layers in between are
    /// int8). int16 by default: the first layer's inputs have very different ranges, so
    /// one int8 scale per row leaves its small columns a few codes, and it was the largest
    /// error term — on the 150k-step FLAME-M HalfCheetah policy (3×256), held-out max /
    /// mean action error 0.0728 / 0.0039 with int8, 0.0185 / 0.0014 with int16 first and
    /// output layers (4 % and 1 % of the MACs; on the Cortex-M4 their int16 passes cost
    /// fewer instructions per MAC than the int8 ones).
    pub edge_weights: WeightWidth,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        Self {
            rounding: Rounding::Gptq,
            edge_weights: WeightWidth::Int16,
        }
    }
}

/// Quantize `policy` with activation ranges calibrated on `calibration_obs` and encode
/// the blob.
pub fn quantize(
    policy: &FloatPolicy,
    calibration_obs: &[Vec<f32>],
    seed: u64,
) -> Result<Quantized> {
    quantize_with(policy, calibration_obs, seed, QuantizeOptions::default())
}

/// [`quantize`] with the scheme's choices made by the caller.
pub fn quantize_with(
    policy: &FloatPolicy,
    calibration_obs: &[Vec<f32>],
    seed: u64,
    options: QuantizeOptions,
) -> Result<Quantized> {
    policy.validate()?;
    ensure!(!calibration_obs.is_empty(), "no calibration observations");
    let ranges = calibrate(policy, calibration_obs, seed);
    let plan = plan(policy, &ranges, options)?;
    let bytes = encode(policy, &plan)?;
    Ok(Quantized { bytes, plan })
}

/// One quantization step of the scheme, replayed alone in float by
/// [`Plan::stage_policy_act`] to measure what it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Observations and flow state rounded to their int16 grids (saturated at ±32767).
    Inputs,
    /// One dense layer's weights at their int8 codes and biases at their int32 codes
    /// (`layer` = the number of hidden layers: the output layer).
    Weights { layer: usize },
    /// Each hidden pre-activation rounded to its int16 grid (saturated).
    PreActivation,
    /// The activation function replaced by the interpolated table, output rounded to its
    /// code.
    ActivationTable,
}

impl Plan {
    /// Every stage of this plan, in the order the data meets them.
    pub fn stages(&self) -> Vec<Stage> {
        let mut stages = vec![Stage::Inputs];
        stages.extend((0..=self.hidden.len()).map(|layer| Stage::Weights { layer }));
        stages.extend([Stage::PreActivation, Stage::ActivationTable]);
        stages
    }

    /// What `stage` is, for the report.
    pub fn stage_name(&self, stage: Stage) -> String {
        match stage {
            Stage::Inputs => "inputs (int16)".into(),
            Stage::Weights { layer } => {
                let (name, width) = match self.hidden.get(layer) {
                    Some(h) => (format!("layer {layer}"), h.dense.width),
                    None => ("output layer".to_string(), self.output.width),
                };
                let bits = 8 * width.bytes();
                format!("{name} weights (int{bits}) + biases (int32)")
            }
            Stage::PreActivation => "pre-activations (int16)".into(),
            Stage::ActivationTable => "activation tables (interpolated int16)".into(),
        }
    }
}

impl Plan {
    /// The float policy with dense layer `layer`'s weights and biases replaced by their
    /// dequantized codes (`layer` = the number of hidden layers: the output layer).
    fn dequantized_weights(&self, policy: &FloatPolicy, layer: usize) -> FloatPolicy {
        let dense = |d: &DensePlan, column_scales: &[f64], bias: &[i32]| -> (Vec<f32>, Vec<f32>) {
            let weight = d
                .weights
                .iter()
                .enumerate()
                .map(|(k, &q)| {
                    let (c, i) = (k / d.in_dim.max(1), k % d.in_dim.max(1));
                    let unfold = column_scales.get(i).copied().unwrap_or(1.0);
                    (q as f64 * d.weight_scales[c] / unfold) as f32
                })
                .collect();
            let bias = bias
                .iter()
                .zip(&d.weight_scales)
                .map(|(&b, &sw)| (b as f64 * d.input_scale * sw) as f32)
                .collect();
            (weight, bias)
        };
        let mut q = policy.clone();
        if layer == 0 {
            let first = &self.hidden[0].dense;
            q.hidden[0].weight = dense(first, &self.input_scales, &first.bias_sets[0]).0;
            q.step_biases = first
                .bias_sets
                .iter()
                .map(|set| dense(first, &self.input_scales, set).1)
                .collect();
        } else if let Some(h) = self.hidden.get(layer) {
            (q.hidden[layer].weight, q.hidden[layer].bias) =
                dense(&h.dense, &[], &h.dense.bias_sets[0]);
        } else {
            (q.output.weight, q.output.bias) = dense(&self.output, &[], &self.output.bias_sets[0]);
        }
        q
    }

    /// The float policy's deterministic action (z = 0) for `obs` with only `stage`
    /// quantized.
    pub fn stage_policy_act(&self, policy: &FloatPolicy, stage: Stage, obs: &[f32]) -> Vec<f32> {
        let zero = vec![0f32; policy.act_dim];
        let grid = |values: &mut [f64], scale: f64, limit: f64| {
            for v in values.iter_mut() {
                *v = code(*v / scale, limit) * scale;
            }
        };
        match stage {
            Stage::Weights { layer } => self.dequantized_weights(policy, layer).act(obs, &zero),
            Stage::Inputs => policy.act_observed(obs, &zero, |probe| {
                if let Probe::Input(x) = probe {
                    for (v, &s) in x.iter_mut().zip(&self.input_scales) {
                        *v = code(*v / s, ACTIVATION_MAX as f64) * s;
                    }
                }
            }),
            Stage::PreActivation => policy.act_observed(obs, &zero, |probe| {
                if let Probe::PreActivation { layer, values } = probe {
                    grid(values, self.hidden[layer].preact_scale, 32767.0);
                }
            }),
            Stage::ActivationTable => {
                let mut pre = Vec::new();
                policy.act_observed(obs, &zero, |probe| match probe {
                    Probe::PreActivation { values, .. } => pre = values.to_vec(),
                    Probe::PostActivation { layer, values } => {
                        let h = &self.hidden[layer];
                        for (v, &p) in values.iter_mut().zip(&pre) {
                            *v = h.interpolate(p / h.preact_scale) * h.postact_scale;
                        }
                    }
                    Probe::Input(_) => {}
                })
            }
        }
    }
}

impl HiddenPlan {
    /// The table at a real-valued pre-activation code (saturated to the int16 range),
    /// linearly interpolated and rounded to an output code: the table's own error,
    /// without the pre-activation's rounding.
    fn interpolate(&self, code_real: f64) -> f64 {
        let u = (code_real.clamp(-32768.0, 32767.0) + 32768.0) / 128.0;
        let k = (u.floor() as usize).min(TABLE_ENTRIES - 2);
        let f = u - k as f64;
        let (a, b) = (self.table[k] as f64, self.table[k + 1] as f64);
        code(a + (b - a) * f, ACTIVATION_MAX as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::{init, InitOptions};
    use runtime::{BlobError, NoiseMode, Policy, Scratch};
    use sim::run_dir::{Algo, RunDir};

    /// An untrained FLAME-M HalfCheetah policy (hidden 2×64) and its recorded states.
    fn untrained(name: &str) -> (FloatPolicy, Vec<Vec<f32>>) {
        let dir =
            std::env::temp_dir().join(format!("flame-quantize-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        init(
            &dir,
            &InitOptions {
                algo: Algo::FlameM,
                env_id: "HalfCheetah-v5".into(),
                seed: 3,
                hidden: vec![64, 64],
                time_dim: 16,
                nfe: 1,
                states: 600,
            },
        )
        .unwrap();
        let policy = FloatPolicy::load(&dir).unwrap();
        let states = RunDir::new(&dir).read_states(policy.obs_dim).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (policy, states)
    }

    /// Mean squared action error (half-range units) of `bytes` against the float policy.
    fn mean_squared_error(policy: &FloatPolicy, bytes: &[u8], states: &[Vec<f32>]) -> f64 {
        let quantized = Policy::from_bytes(bytes).unwrap();
        let (mut scratch, zero) = (Scratch::new(), vec![0f32; policy.act_dim]);
        let mut action = vec![0f32; policy.act_dim];
        let mut sum = 0.0;
        for obs in states {
            quantized
                .act(obs, NoiseMode::Deterministic, &mut scratch, &mut action)
                .unwrap();
            for (c, (&q, f)) in action.iter().zip(policy.act(obs, &zero)).enumerate() {
                let half = 0.5 * (policy.meta.action_high[c] - policy.meta.action_low[c]) as f64;
                sum += ((q - f) as f64 / half).powi(2);
            }
        }
        sum / (states.len() * policy.act_dim) as f64
    }

    /// GPTQ's error feedback lowers the quantized policy's action error on held-out
    /// states against rounding each weight to the nearest code, and int16 first and
    /// output layers lower it further.
    #[test]
    fn gptq_rounding_beats_nearest_rounding() {
        let (policy, states) = untrained("gptq");
        let (held_out, calibration): (Vec<_>, Vec<_>) = states
            .iter()
            .cloned()
            .enumerate()
            .partition(|(i, _)| i % 5 == 0);
        let held_out: Vec<Vec<f32>> = held_out.into_iter().map(|(_, s)| s).collect();
        let calibration: Vec<Vec<f32>> = calibration.into_iter().map(|(_, s)| s).collect();
        let error = |rounding, edge_weights| {
            let options = QuantizeOptions {
                rounding,
                edge_weights,
            };
            let q = quantize_with(&policy, &calibration, 0, options).unwrap();
            mean_squared_error(&policy, &q.bytes, &held_out)
        };
        let (nearest, gptq) = (
            error(Rounding::Nearest, WeightWidth::Int8),
            error(Rounding::Gptq, WeightWidth::Int8),
        );
        assert!(gptq < 0.8 * nearest, "GPTQ {gptq:e} vs nearest {nearest:e}");
        let wide = error(Rounding::Gptq, WeightWidth::Int16);
        assert!(wide < gptq, "int16 edge layers {wide:e} vs int8 {gptq:e}");
    }

    /// Each stage replayed alone costs less than the whole runtime's worst error plus a
    /// margin, and the sum of the stages' mean errors is of the order of the runtime's:
    /// the report decomposes the real error rather than inventing one.
    #[test]
    fn stage_replays_bound_the_runtime_error() {
        let (policy, states) = untrained("stages");
        let q = quantize(&policy, &states, 0).unwrap();
        let runtime_mse = mean_squared_error(&policy, &q.bytes, &states);
        let zero = vec![0f32; policy.act_dim];
        let mut stage_mse_sum = 0.0;
        for stage in q.plan.stages() {
            let mut sum = 0.0;
            for obs in &states {
                let f = policy.act(obs, &zero);
                let s = q.plan.stage_policy_act(&policy, stage, obs);
                for c in 0..policy.act_dim {
                    let half =
                        0.5 * (policy.meta.action_high[c] - policy.meta.action_low[c]) as f64;
                    sum += ((s[c] - f[c]) as f64 / half).powi(2);
                }
            }
            let mse = sum / (states.len() * policy.act_dim) as f64;
            assert!(
                mse > 0.0,
                "{}: a quantized stage changes the actions",
                q.plan.stage_name(stage)
            );
            stage_mse_sum += mse;
        }
        assert!(
            (0.3..3.0).contains(&(runtime_mse / stage_mse_sum)),
            "runtime {runtime_mse:e} vs stages {stage_mse_sum:e}"
        );
    }

    /// A layer whose worst-case sum overflows int32 is refused at export with its name,
    /// and the same bias written into a blob is refused by the parser.
    #[test]
    fn a_layer_that_could_overflow_is_refused() {
        let (mut policy, states) = untrained("overflow");
        policy.hidden[1].bias[5] = 1e6;
        let err = quantize(&policy, &states, 0).unwrap_err().to_string();
        assert!(err.contains("hidden layer 1 channel 5"), "{err}");

        let (policy, states) = untrained("overflow-blob");
        let bytes = quantize(&policy, &states, 0).unwrap().bytes;
        let parsed = runtime::PolicyBlob::parse(&bytes).unwrap();
        let mut biases = parsed.hidden[1].biases.to_vec();
        biases[20..24].copy_from_slice(&i32::MAX.to_le_bytes());
        let mut blob = parsed.clone();
        blob.hidden[1].biases = &biases;
        let bad = runtime::blob::encode(&blob).unwrap();
        assert_eq!(
            runtime::PolicyBlob::parse(&bad).unwrap_err(),
            BlobError::AccumulatorRange
        );
    }
}
