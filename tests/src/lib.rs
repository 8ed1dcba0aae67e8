//! Shared fixtures for the cross-crate tests in `tests/tests/`.
//!
//! [`fixture_blob`] writes a random but valid policy blob, so the runtime, the firmware and
//! the host tools can be tested end to end before (and independently of) a trained model.
//! It is deterministic: the same [`FixtureSpec`] gives the same bytes, which lets the
//! firmware's unit tests commit one as an asset (`firmware/control/tests/data/`).

use runtime::blob::{
    encode, Algorithm, HiddenLayer, InputStage, Metadata, OutputLayer, PolicyBlob, Provenance,
};
use runtime::noise::SplitMix64;
use runtime::quant::quantize_multiplier;

/// Shape and seed of a fixture policy.
#[derive(Debug, Clone, PartialEq)]
pub struct FixtureSpec {
    pub obs_dim: usize,
    pub act_dim: usize,
    /// Widths of the hidden layers.
    pub hidden: Vec<usize>,
    /// Flow steps per action (1 = FLAME-M, more = FLAME-R).
    pub nfe: usize,
    pub seed: u64,
}

impl FixtureSpec {
    /// HalfCheetah-sized (obs 17, act 6), hidden 2×64, one step: cheap, for most tests.
    pub fn small() -> Self {
        Self {
            obs_dim: 17,
            act_dim: 6,
            hidden: vec![64, 64],
            nfe: 1,
            seed: 17,
        }
    }

    /// The paper-sized MLP (hidden 3×256) with a few flow steps: the large-blob case.
    pub fn large() -> Self {
        Self {
            obs_dim: 17,
            act_dim: 6,
            hidden: vec![256, 256, 256],
            nfe: 3,
            seed: 256,
        }
    }

    /// The blob committed as `firmware/control/tests/data/fixture-17x6.blob` for the
    /// firmware's host unit tests: small (hidden 2×32) but with two flow steps.
    pub fn firmware_unit_test() -> Self {
        Self {
            obs_dim: 17,
            act_dim: 6,
            hidden: vec![32, 32],
            nfe: 2,
            seed: 2024,
        }
    }
}

/// Path of the committed firmware unit-test blob, relative to the repository root.
pub const FIRMWARE_FIXTURE_ASSET: &str = "firmware/control/tests/data/fixture-17x6.blob";

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Uniform in [0, 1) from 53 random bits.
fn uniform(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn i32_bytes(values: impl IntoIterator<Item = i32>) -> Vec<u8> {
    values.into_iter().flat_map(i32::to_le_bytes).collect()
}

/// Round half away from zero and saturate to the symmetric int16 activation range.
fn code(x: f64) -> [u8; 2] {
    (x.round().clamp(-32767.0, 32767.0) as i16).to_le_bytes()
}

/// Scales that keep the fixture's signals in a realistic range: pre-activations use most
/// of the int16 range without saturating everywhere, so actions vary with the observation.
const PREACT_SCALE: f64 = 4.0 / 32768.0; // pre-activation codes cover [−4, 4)
const PREACT_STD_CODES: f64 = 10_000.0;
const INPUT_CLIP: f32 = 5.0;

/// Owned arrays of one hidden layer (the blob borrows them).
struct Hidden {
    in_dim: usize,
    out_dim: usize,
    weights: Vec<u8>,
    biases: Vec<u8>,
    multipliers: Vec<u8>,
    shifts: Vec<u8>,
    activation: Vec<u8>,
}

/// Random int8 weights in [−127, 127] (−128 is not a valid symmetric weight).
fn weights(rng: &mut SplitMix64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| ((rng.next_u64() % 255) as i32 - 127) as i8 as u8)
        .collect()
}

/// The activation table (513 int16 entries at the pre-activation codes −32768 + 128·k):
/// tanh for even layers (output ±1 over ±32767), SiLU for odd ones (output range
/// [−0.28, 4.2] on a symmetric scale, so the codes are lopsided).
fn activation_table(index: usize) -> Vec<u8> {
    let pre = |k: usize| (-32768.0 + 128.0 * k as f64) * PREACT_SCALE;
    let entries = runtime::quant::TABLE_ENTRIES;
    if index.is_multiple_of(2) {
        (0..entries)
            .flat_map(|k| code(pre(k).tanh() * 32767.0))
            .collect()
    } else {
        let silu = |x: f64| x / (1.0 + (-x).exp());
        let scale = 4.2 / 32767.0;
        (0..entries)
            .flat_map(|k| code(silu(pre(k)) / scale))
            .collect()
    }
}

