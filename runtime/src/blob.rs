//! The policy blob: a fixed 16-byte header followed by a postcard payload.
//!
//! ```text
//! offset  size  field
//!      0     4  magic  b"FLMB"
//!      4     2  format version, u16 LE (this crate reads FORMAT_VERSION only)
//!      6     2  reserved, must be 0
//!      8     4  payload length in bytes, u32 LE
//!     12     4  CRC-32 (ISO-HDLC, as zlib) of the payload, u32 LE
//!     16     …  payload: postcard encoding of [`PolicyBlob`]
//! ```
//!
//! Every array in the payload is a postcard byte string borrowed from the blob (zero
//! copy: on the MCU the weights stay in flash). Multi-byte numbers inside those arrays are
//! little-endian; int8 values are stored as their two's-complement bytes. `docs/blob.md`
//! in the repository describes every field.

use serde::{Deserialize, Serialize};

use crate::kernels::Weights;
use crate::{quant, MAX_ACT, MAX_HIDDEN_LAYERS, MAX_NFE, MAX_OBS, MAX_WIDTH};

pub const MAGIC: [u8; 4] = *b"FLMB";
/// Version 2: int16 activations, int8 (or int16) per-channel weights, interpolated int16
/// activation tables. Version 1 (int8 activations with zero points) is refused with
/// [`BlobError::UnsupportedVersion`]; its runs re-export with `trainer export`.
pub const FORMAT_VERSION: u16 = 2;
pub const HEADER_LEN: usize = 16;

/// Largest output dequantization scale a blob may store. With |acc| ≤ 2^31 the velocity
/// stays below 2^31 · 1e28 ≈ 2.1e37, so the flow state z never overflows to ±Inf (and an
/// Inf − Inf never makes a NaN action) over any number of steps; real scales are ~1e-4.
pub const MAX_OUTPUT_SCALE: f32 = 1e28;
/// Largest σ_z: |z₀| ≤ 6·σ_z = 6e37 keeps z finite together with [`MAX_OUTPUT_SCALE`].
pub const MAX_NOISE_STD: f32 = 1e37;

/// CRC-32/ISO-HDLC, the zlib/PNG/Ethernet polynomial.
pub const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Which agent produced the policy; decides nothing at run time beyond `nfe`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MeanFlow, one network evaluation per action.
    FlameM,
    /// Rectified flow, `nfe` Euler steps per action.
    FlameR,
}

/// Where the policy came from.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Provenance<'a> {
    pub trainer_version: &'a str,
    pub git_revision: &'a str,
    pub env_steps: u64,
    pub seed: u64,
    /// Mean evaluation return of the float policy at export, if it was evaluated.
    pub float_return: Option<f32>,
    /// Mean return of this int8 policy (host runtime) at export, if it was evaluated.
    pub int8_return: Option<f32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Metadata<'a> {
    /// Gymnasium id, e.g. `HalfCheetah-v5`.
    pub env_id: &'a str,
    pub algorithm: Algorithm,
    pub obs_dim: u16,
    pub act_dim: u16,
    /// Flow steps per action (network evaluations): 1 for FLAME-M.
    pub nfe: u16,
    /// Env action bounds, f32 LE × act_dim each.
    pub action_low: &'a [u8],
    pub action_high: &'a [u8],
    /// Std of the base noise z in stochastic mode (σ_z).
    pub noise_std: f32,
    #[serde(borrow)]
    pub provenance: Provenance<'a>,
}

/// Observation normalization and input quantization:
/// `n_i = clamp((obs_i − mean_i) · inv_std_i, −clip, clip)`,
/// `q_i = clamp(round(n_i · inv_scale_i), −32767, 32767)`, and for the flow state
/// `q_{obs+j} = clamp(round(z_j · inv_scale_{obs+j}), −32767, 32767)` (int16, symmetric).
/// Each input element has its own scale (the exporter folds it into the first layer's
/// weight columns), so every observation dimension uses the full int16 range.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InputStage<'a> {
    /// f32 LE × obs_dim.
    pub obs_mean: &'a [u8],
    /// f32 LE × obs_dim.
    pub obs_inv_std: &'a [u8],
    pub obs_clip: f32,
    /// f32 LE × (obs_dim + act_dim): 1 / (scale of each input element).
    pub inv_scales: &'a [u8],
}

