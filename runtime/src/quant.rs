//! Fixed-point requantization, the gemmlowp / TFLite / CMSIS-NN way.
//!
//! One rounding rule everywhere ("double rounding"): a real multiplier `M` is stored as an
//! int32 `m` in [2^30, 2^31) and a power-of-two `shift` with `M ≈ m · 2^(shift − 31)`.
//! Applying it to an int32 accumulator `x` is
//! `rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x · 2^max(shift,0), m), max(−shift,0))`:
//! the high multiply rounds to nearest (ties toward +∞, as gemmlowp), the divide rounds
//! half away from zero. These functions
//! are pure integer code, so every platform computes the same bits.

/// `round(a · b / 2^31)` to nearest, saturating the one overflow case
/// (`i32::MIN · i32::MIN`). As in gemmlowp, the nudge is added before a truncating
/// division, so exact ties round toward +∞ (0.5 → 1, −0.5 → 0, −1.5 → −1).
#[inline]
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    // gemmlowp writes this as `(ab + nudge) / 2^31` with a truncating division and
    // `nudge = 2^30` for ab ≥ 0, `1 − 2^30` for ab < 0. Both cases equal
    // `floor((ab + 2^30) / 2^31)`: for y = ab + 1 − 2^30 < 0, trunc(y / 2^31) =
    // floor((y + 2^31 − 1) / 2^31). So one add and an arithmetic shift give the same bits
    // (tests compare with the gemmlowp form), without a branch or a 64-bit division.
    ((a as i64 * b as i64 + (1 << 30)) >> 31) as i32
}

