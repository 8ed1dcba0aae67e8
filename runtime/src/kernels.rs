//! Integer kernels.
//!
//! The one kernel the policy needs is the int8 dot product with an input offset:
//! `Σ_i w[i] · (x[i] − zero_point)` with int8 `w` and `x` and an int32 result, for every
//! row of a layer's weight matrix.
//!
//! Two implementations, one result:
//! - [`dot_reference`] / [`dense_reference`] state the arithmetic: a plain scalar loop.
//! - [`dot`] / [`dense`] are what the policy calls. On the host they widen `x − zp` to
//!   int16 once per layer; on x86-64 an SSE2 loop (`pmaddwd`) runs four output rows per
//!   pass, elsewhere a loop the compiler vectorizes. On Arm
//!   (`cfg(target_arch = "arm")`, the Cortex-M4 firmware) they run the CMSIS-NN scheme:
//!   `x − zp` is widened once per layer into int16 lane pairs (`SXTB16`, `SXTB16 ROR #8`,
//!   `SADD16`), and the weights, read four at a time, are sign-extended the same way and
//!   multiplied with dual 16-bit MACs (`SMLAD`), four output rows per pass so each input
//!   word is loaded once per four rows.
//!
//! Both are exact integer arithmetic, so they equal the reference bit for bit: host
//! property tests compare them on random inputs, and the firmware in QEMU runs the Arm
//! path against the host's answers (`tests/tests/firmware_qemu.rs`).
//!
//! No overflow is possible for blobs the parser accepts: widths ≤ [`crate::MAX_WIDTH`],
//! |w| ≤ 128 and |x − zp| ≤ 255 bound the sum by 512 · 128 · 255 < 2^24; the int16 lanes
//! hold `x − zp` exactly for zero points in the int8 range (other zero points take the
//! reference path).

/// The specification: a plain loop over int8 weights (stored as bytes) and int8 inputs.
pub fn dot_reference(weights: &[u8], inputs: &[i8], zero_point: i32) -> i32 {
    debug_assert_eq!(weights.len(), inputs.len());
    let mut acc: i32 = 0;
    for (&w, &x) in weights.iter().zip(inputs) {
        acc += (w as i8 as i32) * (x as i32 - zero_point);
    }
    acc
}

/// The specification of a dense layer: `emit(c, dot_reference(row_c, x, zero_point))` for
/// each of the `rows` rows of the row-major `weights` (`rows × x.len()` bytes).
pub fn dense_reference(
    weights: &[u8],
    rows: usize,
    x: &[i8],
    zero_point: i32,
    mut emit: impl FnMut(usize, i32),
) {
    let width = x.len();
    assert_eq!(weights.len(), rows * width, "weights must be rows × inputs");
    for c in 0..rows {
        emit(
            c,
            dot_reference(&weights[c * width..(c + 1) * width], x, zero_point),
        );
    }
}

/// The dot product on the optimized path; equals [`dot_reference`].
#[inline]
pub fn dot(weights: &[u8], inputs: &[i8], zero_point: i32) -> i32 {
    let mut out = 0;
    dense(weights, 1, inputs, zero_point, |_, acc| out = acc);
    out
}

/// The dense layer the policy calls; emits exactly what [`dense_reference`] emits, in
/// the same order.
#[inline]
pub fn dense(weights: &[u8], rows: usize, x: &[i8], zero_point: i32, emit: impl FnMut(usize, i32)) {
    assert_eq!(
        weights.len(),
        rows * x.len(),
        "weights must be rows × inputs"
    );
    if x.len() > crate::MAX_WIDTH || !(-128..=127).contains(&zero_point) {
        // Outside what the widened int16 buffers hold: the policy never gets here.
        return dense_reference(weights, rows, x, zero_point, emit);
    }
    imp::dense(weights, rows, x, zero_point, emit)
}

/// Host (and any non-Arm target): widen `x − zp` to int16 once, then one vectorizable
/// reduction per row. Wrapping operations only so that overflow checks (debug builds)
/// do not block vectorization; the bound in the module docs makes them exact.
#[cfg(not(target_arch = "arm"))]
mod imp {
    use crate::MAX_WIDTH;