/// A hidden layer: int8 (or int16) weights × int16 inputs, requantized per channel to an
/// int16 pre-activation code, then the activation as an interpolated int16 table from the
/// pre-activation code to the output code (see [`quant::interpolate`]).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HiddenLayer<'a> {
    pub in_dim: u16,
    pub out_dim: u16,
    /// Bytes per weight: 1 (int8) or 2 (int16 LE).
    pub weight_bytes: u8,
    /// out_dim × in_dim weights, row-major (one row per output channel).
    pub weights: &'a [u8],
    /// int32 LE × out_dim (scale s_in·s_w). The first layer stores nfe sets, one per flow
    /// step, with that step's time embedding folded in.
    pub biases: &'a [u8],
    /// int32 LE × out_dim, see [`crate::quant`].
    pub multipliers: &'a [u8],
    /// int8 × out_dim, in [`quant::SHIFT_RANGE`].
    pub shifts: &'a [u8],
    /// [`quant::TABLE_ENTRIES`] int16 LE, each within ±[`quant::ACTIVATION_MAX`]: entry k
    /// is the output code at the pre-activation code −32768 + 128·k.
    pub activation: &'a [u8],
}

/// The output layer: int8 (or int16) weights × int16 inputs, then dequantized per channel
/// in f32 to the mean velocity u.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct OutputLayer<'a> {
    pub in_dim: u16,
    pub out_dim: u16,
    /// Bytes per weight: 1 (int8) or 2 (int16 LE).
    pub weight_bytes: u8,
    /// out_dim × in_dim weights, row-major.
    pub weights: &'a [u8],
    /// int32 LE × out_dim.
    pub biases: &'a [u8],
    /// f32 LE × out_dim: s_in · s_w per channel.
    pub scales: &'a [u8],
}

impl<'a> HiddenLayer<'a> {
    /// The weight matrix (the blob was validated: `weight_bytes` is 1 or 2).
    pub fn weight_matrix(&self) -> Weights<'a> {
        Weights::of(self.weight_bytes, self.weights)
    }
}

impl<'a> OutputLayer<'a> {
    /// The weight matrix (the blob was validated: `weight_bytes` is 1 or 2).
    pub fn weight_matrix(&self) -> Weights<'a> {
        Weights::of(self.weight_bytes, self.weights)
    }
}

/// The whole payload.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PolicyBlob<'a> {
    #[serde(borrow)]
    pub meta: Metadata<'a>,
    #[serde(borrow)]
    pub input: InputStage<'a>,
    #[serde(borrow)]
    pub hidden: heapless::Vec<HiddenLayer<'a>, MAX_HIDDEN_LAYERS>,
    #[serde(borrow)]
    pub output: OutputLayer<'a>,
}

/// Why a blob was refused. Each cause is its own value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BlobError {
    /// Shorter than the header or than the length the header states.
    Truncated,
    /// Longer than the header states (trailing bytes).
    TrailingBytes,
    BadMagic,
    UnsupportedVersion(u16),
    ReservedNotZero,
    BadCrc {
        stored: u32,
        computed: u32,
    },
    /// The payload is not a valid postcard `PolicyBlob` (or has more layers than fit).
    Malformed,
    /// Dimensions that do not chain (layer inputs, outputs, obs + act).
    DimensionMismatch,
    /// An array whose byte length does not match its dimensions.
    ArrayLength,
    /// A dimension above the runtime's fixed capacity (`MAX_*` constants).
    CapacityExceeded,
    /// NaN/Inf or out-of-range numbers (shift range, multiplier sign, bounds order, nfe 0,
    /// a weight of −128, a table entry of −32768).
    InvalidValue,
    /// A row whose worst-case sum `Σ|w| · 32767 + |bias|` does not fit an int32
    /// accumulator (the exporter refuses to write such a layer).
    AccumulatorRange,
}