/// A random, valid policy blob with the given shape. Weights are uniform int8, biases and
/// requantization multipliers are chosen so that each layer's pre-activations spread over
/// the int16 range, and the output velocity is O(1): the policy behaves like a trained
/// one numerically (saturation, rounding ties, clamping all occur) without being trained.
pub fn fixture_blob(spec: &FixtureSpec) -> Vec<u8> {
    assert!(!spec.hidden.is_empty() && spec.nfe >= 1);
    let mut rng = SplitMix64::new(spec.seed);
    let (obs, act) = (spec.obs_dim, spec.act_dim);

    let action_low = f32_bytes((0..act).map(|_| -(0.4 + 0.6 * uniform(&mut rng)) as f32));
    let action_high = f32_bytes((0..act).map(|_| (0.4 + 0.6 * uniform(&mut rng)) as f32));
    let obs_mean = f32_bytes((0..obs).map(|_| rng.next_gaussian() * 0.5));
    // Observation spreads from 0.1 to 10: inv_std from 10 to 0.1.
    let obs_inv_std = f32_bytes((0..obs).map(|_| 10f64.powf(1.0 - 2.0 * uniform(&mut rng)) as f32));
    // Per-element input scales, as the exporter's per-dimension calibration gives: each
    // normalized observation uses most of the int16 range over [−clip, clip] (some dims
    // narrower, so the clip saturates them), and the flow state z (|z| ≤ 6·σ_z) gets its
    // own scale.
    let obs_scales: Vec<f32> = (0..obs)
        .map(|_| (32767.0 / (INPUT_CLIP as f64 * (0.3 + 0.7 * uniform(&mut rng)))) as f32)
        .collect();
    let z_scales: Vec<f32> = (0..act)
        .map(|_| (32767.0 / (3.0 + 2.0 * uniform(&mut rng))) as f32)
        .collect();
    let inv_scales = f32_bytes(obs_scales.into_iter().chain(z_scales));

    // Typical |x| of a layer's input codes, for choosing multipliers.
    let mut input_std_codes = 6_000.0;
    let w_std = 127.0 / 3f64.sqrt();
    let mut hidden = Vec::new();
    let mut width = obs + act;
    for (index, &out_dim) in spec.hidden.iter().enumerate() {
        let acc_std = (width as f64).sqrt() * w_std * input_std_codes;
        let bias_sets = if index == 0 { spec.nfe } else { 1 };
        let biases = i32_bytes(
            (0..out_dim * bias_sets).map(|_| (rng.next_gaussian() as f64 * 0.5 * acc_std) as i32),
        );
        let mut multipliers = Vec::new();
        let mut shifts = Vec::new();
        for _ in 0..out_dim {
            let real = PREACT_STD_CODES / acc_std * (0.7 + 0.6 * uniform(&mut rng));
            let (m, s) = quantize_multiplier(real).expect("fixture multiplier in range");
            multipliers.extend_from_slice(&m.to_le_bytes());
            shifts.push(s as i8 as u8);
        }
        hidden.push(Hidden {
            in_dim: width,
            out_dim,
            weights: weights(&mut rng, width * out_dim),
            biases,
            multipliers,
            shifts,
            activation: activation_table(index),
        });
        input_std_codes = 15_000.0;
        width = out_dim;
    }
    let out_weights = weights(&mut rng, width * act);
    let out_acc_std = (width as f64).sqrt() * w_std * input_std_codes;
    let out_biases =
        i32_bytes((0..act).map(|_| (rng.next_gaussian() as f64 * 0.3 * out_acc_std) as i32));
    let out_scales =
        f32_bytes((0..act).map(|_| ((0.3 + 0.4 * uniform(&mut rng)) / out_acc_std) as f32));

    let blob = PolicyBlob {
        meta: Metadata {
            env_id: "Fixture-v0",
            algorithm: if spec.nfe == 1 {
                Algorithm::FlameM
            } else {
                Algorithm::FlameR
            },
            obs_dim: obs as u16,
            act_dim: act as u16,
            nfe: spec.nfe as u16,
            action_low: &action_low,
            action_high: &action_high,
            noise_std: 1.0,
            provenance: Provenance {
                trainer_version: "fixture",
                git_revision: "none",
                env_steps: 0,
                seed: spec.seed,
                float_return: None,
                int8_return: None,
            },
        },
        input: InputStage {
            obs_mean: &obs_mean,
            obs_inv_std: &obs_inv_std,
            obs_clip: INPUT_CLIP,
            inv_scales: &inv_scales,
        },
        hidden: hidden
            .iter()
            .map(|h| HiddenLayer {
                in_dim: h.in_dim as u16,
                out_dim: h.out_dim as u16,
                weight_bytes: 1,
                weights: &h.weights,
                biases: &h.biases,
                multipliers: &h.multipliers,
                shifts: &h.shifts,
                activation: &h.activation,
            })
            .collect::<heapless::Vec<_, { runtime::MAX_HIDDEN_LAYERS }>>(),
        output: OutputLayer {
            in_dim: width as u16,
            out_dim: act as u16,
            weight_bytes: 1,
            weights: &out_weights,
            biases: &out_biases,
            scales: &out_scales,
        },
    };
    encode(&blob).expect("fixture blob encodes")
}