    #[inline]
    pub fn dense(
        weights: &[u8],
        rows: usize,
        x: &[i8],
        zero_point: i32,
        emit: impl FnMut(usize, i32),
    ) {
        dense_with(weights, rows, x, zero_point, emit, avx2_available())
    }

    /// AVX2 is used where the CPU has it and `std` can tell (runtime detection).
    #[inline]
    fn avx2_available() -> bool {
        #[cfg(all(target_arch = "x86_64", any(test, feature = "std")))]
        {
            std::is_x86_feature_detected!("avx2")
        }
        #[cfg(not(all(target_arch = "x86_64", any(test, feature = "std"))))]
        {
            false
        }
    }

    /// [`dense`] with the AVX2 choice made by the caller (tests run both paths).
    #[inline]
    pub(super) fn dense_with(
        weights: &[u8],
        rows: usize,
        x: &[i8],
        zero_point: i32,
        mut emit: impl FnMut(usize, i32),
        avx2: bool,
    ) {
        let _ = avx2;
        let width = x.len();
        let mut xw = [0i16; MAX_WIDTH];
        for (o, &v) in xw.iter_mut().zip(x) {
            *o = (v as i32 - zero_point) as i16;
        }
        let xw = &xw[..width];
        if width == 0 {
            (0..rows).for_each(|c| emit(c, 0));
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let mut c = 0;
            while c + 4 <= rows {
                let block = &weights[c * width..(c + 4) * width];
                let accs = if avx2 {
                    #[cfg(any(test, feature = "std"))]
                    // SAFETY: the caller checked that the CPU has AVX2.
                    let accs = unsafe { avx2::rows4(block, width, xw) };
                    #[cfg(not(any(test, feature = "std")))]
                    let accs = sse2::rows4(block, width, xw);
                    accs
                } else {
                    sse2::rows4(block, width, xw)
                };
                for (r, acc) in accs.into_iter().enumerate() {
                    emit(c + r, acc);
                }
                c += 4;
            }
            for (r, row) in weights[c * width..].chunks_exact(width).enumerate() {
                emit(c + r, dot_widened(row, xw));
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        for (c, row) in weights.chunks_exact(width).enumerate() {
            emit(c, dot_widened(row, xw));
        }
    }

    /// x86-64 with AVX2 (detected at run time): as [`sse2`], sixteen int8 weights
    /// sign-extended in one `vpmovsxbw`, sixteen products per `vpmaddwd`.
    #[cfg(all(target_arch = "x86_64", any(test, feature = "std")))]
    mod avx2 {
        use core::arch::x86_64::*;

        /// The four rows of `block` (`4 × width` bytes) against `xw` (`width` int16).
        ///
        /// # Safety
        /// The CPU must support AVX2.
        #[target_feature(enable = "avx2")]
        pub unsafe fn rows4(block: &[u8], width: usize, xw: &[i16]) -> [i32; 4] {
            let full = width / 16 * 16;
            let mut acc = [_mm256_setzero_si256(); 4];
            for k in (0..full).step_by(16) {
                let x: &[i16; 16] = xw[k..k + 16].try_into().expect("16 values");
                // Unaligned load of exactly the 32 bytes of `x`.
                let xv = _mm256_loadu_si256(x.as_ptr() as *const __m256i);
                for (r, a) in acc.iter_mut().enumerate() {
                    let start = r * width + k;
                    let w: &[u8; 16] = block[start..start + 16].try_into().expect("16 bytes");
                    // Unaligned load of exactly the 16 bytes of `w`.
                    let wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.as_ptr() as *const __m128i));
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(wv, xv));
                }
            }
            let mut out = [0i32; 4];
            for (r, o) in out.iter_mut().enumerate() {
                let mut lanes = [0i32; 8];
                _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc[r]);
                let row = &block[r * width..(r + 1) * width];
                *o = row[full..].iter().zip(&xw[full..]).fold(
                    lanes.iter().fold(0i32, |s, &l| s.wrapping_add(l)),
                    |s, (&w, &x)| s.wrapping_add((w as i8 as i32).wrapping_mul(x as i32)),
                );
            }
            out
        }
    }

    /// x86-64: SSE2 (part of the base ISA, so no feature detection). Four rows per pass
    /// share each load of the widened input; the weights are sign-extended to int16 by
    /// unpacking each byte with itself and shifting right by 8, and `pmaddwd` multiplies
    /// eight int16 pairs and adds adjacent products into int32 lanes (exact: each pair
    /// sum is at most 2 · 128 · 255).
    #[cfg(target_arch = "x86_64")]
    mod sse2 {
        use core::arch::x86_64::*;

        // SAFETY (every `unsafe` block of register-only intrinsics below): SSE2 is part
        // of the x86-64 base ISA, so these instructions exist on every x86-64 CPU.

        /// Sign-extend 16 weight bytes to two vectors of eight int16.
        #[inline(always)]
        fn widen(w: __m128i) -> (__m128i, __m128i) {
            // SAFETY: SSE2, see above.
            unsafe {
                (
                    _mm_srai_epi16::<8>(_mm_unpacklo_epi8(w, w)),
                    _mm_srai_epi16::<8>(_mm_unpackhi_epi8(w, w)),
                )
            }
        }

        /// `acc + (Σ pairs of wa·xa) + (Σ pairs of wb·xb)` lane-wise.
        #[inline(always)]
        fn madd2(acc: __m128i, wa: __m128i, xa: __m128i, wb: __m128i, xb: __m128i) -> __m128i {
            // SAFETY: SSE2, see above.
            unsafe {
                _mm_add_epi32(
                    acc,
                    _mm_add_epi32(_mm_madd_epi16(wa, xa), _mm_madd_epi16(wb, xb)),
                )
            }
        }

        #[inline(always)]
        fn load_bytes(bytes: &[u8]) -> __m128i {
            let bytes: &[u8; 16] = bytes.try_into().expect("16 bytes");
            // SAFETY: reads exactly the 16 bytes of `bytes`; unaligned load.
            unsafe { _mm_loadu_si128(bytes.as_ptr() as *const __m128i) }
        }

        #[inline(always)]
        fn load_i16(values: &[i16]) -> __m128i {
            let values: &[i16; 8] = values.try_into().expect("8 values");
            // SAFETY: reads exactly the 16 bytes of `values`; unaligned load.
            unsafe { _mm_loadu_si128(values.as_ptr() as *const __m128i) }
        }

        #[inline(always)]
        fn sum_lanes(v: __m128i) -> i32 {
            let mut lanes = [0i32; 4];
            // SAFETY: writes exactly the 16 bytes of `lanes`; unaligned store.
            unsafe { _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, v) };
            lanes.iter().fold(0i32, |acc, &lane| acc.wrapping_add(lane))
        }

        /// The four rows of `block` (`4 × width` bytes) against `xw` (`width` int16).
        #[inline(always)]
        pub fn rows4(block: &[u8], width: usize, xw: &[i16]) -> [i32; 4] {
            let full = width / 16 * 16;
            // SAFETY: SSE2, see above.
            let mut acc = [unsafe { _mm_setzero_si128() }; 4];
            for k in (0..full).step_by(16) {
                let xa = load_i16(&xw[k..k + 8]);
                let xb = load_i16(&xw[k + 8..k + 16]);
                for (r, a) in acc.iter_mut().enumerate() {
                    let start = r * width + k;
                    let (wa, wb) = widen(load_bytes(&block[start..start + 16]));
                    *a = madd2(*a, wa, xa, wb, xb);
                }
            }
            core::array::from_fn(|r| {
                let row = &block[r * width..(r + 1) * width];
                row[full..]
                    .iter()
                    .zip(&xw[full..])
                    .fold(sum_lanes(acc[r]), |acc, (&w, &x)| {
                        acc.wrapping_add((w as i8 as i32).wrapping_mul(x as i32))
                    })
            })
        }
    }

    #[inline]
    fn dot_widened(row: &[u8], xw: &[i16]) -> i32 {
        row.iter().zip(xw).fold(0i32, |acc, (&w, &x)| {
            acc.wrapping_add((w as i8 as i32).wrapping_mul(x as i32))
        })
    }
}