impl core::fmt::Display for BlobError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlobError::Truncated => write!(f, "blob is truncated"),
            BlobError::TrailingBytes => write!(f, "blob has trailing bytes after the payload"),
            BlobError::BadMagic => write!(f, "not a policy blob (bad magic)"),
            BlobError::UnsupportedVersion(v) if *v < FORMAT_VERSION => write!(
                f,
                "blob format version {v} is no longer supported (this runtime reads version \
                 {FORMAT_VERSION}, int16 activations); re-export the policy from its run \
                 directory with `trainer export RUN_DIR --out BLOB`"
            ),
            BlobError::UnsupportedVersion(v) => write!(
                f,
                "blob format version {v} is newer than this runtime (it reads version \
                 {FORMAT_VERSION}); update the runtime or firmware"
            ),
            BlobError::ReservedNotZero => write!(f, "blob header reserved field is not zero"),
            BlobError::BadCrc { stored, computed } => {
                write!(
                    f,
                    "blob CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            BlobError::Malformed => write!(f, "blob payload is malformed"),
            BlobError::DimensionMismatch => write!(f, "blob layer dimensions do not chain"),
            BlobError::ArrayLength => write!(f, "blob array length does not match its dimensions"),
            BlobError::CapacityExceeded => {
                write!(f, "blob dimensions exceed the runtime's capacity")
            }
            BlobError::InvalidValue => write!(f, "blob contains an invalid number"),
            BlobError::AccumulatorRange => {
                write!(f, "blob layer could overflow its int32 accumulator")
            }
        }
    }
}

/// Read the i-th little-endian f32 of a byte array. Callers index within validated bounds.
#[inline]
pub fn f32_at(bytes: &[u8], i: usize) -> f32 {
    f32::from_bits(u32_at(bytes, i))
}

/// Read the i-th little-endian u32 of a byte array: one bounds check, one (unaligned)
/// load on targets that allow it.
#[inline]
fn u32_at(bytes: &[u8], i: usize) -> u32 {
    let word: [u8; 4] = bytes[4 * i..4 * i + 4]
        .try_into()
        .expect("a 4-byte slice converts to [u8; 4]");
    u32::from_le_bytes(word)
}

/// Read the i-th little-endian i32 of a byte array.
#[inline]
pub fn i32_at(bytes: &[u8], i: usize) -> i32 {
    u32_at(bytes, i) as i32
}

/// CRC-32 of a whole blob file; the firmware reports it as the blob's identity.
pub fn blob_hash(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes)
}

