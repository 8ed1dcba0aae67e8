//! Fixed-point requantization with a single rounding (TFLite's `TFLITE_SINGLE_ROUNDING`,
//! CMSIS-NN's `CMSIS_NN_USE_SINGLE_ROUNDING`).
//!
//! A real multiplier `M` is stored as an int32 `m` in [2^30, 2^31) and a power-of-two
//! `shift` in [`SHIFT_RANGE`] with `M ≈ m · 2^(shift − 31)`. Applied to an int32
//! accumulator `x` it gives `floor((x·m + 2^(30 − shift)) / 2^(31 − shift))`: the exact
//! product `x·M` rounded to nearest, ties toward +∞, in one step, saturated to int32.
//! Pure integer code, so every platform computes the same bits.

/// Apply the quantized multiplier `(m, shift)` (see [`quantize_multiplier`]) to `x`:
/// `floor((x·m + 2^(30 − shift)) / 2^(31 − shift))`, saturated to int32. Defined for every
/// `m ≥ 0` and `shift` in [`SHIFT_RANGE`] (what the parser accepts): the 64-bit sum never
/// overflows (`|x·m| < 2^62`, nudge ≤ 2^61). On the Cortex-M4 the `shift < 0` case is one
/// `SMLAL` with the nudge in its accumulator pair and one shift of the high word.
#[inline(always)]
pub fn requantize(x: i32, multiplier: i32, shift: i32) -> i32 {
    debug_assert!(multiplier >= 0 && SHIFT_RANGE.contains(&shift));
    let total = (31 - shift) as u32 & 63;
    let sum = x as i64 * multiplier as i64 + (1i64 << (total - 1));
    (sum >> total).clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// Largest magnitude of an int16 activation that a dense layer reads (inputs and table
/// outputs). Symmetric: −32768 is never an activation, so `|x| ≤ ACTIVATION_MAX` bounds
/// every product in the accumulator bound ([`crate::blob`]).
pub const ACTIVATION_MAX: i32 = 32767;
/// Entries of an activation table: 512 intervals of 128 pre-activation codes, plus the
/// right end of the last one.
pub const TABLE_ENTRIES: usize = 513;
/// Bytes of an activation table (int16 LE entries).
pub const TABLE_BYTES: usize = 2 * TABLE_ENTRIES;

/// The activation function as an interpolated int16 table (the TFLite int16 LUT scheme).
/// `table` holds [`TABLE_ENTRIES`] int16 LE values, entry `k` being the output code at the
/// pre-activation code `−32768 + 128·k`. For a pre-activation code `p` (int16):
/// `u = p + 32768` (0..=65535), `k = u >> 7`, `f = u & 127`, and
/// `y = T[k] + ((T[k+1] − T[k]) · f + 64) >> 7` with an arithmetic (flooring) shift.
/// `y` lies between `T[k]` and `T[k+1]`, so a table inside ±[`ACTIVATION_MAX`] gives
/// activations inside it too.
#[inline(always)]
pub fn interpolate(table: &[u8], pre: i16) -> i16 {
    let u = (pre as i32 + 32768) as usize;
    let (k, f) = (u >> 7, (u & 127) as i32);
    let base = i16::from_le_bytes([table[2 * k], table[2 * k + 1]]) as i32;
    let next = i16::from_le_bytes([table[2 * k + 2], table[2 * k + 3]]) as i32;
    (base + (((next - base) * f + 64) >> 7)) as i16
}

/// A hidden layer's per-channel output stage on a run of `n = accs.len()` channels:
/// `out[c] = interpolate(table, sat16(requantize(acc[c] +wrap bias[c], m[c], shift[c])))`
/// with `bias`, `m` (i32 LE) and `shift` (i8) read from the blob's byte arrays, which hold
/// at least `n` entries from these channels on; `m ≥ 0` and `shift` in [`SHIFT_RANGE`]
/// (what the parser accepts). A function of its own (not inlined into the kernel's loop),
/// so that its pointers stay in registers.
#[inline(never)]
pub fn requantize_into(
    accs: &[i32],
    biases: &[u8],
    multipliers: &[u8],
    shifts: &[u8],
    table: &[u8; TABLE_BYTES],
    out: &mut [i16],
) {
    let n = accs.len();
    let (biases, multipliers) = (&biases[..4 * n], &multipliers[..4 * n]);
    let (shifts, out) = (&shifts[..n], &mut out[..n]);
    let params = biases.chunks_exact(4).zip(multipliers.chunks_exact(4));
    for ((o, &acc), ((b, m), &s)) in out.iter_mut().zip(accs).zip(params.zip(shifts)) {
        let bias = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let m = i32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        let pre = requantize(acc.wrapping_add(bias), m, s as i8 as i32);
        *o = interpolate(table, saturate_i16(pre));
    }
}

/// Smallest and largest `shift` a blob may store: right shifts up to 31, left shifts up to 30.
pub const SHIFT_RANGE: core::ops::RangeInclusive<i32> = -31..=30;

/// Split a positive real multiplier into `(m, shift)` with `real ≈ m · 2^(shift − 31)` and
/// `m` in [2^30, 2^31). Returns `None` for values that are not finite and positive or whose
/// shift falls outside [`SHIFT_RANGE`] (the exporter must then pick other scales).
/// Runs on the host at export; kept here because it defines the runtime's contract.
pub fn quantize_multiplier(real: f64) -> Option<(i32, i32)> {
    if !(real.is_finite() && real > 0.0) {
        return None;
    }
    // Normalize to q in [0.5, 1) with real = q · 2^shift, by exact power-of-two steps.
    let mut q = real;
    let mut shift = 0i32;
    while q >= 1.0 {
        q *= 0.5;
        shift += 1;
    }
    while q < 0.5 {
        q *= 2.0;
        shift -= 1;
    }
    let scaled = q * (1u64 << 31) as f64;
    // Round half away from zero without std: q > 0 here.
    let mut m = (scaled + 0.5) as i64;
    if m == 1i64 << 31 {
        m /= 2;
        shift += 1;
    }
    if !SHIFT_RANGE.contains(&shift) {
        return None;
    }
    Some((m as i32, shift))
}

/// Round an f32 to the nearest integer, half away from zero, saturating to i32. Written
/// with plain IEEE operations (add, compare, truncating cast) so it gives the same result
/// on every platform; `f32::round` is not available in `core`. NaN maps to 0.
#[inline]
pub fn round_half_away_f32(x: f32) -> i32 {
    if x >= 0.0 {
        (x + 0.5) as i32
    } else {
        (x - 0.5) as i32
    }
}

/// Saturate an i32 to the int16 range (a pre-activation code).
#[inline]
pub fn saturate_i16(x: i32) -> i16 {
    x.clamp(i16::MIN as i32, i16::MAX as i32) as i16
}

/// Saturate an i32 to the symmetric activation range ±[`ACTIVATION_MAX`].
#[inline]
pub fn saturate_activation(x: i32) -> i16 {
    x.clamp(-ACTIVATION_MAX, ACTIVATION_MAX) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stated arithmetic in 128 bits: `floor(x·m / 2^(31 − shift) + 1/2)`, saturated.
    fn requantize_wide(x: i32, m: i32, shift: i32) -> i32 {
        let den = 1i128 << (31 - shift);
        let rounded = (2 * x as i128 * m as i128 + den).div_euclid(2 * den);
        rounded.clamp(i32::MIN as i128, i32::MAX as i128) as i32
    }

    /// The i32 edge cases, then `2·n` random values (full range, and shifted right to
    /// every magnitude).
    fn edge_and_random_values(seed: u64, n: usize) -> Vec<i32> {
        let mut values = vec![
            0,
            1,
            -1,
            2,
            -2,
            3,
            -3,
            i32::MIN,
            i32::MIN + 1,
            i32::MAX,
            i32::MAX - 1,
            1 << 30,
            -(1 << 30),
            (1 << 30) + 1,
            (1 << 30) - 1,
            1 << 24,
            -(1 << 24),
        ];
        let mut rng = crate::noise::SplitMix64::new(seed);
        for _ in 0..n {
            let r = rng.next_u64();
            values.push(r as i32);
            values.push((r as i32) >> (r >> 59));
        }
        values
    }

    /// `requantize` equals the 128-bit statement for every shift a blob may hold, on
    /// edge and random accumulators and multipliers, and on every tie of small inputs.
    #[test]
    fn requantize_equals_the_wide_statement() {
        let xs = edge_and_random_values(11, 400);
        let mut ms: Vec<i32> = vec![0, 1, 2, 3, 1 << 30, (1 << 30) + 1, i32::MAX, i32::MAX - 1];
        let mut rng = crate::noise::SplitMix64::new(12);
        for _ in 0..400 {
            let r = rng.next_u64();
            ms.push((r >> 33) as i32);
            ms.push((1 << 30) | (r >> 34) as i32);
        }
        for shift in SHIFT_RANGE {
            for &m in &ms {
                for &x in &xs {
                    assert_eq!(
                        requantize(x, m, shift),
                        requantize_wide(x, m, shift),
                        "x={x} m={m} shift={shift}"
                    );
                }
            }
            // Ties: with m = 2^30, x·m / 2^31 = x / 2, so small x hit every half-way case.
            for x in -5000..5000 {
                for m in [1 << 30, (1 << 30) - 1, (1 << 30) + 1] {
                    assert_eq!(
                        requantize(x, m, shift),
                        requantize_wide(x, m, shift),
                        "x={x} m={m} shift={shift}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn requantize_matches_on_random_inputs(
            x in proptest::prelude::any::<i32>(),
            m in 0..=i32::MAX,
            shift in SHIFT_RANGE,
        ) {
            proptest::prop_assert_eq!(requantize(x, m, shift), requantize_wide(x, m, shift));
        }
    }

    #[test]
    fn requantize_rounds_ties_up_and_saturates() {
        // m = 2^30, shift 0: x / 2. Ties go toward +∞: 0.5 → 1, −0.5 → 0, −1.5 → −1.
        assert_eq!(requantize(1, 1 << 30, 0), 1);
        assert_eq!(requantize(-1, 1 << 30, 0), 0);
        assert_eq!(requantize(3, 1 << 30, 0), 2);
        assert_eq!(requantize(-3, 1 << 30, 0), -1);
        // Just below a tie rounds down, just past it rounds away.
        assert_eq!(requantize(1, (1 << 30) - 1, 0), 0);
        assert_eq!(requantize(-3, (1 << 30) + 1, 0), -2);
        // A right shift: x / 2^11 (m = 2^30, shift −10).
        assert_eq!(requantize(1024, 1 << 30, -10), 1);
        assert_eq!(requantize(1023, 1 << 30, -10), 0);
        assert_eq!(requantize(-1024, 1 << 30, -10), 0);
        assert_eq!(requantize(-1025, 1 << 30, -10), -1);
        // Multipliers ≥ 1 saturate instead of wrapping: 4.0 = 2^30 · 2^(3 − 31) · 2.
        let (m, s) = quantize_multiplier(4.0).unwrap();
        assert_eq!((m, s), (1 << 30, 3));
        assert_eq!(requantize(1000, m, s), 4000);
        assert_eq!(requantize(i32::MAX / 2, m, s), i32::MAX);
        assert_eq!(requantize(i32::MIN / 2, m, s), i32::MIN);
    }

    #[test]
    fn multiplier_round_trips_and_saturates() {
        for &real in &[
            1.0e-6,
            3.3e-3,
            0.25,
            0.5,
            0.75,
            0.999_999_999_9,
            1.0,
            7.5,
            1000.0,
        ] {
            let (m, shift) = quantize_multiplier(real).unwrap();
            assert!((1 << 30..=i32::MAX).contains(&m), "{real}: m={m}");
            let back = m as f64 * 2f64.powi(shift - 31);
            assert!(((back - real) / real).abs() < 1e-9, "{real} -> {back}");
        }
        assert_eq!(quantize_multiplier(0.0), None);
        assert_eq!(quantize_multiplier(-1.0), None);
        assert_eq!(quantize_multiplier(f64::NAN), None);
        assert_eq!(quantize_multiplier(1e-30), None);
    }

    #[test]
    fn requantization_matches_real_arithmetic() {
        // The result is the real product x · m · 2^(shift − 31) (exact in f64 here) rounded
        // to nearest, ties up; and that product is within the multiplier's own rounding
        // of x · real.
        for &real in &[0.0123, 0.5, 0.3333, 0.9, 3.7] {
            let (m, s) = quantize_multiplier(real).unwrap();
            for x in -5000..5000 {
                let exact = x as f64 * m as f64 * 2f64.powi(s - 31);
                assert_eq!(
                    requantize(x, m, s) as f64,
                    (exact + 0.5).floor(),
                    "x={x} real={real}"
                );
                assert!((exact - x as f64 * real).abs() <= 1e-6 * (x as f64).abs());
            }
        }
    }

    #[test]
    fn float_rounding_is_half_away() {
        assert_eq!(round_half_away_f32(2.5), 3);
        assert_eq!(round_half_away_f32(-2.5), -3);
        assert_eq!(round_half_away_f32(2.4), 2);
        assert_eq!(round_half_away_f32(-0.4), 0);
        assert_eq!(round_half_away_f32(f32::NAN), 0);
        assert_eq!(round_half_away_f32(1e20), i32::MAX);
        assert_eq!(saturate_i16(40_000), 32767);
        assert_eq!(saturate_i16(-40_000), -32768);
        assert_eq!(saturate_activation(-40_000), -32767);
        assert_eq!(saturate_activation(-32768), -32767);
        assert_eq!(saturate_activation(123), 123);
    }

    /// The interpolation hits every table entry exactly at its knot, rounds the
    /// fraction half up, stays between neighbouring entries and never indexes past the
    /// table, including at both ends of the int16 range.
    #[test]
    fn interpolation_is_exact_at_knots_and_bounded_between() {
        let mut rng = crate::noise::SplitMix64::new(3);
        let entries: Vec<i16> = (0..TABLE_ENTRIES)
            .map(|k| match k % 7 {
                0 => ACTIVATION_MAX as i16,
                1 => -ACTIVATION_MAX as i16,
                _ => (rng.next_u64() as i16).max(-ACTIVATION_MAX as i16),
            })
            .collect();
        let table: Vec<u8> = entries.iter().flat_map(|v| v.to_le_bytes()).collect();
        for (k, &entry) in entries.iter().take(512).enumerate() {
            let knot = (-32768 + 128 * k as i32) as i16;
            assert_eq!(interpolate(&table, knot), entry);
        }
        for pre in i16::MIN..=i16::MAX {
            let u = pre as i32 + 32768;
            let (k, f) = ((u >> 7) as usize, (u & 127) as f64);
            let (a, b) = (entries[k] as f64, entries[k + 1] as f64);
            let exact = a + (b - a) * f / 128.0;
            let y = interpolate(&table, pre) as f64;
            assert!(
                y >= a.min(b) && y <= a.max(b),
                "{pre}: {y} outside [{a}, {b}]"
            );
            // Floor of (exact + 0.5/1), the stated rounding.
            assert_eq!(y, (exact + 0.5).floor(), "{pre}");
        }
    }
}