/// Copy of `blob` with every input scale multiplied by `gain`, so that many observation
/// and flow-state codes saturate at ±32767 and the first layer's sums reach the int16
/// extremes the accumulator bound allows for.
pub fn with_input_gain(blob: &[u8], gain: f32) -> Vec<u8> {
    let base = runtime::PolicyBlob::parse(blob).unwrap();
    let scales: Vec<u8> = base
        .input
        .inv_scales
        .chunks_exact(4)
        .flat_map(|b| (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * gain).to_le_bytes())
        .collect();
    let mut parsed = base.clone();
    parsed.input.inv_scales = &scales;
    runtime::blob::encode(&parsed).unwrap()
}

/// Copy of `blob` whose hidden layers' output stages hit the edges of what the parser
/// accepts, on about half of the channels: shifts anywhere in −31..=30 (left shifts and 0
/// included), multipliers 0, 1, `i32::MAX` or small enough that left shifts do not always
/// saturate, biases up to the i32 extremes (wrapping sums, saturating left shifts); plus a
/// random activation table and pre-activation zero point per layer, so that a wrong code
/// anywhere changes the next layer's input.
pub fn with_edge_output_stages(blob: &[u8], seed: u64) -> Vec<u8> {
    let base = runtime::PolicyBlob::parse(blob).unwrap();
    let mut rng = SplitMix64::new(seed);
    let mut stages = Vec::new();
    for layer in base.hidden.iter() {
        let (mut biases, mut multipliers, mut shifts) = (
            layer.biases.to_vec(),
            layer.multipliers.to_vec(),
            layer.shifts.to_vec(),
        );
        let (in_dim, out_dim) = (layer.in_dim as usize, layer.out_dim as usize);
        for c in 0..out_dim {
            let weights = layer.weight_matrix();
            let weight_sum: i64 = (c * in_dim..(c + 1) * in_dim)
                .map(|k| (weights.get(k) as i64).abs())
                .sum();
            let limit = (i32::MAX as i64 - weight_sum * 32767) as i32;
            let r = rng.next_u64();
            if r & 1 == 0 {
                continue;
            }
            let shift = match (r >> 1) % 4 {
                0 => ((r >> 8) % 62) as i32 - 31,
                1 => -(((r >> 8) % 3) as i32) - 29,
                _ => shifts[c] as i8 as i32 + ((r >> 8) % 5) as i32 - 2,
            }
            .clamp(-31, 30);
            let m: i32 = match (r >> 16) % 8 {
                0 => [0, 1, 2, i32::MAX, 1 << 30, (1 << 30) - 1][(r >> 24) as usize % 6],
                1 | 2 => (r >> 33) as i32 & 0xFFFF,
                _ => (1 << 30) | (r >> 34) as i32,
            };
            shifts[c] = shift as i8 as u8;
            multipliers[4 * c..4 * c + 4].copy_from_slice(&m.to_le_bytes());
            for set in 0..biases.len() / (4 * out_dim) {
                let at = 4 * (set * out_dim + c);
                let bias: i32 = match (rng.next_u64() >> 40) % 8 {
                    0 => [-limit, limit, 1 - limit, -1, 0, limit / 2][(r >> 48) as usize % 6],
                    1 => {
                        (rng.next_u64() % (limit as u64 + 1)) as i32
                            * if r >> 63 == 0 { 1 } else { -1 }
                    }
                    _ => continue,
                };
                biases[at..at + 4].copy_from_slice(&bias.to_le_bytes());
            }
        }
        let table: Vec<u8> = (0..runtime::quant::TABLE_ENTRIES)
            .flat_map(|_| (rng.next_u64() as i16).max(-32767).to_le_bytes())
            .collect();
        stages.push((biases, multipliers, shifts, table));
    }
    let mut parsed = base.clone();
    for (layer, (biases, multipliers, shifts, table)) in parsed.hidden.iter_mut().zip(&stages) {
        layer.biases = biases;
        layer.multipliers = multipliers;
        layer.shifts = shifts;
        layer.activation = table;
    }
    let out = runtime::blob::encode(&parsed).unwrap();
    runtime::Policy::from_bytes(&out).expect("edge output stages are valid");
    out
}