impl<'a> PolicyBlob<'a> {
    /// Check the header, CRC and every invariant the evaluator relies on, borrowing all
    /// arrays from `bytes`. Never panics.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BlobError> {
        if bytes.len() < HEADER_LEN {
            return Err(BlobError::Truncated);
        }
        if bytes[0..4] != MAGIC {
            return Err(BlobError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != FORMAT_VERSION {
            return Err(BlobError::UnsupportedVersion(version));
        }
        if bytes[6] != 0 || bytes[7] != 0 {
            return Err(BlobError::ReservedNotZero);
        }
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        let stored = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        let body = &bytes[HEADER_LEN..];
        if body.len() < len {
            return Err(BlobError::Truncated);
        }
        if body.len() > len {
            return Err(BlobError::TrailingBytes);
        }
        let computed = CRC32.checksum(body);
        if computed != stored {
            return Err(BlobError::BadCrc { stored, computed });
        }
        let (blob, rest): (PolicyBlob<'a>, &[u8]) =
            postcard::take_from_bytes(body).map_err(|_| BlobError::Malformed)?;
        if !rest.is_empty() {
            return Err(BlobError::TrailingBytes);
        }
        blob.validate()?;
        Ok(blob)
    }

    /// The invariants of a well-formed policy, independent of the header.
    pub fn validate(&self) -> Result<(), BlobError> {
        let m = &self.meta;
        let (obs, act, nfe) = (m.obs_dim as usize, m.act_dim as usize, m.nfe as usize);
        if obs == 0 || act == 0 || self.hidden.is_empty() {
            return Err(BlobError::DimensionMismatch);
        }
        if obs > MAX_OBS || act > MAX_ACT || nfe > MAX_NFE {
            return Err(BlobError::CapacityExceeded);
        }
        if nfe == 0 {
            return Err(BlobError::InvalidValue);
        }
        check_len(m.action_low, 4 * act)?;
        check_len(m.action_high, 4 * act)?;
        for i in 0..act {
            let (lo, hi) = (f32_at(m.action_low, i), f32_at(m.action_high, i));
            // `hi − lo` finite too: the action map multiplies by it.
            if !(lo.is_finite() && hi.is_finite() && lo < hi && (hi - lo).is_finite()) {
                return Err(BlobError::InvalidValue);
            }
        }
        if !(m.noise_std.is_finite() && (0.0..=MAX_NOISE_STD).contains(&m.noise_std)) {
            return Err(BlobError::InvalidValue);
        }

        let inp = &self.input;
        check_len(inp.obs_mean, 4 * obs)?;
        check_len(inp.obs_inv_std, 4 * obs)?;
        for i in 0..obs {
            if !(f32_at(inp.obs_mean, i).is_finite() && f32_at(inp.obs_inv_std, i).is_finite()) {
                return Err(BlobError::InvalidValue);
            }
        }
        check_len(inp.inv_scales, 4 * (obs + act))?;
        for i in 0..obs + act {
            let s = f32_at(inp.inv_scales, i);
            if !(s.is_finite() && s > 0.0) {
                return Err(BlobError::InvalidValue);
            }
        }
        if !(inp.obs_clip.is_finite() && inp.obs_clip > 0.0) {
            return Err(BlobError::InvalidValue);
        }

        let mut width = obs + act;
        for (index, layer) in self.hidden.iter().enumerate() {
            let (i, o) = (layer.in_dim as usize, layer.out_dim as usize);
            if i > MAX_WIDTH || o > MAX_WIDTH || width > MAX_WIDTH {
                return Err(BlobError::CapacityExceeded);
            }
            if i != width || o == 0 {
                return Err(BlobError::DimensionMismatch);
            }
            let bias_sets = if index == 0 { nfe } else { 1 };
            let weights = Weights::new(layer.weight_bytes, layer.weights)?;
            check_len(layer.weights, i * o * layer.weight_bytes as usize)?;
            check_len(layer.biases, 4 * o * bias_sets)?;
            check_len(layer.multipliers, 4 * o)?;
            check_len(layer.shifts, o)?;
            check_len(layer.activation, quant::TABLE_BYTES)?;
            for c in 0..o {
                let shift = layer.shifts[c] as i8 as i32;
                if i32_at(layer.multipliers, c) < 0 || !quant::SHIFT_RANGE.contains(&shift) {
                    return Err(BlobError::InvalidValue);
                }
            }
            if layer
                .activation
                .chunks_exact(2)
                .any(|e| e == i16::MIN.to_le_bytes())
            {
                return Err(BlobError::InvalidValue);
            }
            check_weights(weights)?;
            check_accumulators(weights, i, layer.biases)?;
            width = o;
        }

        let out = &self.output;
        let (i, o) = (out.in_dim as usize, out.out_dim as usize);
        if i > MAX_WIDTH {
            return Err(BlobError::CapacityExceeded);
        }
        if i != width || o != act {
            return Err(BlobError::DimensionMismatch);
        }
        let weights = Weights::new(out.weight_bytes, out.weights)?;
        check_len(out.weights, i * o * out.weight_bytes as usize)?;
        check_len(out.biases, 4 * o)?;
        check_len(out.scales, 4 * o)?;
        check_weights(weights)?;
        check_accumulators(weights, i, out.biases)?;
        for c in 0..o {
            // NaN fails `contains`, ±Inf is out of range.
            if !(0.0..=MAX_OUTPUT_SCALE).contains(&f32_at(out.scales, c).abs()) {
                return Err(BlobError::InvalidValue);
            }
        }
        Ok(())
    }
}

fn check_len(array: &[u8], expected: usize) -> Result<(), BlobError> {
    if array.len() == expected {
        Ok(())
    } else {
        Err(BlobError::ArrayLength)
    }
}

/// Symmetric weights never use the most negative code (−128, −32768: its negation does
/// not fit).
fn check_weights(weights: Weights<'_>) -> Result<(), BlobError> {
    let most_negative = match weights {
        Weights::Int8(_) => i8::MIN as i32,
        Weights::Int16(_) => i16::MIN as i32,
    };
    if (0..weights.len()).any(|k| weights.get(k) == most_negative) {
        Err(BlobError::InvalidValue)
    } else {
        Ok(())
    }
}

/// Every row's accumulator stays within int32, else `AccumulatorRange` (see
/// [`accumulator_overflow`]).
fn check_accumulators(weights: Weights<'_>, width: usize, biases: &[u8]) -> Result<(), BlobError> {
    match accumulator_overflow(weights, width, biases) {
        Some(_) => Err(BlobError::AccumulatorRange),
        None => Ok(()),
    }
}

/// The first row whose worst-case sum breaks the accumulator bound, with that sum: for row
/// `c` (`width` weights) and every bias set `b` (the biases hold whole sets of `rows` i32
/// LE values), the bound is `Σ_i |w_ci| · 32767 + |b_c| ≤ i32::MAX`. Activations are
/// within ±32767, so under it every partial sum, in any order, fits. A width-0 layer has
/// no rows. The parser refuses such a layer; the exporter names it.
pub fn accumulator_overflow(
    weights: Weights<'_>,
    width: usize,
    biases: &[u8],
) -> Option<(usize, i64)> {
    if width == 0 {
        return None;
    }
    let rows = weights.len() / width;
    let largest_bias = |c: usize| {
        (0..biases.len() / (4 * rows))
            .map(|set| (i32_at(biases, set * rows + c) as i64).abs())
            .max()
            .unwrap_or(0)
    };
    (0..rows).find_map(|c| {
        let weight_sum: i64 = (c * width..(c + 1) * width)
            .map(|k| (weights.get(k) as i64).abs())
            .sum();
        let worst = weight_sum * quant::ACTIVATION_MAX as i64 + largest_bias(c);
        (worst > i32::MAX as i64).then_some((c, worst))
    })
}

/// Encode a blob: header plus postcard payload. Host side (trainer export, tests).
#[cfg(feature = "std")]
pub fn encode(blob: &PolicyBlob<'_>) -> Result<std::vec::Vec<u8>, postcard::Error> {
    let payload = postcard::to_stdvec(blob)?;
    let mut out = std::vec::Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&CRC32.checksum(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob header of `version` in front of an otherwise empty payload.
    fn header(version: u16) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4..6].copy_from_slice(&version.to_le_bytes());
        h[12..16].copy_from_slice(&CRC32.checksum(&[]).to_le_bytes());
        h
    }

    /// A version-1 blob (int8 activations) is refused before its payload is read, with a
    /// message that names the version and how to re-export; a newer one names the fix
    /// on the device side.
    #[test]
    fn other_versions_are_refused_with_the_way_out() {
        let old = PolicyBlob::parse(&header(1)).unwrap_err();
        assert_eq!(old, BlobError::UnsupportedVersion(1));
        let message = old.to_string();
        assert!(
            message.contains("version 1") && message.contains("trainer export"),
            "{message}"
        );
        let new = PolicyBlob::parse(&header(3)).unwrap_err().to_string();
        assert!(new.contains("version 3") && new.contains("update"), "{new}");
        assert_eq!(
            PolicyBlob::parse(&header(FORMAT_VERSION)).unwrap_err(),
            BlobError::Malformed
        );
    }
}