/// `round(x / 2^exponent)`, rounding half away from zero. `exponent` in 0..=31.
#[inline]
pub fn rounding_divide_by_pot(x: i32, exponent: u32) -> i32 {
    debug_assert!(exponent <= 31);
    let mask: i32 = (1u32 << exponent).wrapping_sub(1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// Apply a quantized multiplier `(m, shift)` (see [`quantize_multiplier`]) to `x`.
#[inline]
pub fn multiply_by_quantized_multiplier(x: i32, multiplier: i32, shift: i32) -> i32 {
    if shift > 0 {
        let scaled = x.saturating_mul(1i32 << shift as u32);
        saturating_rounding_doubling_high_mul(scaled, multiplier)
    } else {
        // x · 2^0 needs no saturation.
        rounding_divide_by_pot(
            saturating_rounding_doubling_high_mul(x, multiplier),
            (-shift) as u32,
        )
    }
}

/// [`multiply_by_quantized_multiplier`] for the multipliers a blob may hold (`m ≥ 0`,
/// `shift` in [`SHIFT_RANGE`]): the same bits for every `x`, with both roundings merged
/// into one (this is what the policy runs per output channel).
///
/// With `m ≥ 0` the high multiply never saturates (`m ≠ i32::MIN`). For a right shift
/// `e = −shift ≥ 1` the two roundings compose exactly: with `p = x·m`,
/// `q = floor((p + 2^30) / 2^31)` (the high multiply) and `RDBP(q, e) =
/// floor((q + 2^(e−1) − [q < 0]) / 2^e)`, nested floors give
/// `floor((p + 2^30 + 2^31·(2^(e−1) − [q < 0])) / 2^(31+e))`. `[q < 0]` may be replaced by
/// `[x < 0]`: they differ only when `q = 0`, where both give 0. The sum fits in an i64
/// (`|p| < 2^62`) and the quotient in an i32, so the result is one 64-bit multiply-add
/// (`SMLAL` on the Cortex-M4) and two shifts.
#[inline(always)]
pub fn requantize(x: i32, multiplier: i32, shift: i32) -> i32 {
    debug_assert!(multiplier >= 0 && SHIFT_RANGE.contains(&shift));
    if shift < 0 {
        // e − 1 = !shift in 0..=30; k = 2^(e−1) − [x < 0] ≥ 0. The nudge
        // k·2^31 + 2^30 is built from its two 32-bit halves (k >> 1 and
        // (k << 31) | 2^30), so it is two shifts and an OR, not a 64-bit add.
        let e1 = !shift as u32 & 31;
        let k = (1i32 << e1) + (x >> 31);
        let nudge = ((k >> 1) as i64) << 32 | (((k as u32) << 31) | (1 << 30)) as i64;
        let sum = x as i64 * multiplier as i64 + nudge;
        ((sum >> 32) as i32) >> e1
    } else {
        let x = if shift > 0 {
            x.saturating_mul(1i32 << (shift as u32 & 31))
        } else {
            x
        };
        ((x as i64 * multiplier as i64 + (1 << 30)) >> 31) as i32
    }
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

    /// gemmlowp's formulation, the oracle for the branch-free one.
    fn high_mul_gemmlowp(a: i32, b: i32) -> i32 {
        if a == i32::MIN && b == i32::MIN {
            return i32::MAX;
        }
        let ab = a as i64 * b as i64;
        let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
        ((ab + nudge) / (1i64 << 31)) as i32
    }

    /// The original two-sided form of `multiply_by_quantized_multiplier`.
    fn multiply_two_sided(x: i32, multiplier: i32, shift: i32) -> i32 {
        let left = if shift > 0 { shift as u32 } else { 0 };
        let right = if shift < 0 { (-shift) as u32 } else { 0 };
        rounding_divide_by_pot(
            high_mul_gemmlowp(x.saturating_mul(1i32 << left), multiplier),
            right,
        )
    }

    /// The i32 edge cases of the multiply stages, then `2·n` random values (full range,
    /// and shifted right to every magnitude).
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

    #[test]
    fn fast_forms_equal_the_gemmlowp_forms() {
        let values = edge_and_random_values(7, 2000);
        for &a in &values {
            for &b in values.iter().step_by(7) {
                assert_eq!(
                    saturating_rounding_doubling_high_mul(a, b),
                    high_mul_gemmlowp(a, b),
                    "{a} {b}"
                );
            }
            for shift in SHIFT_RANGE.step_by(3).chain([-1, 0, 1]) {
                let m = (1 << 30) + (a as u32 >> 2) as i32 % (1 << 30);
                assert_eq!(
                    multiply_by_quantized_multiplier(a, m, shift),
                    multiply_two_sided(a, m, shift),
                    "{a} {m} {shift}"
                );
            }
        }
    }

    /// The merged form equals the two-step form for every multiplier a blob may hold.
    #[test]
    fn requantize_equals_the_two_step_form() {
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
                        multiply_by_quantized_multiplier(x, m, shift),
                        "x={x} m={m} shift={shift}"
                    );
                }
            }
            // Ties: with m = 2^30, x·m / 2^31 = x / 2, so small x hit every half-way case
            // of both roundings.
            for x in -5000..5000 {
                for m in [1 << 30, (1 << 30) - 1, (1 << 30) + 1] {
                    assert_eq!(
                        requantize(x, m, shift),
                        multiply_by_quantized_multiplier(x, m, shift),
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
            proptest::prop_assert_eq!(
                requantize(x, m, shift),
                multiply_by_quantized_multiplier(x, m, shift)
            );
        }
    }

    #[test]
    fn high_mul_rounds_half_away_from_zero() {
        // 2^30 · 2^30 / 2^31 = 2^29 exactly.
        assert_eq!(
            saturating_rounding_doubling_high_mul(1 << 30, 1 << 30),
            1 << 29
        );
        // Ties go toward +∞: 0.5 → 1, −0.5 → 0, 1.5 → 2, −1.5 → −1.
        assert_eq!(saturating_rounding_doubling_high_mul(1, 1 << 30), 1);
        assert_eq!(saturating_rounding_doubling_high_mul(-1, 1 << 30), 0);
        assert_eq!(saturating_rounding_doubling_high_mul(3, 1 << 30), 2);
        assert_eq!(saturating_rounding_doubling_high_mul(-3, 1 << 30), -1);
        // Just past the tie rounds away.
        assert_eq!(saturating_rounding_doubling_high_mul(-3, (1 << 30) + 1), -2);
        // 0.4999… → 0.
        assert_eq!(saturating_rounding_doubling_high_mul(1, (1 << 30) - 1), 0);
        assert_eq!(saturating_rounding_doubling_high_mul(-1, (1 << 30) - 1), 0);
        // The one overflow case saturates.
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
            i32::MAX
        );
    }

    #[test]
    fn divide_by_pot_half_way_cases() {
        assert_eq!(rounding_divide_by_pot(5, 1), 3); // 2.5 → 3
        assert_eq!(rounding_divide_by_pot(-5, 1), -3); // −2.5 → −3
        assert_eq!(rounding_divide_by_pot(3, 1), 2); // 1.5 → 2
        assert_eq!(rounding_divide_by_pot(-3, 1), -2);
        assert_eq!(rounding_divide_by_pot(6, 2), 2); // 1.5 → 2
        assert_eq!(rounding_divide_by_pot(5, 2), 1); // 1.25 → 1
        assert_eq!(rounding_divide_by_pot(-5, 2), -1);
        assert_eq!(rounding_divide_by_pot(-6, 2), -2);
        assert_eq!(rounding_divide_by_pot(7, 0), 7);
        assert_eq!(rounding_divide_by_pot(i32::MIN, 31), -1);
        assert_eq!(rounding_divide_by_pot(i32::MAX, 31), 1);
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
        // Saturation: with a multiplier > 1 the left shift saturates instead of wrapping
        // (4.0 = 0.5 · 2^3: the accumulator saturates at ×8, then halves).
        let (m, s) = quantize_multiplier(4.0).unwrap();
        assert_eq!((m, s), (1 << 30, 3));
        assert_eq!(
            multiply_by_quantized_multiplier(i32::MAX / 2, m, s),
            1 << 30
        );
        assert_eq!(
            multiply_by_quantized_multiplier(i32::MIN / 2, m, s),
            -(1 << 30)
        );
        assert_eq!(multiply_by_quantized_multiplier(1000, m, s), 4000);
    }

    #[test]
    fn requantization_matches_real_arithmetic() {
        // For moderate values the fixed-point result is the correctly rounded real product
        // (ties away from zero), up to the multiplier's own rounding.
        for &real in &[0.0123, 0.5, 0.3333, 0.9] {
            let (m, s) = quantize_multiplier(real).unwrap();
            for x in -5000..5000 {
                let exact = x as f64 * m as f64 * 2f64.powi(s - 31);
                let expect = if exact >= 0.0 {
                    (exact + 0.5).floor()
                } else {
                    (exact - 0.5).ceil()
                };
                let got = multiply_by_quantized_multiplier(x, m, s) as f64;
                assert!(
                    (got - expect).abs() <= 1.0,
                    "x={x} real={real} got={got} expect={expect}"
                );
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
        for k in 0..512 {
            let knot = (-32768 + 128 * k as i32) as i16;
            assert_eq!(interpolate(&table, knot), entries[k]);
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