/// Golden vectors for `blob` as the exporter writes them: `n` random observations in
/// alternating modes with the host runtime's actions.
pub fn golden_vectors(blob: &[u8], n: usize, seed: u64) -> Vec<u8> {
    let policy = runtime::Policy::from_bytes(blob).unwrap();
    let mut rng = SplitMix64::new(seed);
    let mut records = Vec::new();
    for i in 0..n {
        let obs = random_observation(&mut rng, policy.obs_dim());
        let mode = if i % 2 == 0 {
            runtime::NoiseMode::Deterministic
        } else {
            runtime::NoiseMode::Stochastic {
                seed: rng.next_u64(),
            }
        };
        let mut action = vec![0.0; policy.act_dim()];
        policy
            .act(&obs, mode, &mut runtime::Scratch::new(), &mut action)
            .unwrap();
        runtime::golden::push_record(&mut records, mode, &obs, &action);
    }
    let set = runtime::golden::GoldenSet {
        blob_hash: runtime::blob::blob_hash(blob),
        obs_dim: policy.obs_dim() as u16,
        act_dim: policy.act_dim() as u16,
        records: &records,
    };
    postcard::to_stdvec(&set).unwrap()
}

/// Copy of `blob` whose first hidden layer and output layer have int16 weights, as the
/// exporter writes them: each int8 code `w` becomes `w·f + d` with a random `d` in
/// `0..f` (so the low bits are used), `f` the largest power of two up to 256 that keeps
/// the layer within the accumulator bound; the layer's multipliers (shift − log2 f), or
/// output scales (÷ f), and biases (× f) follow, so the signals keep their ranges.
pub fn with_int16_edge_layers(blob: &[u8], seed: u64) -> Vec<u8> {
    let base = runtime::PolicyBlob::parse(blob).unwrap();
    assert!(base.hidden[0].weight_bytes == 1 && base.output.weight_bytes == 1);
    let mut rng = SplitMix64::new(seed);
    // (int16 weight bytes, scaled biases, factor f) of one int8 layer.
    let mut widen = |weights: &[u8], in_dim: usize, biases: &[u8]| {
        let rows = weights.len() / in_dim.max(1);
        let largest_row: i64 = weights
            .chunks_exact(in_dim.max(1))
            .map(|r| r.iter().map(|&w| (w as i8 as i64).abs() + 1).sum::<i64>())
            .max()
            .unwrap_or(1);
        let largest_bias = biases
            .chunks_exact(4)
            .map(|b| (i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).abs())
            .max()
            .unwrap_or(0);
        let mut f = 256i64;
        while f > 1 && f * (largest_row * 32767 + largest_bias) > i32::MAX as i64 {
            f /= 2;
        }
        let wide: Vec<u8> = weights
            .iter()
            .flat_map(|&w| {
                let d = (rng.next_u64() % f as u64) as i64;
                let v = (w as i8 as i64 * f + d).clamp(-32767, 32767) as i16;
                v.to_le_bytes()
            })
            .collect();
        let scaled: Vec<u8> = biases
            .chunks_exact(4)
            .flat_map(|b| {
                let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64 * f;
                (v as i32).to_le_bytes()
            })
            .collect();
        assert!(rows > 0);
        (wide, scaled, f)
    };
    let first = &base.hidden[0];
    let (w0, b0, f0) = widen(first.weights, first.in_dim as usize, first.biases);
    let shifts0: Vec<u8> = first
        .shifts
        .iter()
        .map(|&s| ((s as i8 as i32 - f0.trailing_zeros() as i32).max(-31)) as i8 as u8)
        .collect();
    let out = &base.output;
    let (w1, b1, f1) = widen(out.weights, out.in_dim as usize, out.biases);
    let scales1: Vec<u8> = out
        .scales
        .chunks_exact(4)
        .flat_map(|b| (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) / f1 as f32).to_le_bytes())
        .collect();
    let mut parsed = base.clone();
    parsed.hidden[0].weight_bytes = 2;
    parsed.hidden[0].weights = &w0;
    parsed.hidden[0].biases = &b0;
    parsed.hidden[0].shifts = &shifts0;
    parsed.output.weight_bytes = 2;
    parsed.output.weights = &w1;
    parsed.output.biases = &b1;
    parsed.output.scales = &scales1;
    let out = runtime::blob::encode(&parsed).unwrap();
    runtime::Policy::from_bytes(&out).expect("int16 edge layers are valid");
    out
}

