//! Integer kernels.
//!
//! The one kernel the policy needs is the int8 dot product with an input offset:
//! `Σ_i w[i] · (x[i] − zero_point)` with int8 `w` and `x` and an int32 result.
//! [`dot_reference`] states the arithmetic; [`dot`] is the path the policy calls, which
//! may be an optimized implementation for the target but must return the same value
//! (tests prove it on random inputs).
//!
//! No overflow is possible for blobs the parser accepts: widths ≤ [`crate::MAX_WIDTH`],
//! |w| ≤ 127 and |x − zp| ≤ 255 bound the sum by 512 · 127 · 255 < 2^24.

/// The specification: a plain loop over int8 weights (stored as bytes) and int8 inputs.
pub fn dot_reference(weights: &[u8], inputs: &[i8], zero_point: i32) -> i32 {
    debug_assert_eq!(weights.len(), inputs.len());
    let mut acc: i32 = 0;
    for (&w, &x) in weights.iter().zip(inputs) {
        acc += (w as i8 as i32) * (x as i32 - zero_point);
    }
    acc
}

/// The dot product the policy uses. Currently the reference path on every target.
#[inline]
pub fn dot(weights: &[u8], inputs: &[i8], zero_point: i32) -> i32 {
    dot_reference(weights, inputs, zero_point)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn dot_matches_wide_arithmetic(
            pairs in proptest::collection::vec((any::<i8>(), any::<i8>()), 0..crate::MAX_WIDTH),
            zero_point in -128i32..=127,
        ) {
            let weights: Vec<u8> = pairs.iter().map(|p| p.0.max(-127) as u8).collect();
            let inputs: Vec<i8> = pairs.iter().map(|p| p.1).collect();
            let wide: i64 = weights.iter().zip(&inputs)
                .map(|(&w, &x)| (w as i8 as i64) * (x as i64 - zero_point as i64)).sum();
            prop_assert_eq!(dot(&weights, &inputs, zero_point) as i64, wide);
            prop_assert_eq!(dot_reference(&weights, &inputs, zero_point) as i64, wide);
        }
    }
}