/// Cortex-M4 (ARMv7E-M DSP extension): SXTB16 / SADD16 / SMLAD, as CMSIS-NN's
/// `arm_nn_vec_mat_mult_t_s8` with `read_and_pad`.
///
/// Layout of the widened input, per group of four inputs `x0..x3` (`xi' = xi − zp`):
/// word `2g` holds the int16 lanes `[x0', x2']` (low, high), word `2g + 1` holds
/// `[x1', x3']`. A little-endian weight word `w = [w0, w1, w2, w3]` gives
/// `SXTB16(w) = [w0, w2]` and `SXTB16(w, ROR #8) = [w1, w3]`, so two `SMLAD`s add
/// `w0·x0' + w2·x2' + w1·x1' + w3·x3'`.
#[cfg(target_arch = "arm")]
mod imp {
    use core::arch::asm;
    use core::mem::MaybeUninit;

    use crate::MAX_WIDTH;

    /// Words of the widened input: two per four inputs, padded to a multiple of eight
    /// inputs (four words per eight-input step).
    const WIDE_WORDS: usize = MAX_WIDTH / 2;

    /// `[sext(x.b0), sext(x.b2)]`.
    #[inline(always)]
    fn sxtb16(x: u32) -> u32 {
        let r: u32;
        // SAFETY: register-only instruction of ARMv7E-M.
        unsafe {
            asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x,
                 options(pure, nomem, nostack, preserves_flags));
        }
        r
    }

    /// `[sext(x.b1), sext(x.b3)]`.
    #[inline(always)]
    fn sxtb16_ror8(x: u32) -> u32 {
        let r: u32;
        // SAFETY: register-only instruction of ARMv7E-M.
        unsafe {
            asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x,
                 options(pure, nomem, nostack, preserves_flags));
        }
        r
    }

    /// Lane-wise 16-bit add (sets only the GE flags).
    #[inline(always)]
    fn sadd16(a: u32, b: u32) -> u32 {
        let r: u32;
        // SAFETY: register-only instruction of ARMv7E-M.
        unsafe {
            asm!("sadd16 {r}, {a}, {b}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b,
                 options(pure, nomem, nostack));
        }
        r
    }

    /// `acc + a.lo·b.lo + a.hi·b.hi` (signed 16×16; sets only the Q flag on overflow).
    #[inline(always)]
    fn smlad(a: u32, b: u32, acc: i32) -> i32 {
        let r: i32;
        // SAFETY: register-only instruction of ARMv7E-M.
        unsafe {
            asm!("smlad {r}, {a}, {b}, {acc}", r = lateout(reg) r, a = in(reg) a,
                 b = in(reg) b, acc = in(reg) acc, options(pure, nomem, nostack));
        }
        r
    }

    #[inline(always)]
    fn word(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    /// Widen `x − zp` into `xw` (layout in the module docs); returns the number of
    /// eight-input steps, the words past `x.len()` being zero.
    #[inline(always)]
    fn widen(x: &[i8], zero_point: i32, xw: &mut [MaybeUninit<u32>; WIDE_WORDS]) -> usize {
        let width = x.len();
        // SAFETY: i8 and u8 have the same layout.
        let bytes = unsafe { core::slice::from_raw_parts(x.as_ptr() as *const u8, width) };
        let offset = ((-zero_point) as u32 & 0xFFFF).wrapping_mul(0x0001_0001);
        // Word loads of the input bytes (one LDR each): x is in RAM at any alignment.
        let groups = width / 4;
        for (g, pair) in xw.chunks_exact_mut(2).take(groups).enumerate() {
            let w = word(bytes, 4 * g);
            pair[0].write(sadd16(sxtb16(w), offset));
            pair[1].write(sadd16(sxtb16_ror8(w), offset));
        }
        let steps = width.div_ceil(8);
        let lane = |i: usize| -> u32 {
            if i < width {
                (x[i] as i32 - zero_point) as u16 as u32
            } else {
                0
            }
        };
        for g in groups..2 * steps {
            let b = 4 * g;
            xw[2 * g].write(lane(b) | lane(b + 2) << 16);
            xw[2 * g + 1].write(lane(b + 1) | lane(b + 3) << 16);
        }
        steps
    }

    /// One row exactly: SMLAD over whole groups of four, then scalar.
    #[inline(always)]
    fn dot_row(row: &[u8], xw: &[u32], x: &[i8], zero_point: i32) -> i32 {
        let groups = row.len() / 4;
        let mut acc = 0i32;
        for (w, pair) in row.chunks_exact(4).zip(xw[..2 * groups].chunks_exact(2)) {
            let w = word(w, 0);
            acc = smlad(sxtb16(w), pair[0], acc);
            acc = smlad(sxtb16_ror8(w), pair[1], acc);
        }
        for i in 4 * groups..row.len() {
            acc += (row[i] as i8 as i32) * (x[i] as i32 - zero_point);
        }
        acc
    }

    /// One group: inputs `4g..4g+4` of rows 0–3 (row 1 at `p0 + width`, row 2 at
    /// `p0 + 2·width`, row 3 at `p3`); advances `xp` by 8 bytes and `p0`, `p3` by 4.
    macro_rules! group {
        () => {
            concat!(
                "ldrd {xa}, {xb}, [{xp}], #8\n",
                "ldr {w}, [{p0}, {s}]\n",
                "sxtb16 {t}, {w}\n",
                "sxtb16 {w}, {w}, ror #8\n",
                "smlad {a1}, {t}, {xa}, {a1}\n",
                "smlad {a1}, {w}, {xb}, {a1}\n",
                "ldr {w}, [{p0}, {s}, lsl #1]\n",
                "sxtb16 {t}, {w}\n",
                "sxtb16 {w}, {w}, ror #8\n",
                "smlad {a2}, {t}, {xa}, {a2}\n",
                "smlad {a2}, {w}, {xb}, {a2}\n",
                "ldr {w}, [{p3}], #4\n",
                "sxtb16 {t}, {w}\n",
                "sxtb16 {w}, {w}, ror #8\n",
                "smlad {a3}, {t}, {xa}, {a3}\n",
                "smlad {a3}, {w}, {xb}, {a3}\n",
                "ldr {w}, [{p0}], #4\n",
                "sxtb16 {t}, {w}\n",
                "sxtb16 {w}, {w}, ror #8\n",
                "smlad {a0}, {t}, {xa}, {a0}\n",
                "smlad {a0}, {w}, {xb}, {a0}"
            )
        };
    }

    /// Four consecutive rows starting at `p0`, `steps` × 8 inputs each.
    ///
    /// # Safety
    /// `steps ≥ 1`; `p0 .. p0 + 3·width + 8·steps` readable; `xw` holds `4·steps`
    /// initialized words (Arm has no alignment requirement for LDR; LDRD needs 4).
    #[inline(always)]
    unsafe fn rows4(p0: *const u8, width: usize, xw: *const u32, steps: usize) -> [i32; 4] {
        let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
        let p3 = p0.add(3 * width);
        let end = xw.add(4 * steps);
        // Twelve live registers, so `end` goes to the stack for the loop test. One group
        // (4 rows × 4 inputs = 16 MACs) is LDRD + 4 LDR + 8 SXTB16 + 8 SMLAD; the loop
        // body runs four groups (16 inputs) and is entered in the middle (label 3) when
        // the number of eight-input steps is odd.
        asm!(
            "push {{{end}}}",
            "sub {t}, {end}, {xp}",
            "tst {t}, #16",
            "bne 3f",
            "2:",
            group!(),
            group!(),
            "3:",
            group!(),
            group!(),
            "ldr {t}, [sp]",
            "cmp {xp}, {t}",
            "bne 2b",
            "add sp, sp, #4",
            end = in(reg) end,
            xp = inout(reg) xw => _,
            p0 = inout(reg) p0 => _,
            p3 = inout(reg) p3 => _,
            s = inout(reg) width => _,
            a0 = inout(reg) a0,
            a1 = inout(reg) a1,
            a2 = inout(reg) a2,
            a3 = inout(reg) a3,
            xa = lateout(reg) _,
            xb = lateout(reg) _,
            w = lateout(reg) _,
            t = lateout(reg) _,
            options(readonly),
        );
        [a0, a1, a2, a3]
    }

    #[inline(always)]
    pub fn dense(
        weights: &[u8],
        rows: usize,
        x: &[i8],
        zero_point: i32,
        mut emit: impl FnMut(usize, i32),
    ) {
        let width = x.len();
        let mut buffer = [MaybeUninit::<u32>::uninit(); WIDE_WORDS];
        let steps = widen(x, zero_point, &mut buffer);
        // SAFETY: `widen` initialized the first 4·steps words.
        let xw: &[u32] =
            unsafe { core::slice::from_raw_parts(buffer.as_ptr() as *const u32, 4 * steps) };
        let mut c = 0;
        while c < rows {
            let base = c * width;
            let (accs, n) = if c + 4 > rows {
                let row = &weights[base..base + width];
                ([dot_row(row, xw, x, zero_point), 0, 0, 0], 1)
            } else if steps > 0 && base + 3 * width + 8 * steps <= weights.len() {
                // The four-row loop runs whole steps of eight inputs: past a row's end it
                // reads the next row's first weights, which meet zero input words. Only the
                // last block of a matrix whose width is not a multiple of 8 would read past
                // the weights; it takes the exact path below.
                // SAFETY: bounds checked just above; `xw` has 4·steps words.
                let accs = unsafe { rows4(weights.as_ptr().add(base), width, xw.as_ptr(), steps) };
                (accs, 4)
            } else {
                let accs = core::array::from_fn(|r| {
                    let start = base + r * width;
                    dot_row(&weights[start..start + width], xw, x, zero_point)
                });
                (accs, 4)
            };
            // One call site, so the caller's per-channel code is inlined here.
            for (r, &acc) in accs[..n].iter().enumerate() {
                emit(c + r, acc);
            }
            c += n;
        }
    }
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

        #[test]
        fn dense_matches_reference(
            width in 0usize..=crate::MAX_WIDTH,
            rows in 1usize..12,
            zero_point in -128i32..=127,
            seed in any::<u64>(),
            extreme in any::<bool>(),
        ) {
            let mut rng = crate::noise::SplitMix64::new(seed);
            // `extreme`: only ±127 weights and ±128/127 inputs, the largest sums.
            let weights: Vec<u8> = (0..rows * width).map(|_| {
                let r = rng.next_u64();
                if extreme { if r & 1 == 0 { 127 } else { (-127i8) as u8 } }
                else { ((r % 255) as i32 - 127) as i8 as u8 }
            }).collect();
            let x: Vec<i8> = (0..width).map(|_| {
                let r = rng.next_u64();
                if extreme { if r & 1 == 0 { 127 } else { -128 } } else { r as i8 }
            }).collect();
            let mut expect = Vec::new();
            dense_reference(&weights, rows, &x, zero_point, |c, a| expect.push((c, a)));
            let mut got = Vec::new();
            dense(&weights, rows, &x, zero_point, |c, a| got.push((c, a)));
            prop_assert_eq!(&got, &expect);
            // Both x86-64 paths, whichever `dense` picked on this CPU.
            #[cfg(all(target_arch = "x86_64"))]
            for avx2 in [false, std::is_x86_feature_detected!("avx2")] {
                let mut got = Vec::new();
                imp::dense_with(&weights, rows, &x, zero_point, |c, a| got.push((c, a)), avx2);
                prop_assert_eq!(&got, &expect);
            }
        }
    }

    #[test]
    fn out_of_range_zero_points_take_the_reference_path() {
        let (w, x) = ([100u8, 200, 3], [-128i8, 127, 5]);
        for zp in [-70_000, 40_000, i32::MIN / 1024] {
            assert_eq!(dot(&w, &x, zp), dot_reference(&w, &x, zp));
        }
    }
}