/// Random observations with realistic magnitudes: per-dimension spreads from 0.1 to 10
/// (joint angles to velocities), plus an occasional outlier beyond the normalizer's clip.
pub fn random_observation(rng: &mut SplitMix64, obs_dim: usize) -> Vec<f32> {
    (0..obs_dim)
        .map(|i| {
            let spread = [0.1f32, 0.5, 1.0, 3.0, 10.0][i % 5];
            let x = rng.next_gaussian() * spread;
            if rng.next_u64().is_multiple_of(50) {
                x * 20.0
            } else {
                x
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::{NoiseMode, Policy, Scratch};

    #[test]
    fn fixtures_are_valid_deterministic_and_responsive() {
        for spec in [
            FixtureSpec::small(),
            FixtureSpec::large(),
            FixtureSpec::firmware_unit_test(),
        ] {
            let blob = fixture_blob(&spec);
            assert_eq!(blob, fixture_blob(&spec), "deterministic");
            let policy = Policy::from_bytes(&blob).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
            assert_eq!(policy.blob().meta.nfe as usize, spec.nfe);
            let mut rng = SplitMix64::new(1);
            let mut scratch = Scratch::new();
            let mut actions = std::collections::HashSet::new();
            let mut saturated = 0;
            for i in 0..200 {
                let obs = random_observation(&mut rng, spec.obs_dim);
                let mode = if i % 2 == 0 {
                    NoiseMode::Deterministic
                } else {
                    NoiseMode::Stochastic { seed: i }
                };
                let mut a = vec![0.0; spec.act_dim];
                policy.act(&obs, mode, &mut scratch, &mut a).unwrap();
                let meta = &policy.blob().meta;
                for (c, &x) in a.iter().enumerate() {
                    let (lo, hi) = (
                        runtime::blob::f32_at(meta.action_low, c),
                        runtime::blob::f32_at(meta.action_high, c),
                    );
                    // The runtime clamps after scaling: never outside the bounds.
                    assert!(x >= lo && x <= hi, "{x:e} not in [{lo:e}, {hi:e}]");
                    if x == lo || x == hi {
                        saturated += 1;
                    }
                }
                actions.insert(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            }
            // A useful fixture's actions depend on the input and are not all clamped.
            assert!(
                actions.len() > 190,
                "{spec:?}: only {} distinct actions",
                actions.len()
            );
            assert!(
                saturated < 200 * spec.act_dim / 2,
                "{spec:?}: {saturated} clamped elements"
            );
        }
    }
}
