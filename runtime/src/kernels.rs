//! Integer kernels.
//!
//! The one kernel the policy needs is the int8 × int16 dot product: `Σ_i w[i] · x[i]`
//! with int8 weights `w`, int16 activations `x` and an int32 result, for every row of a
//! layer's weight matrix (the "16x8" scheme of TFLite Micro and CMSIS-NN); layers whose
//! blob stores int16 weights ([`Weights::Int16`], the first and output layers by default)
//! take an int16 × int16 variant of each path.
//!
//! Two implementations, one result:
//! - [`dot_reference`] / [`dense_reference`] state the arithmetic: a plain scalar loop.
//! - [`dot`] / [`dense`] are what the policy calls. On x86-64 an SSE2 loop (`pmaddwd`)
//!   runs four output rows per pass (AVX2 and AVX-512 VNNI where the CPU has them),
//!   elsewhere a loop the compiler vectorizes. On Arm (`cfg(target_arch = "arm")`, the
//!   Cortex-M4 firmware) they run the CMSIS-NN scheme: the int16 input is repacked once
//!   per layer into lane pairs (`PKHBT`/`PKHTB`), and the weights, read four at a time,
//!   are sign-extended into int16 lanes (`SXTB16`, `SXTB16 ROR #8`) and multiplied with
//!   dual 16-bit MACs (`SMLAD`), four output rows per pass so each input word is loaded
//!   once per four rows.
//!
//! A hidden layer is [`dense_requantize`] (spec: [`dense_requantize_reference`]): the sums
//! plus the per-channel bias, requantization to an int16 pre-activation and the
//! interpolated activation table of [`OutputStage`]. On the Cortex-M4 its whole blocks of
//! four rows run in one assembly loop that keeps the bias, the requantization
//! (`quant::requantize`, `SMLAL`-based) and the table interpolation in registers;
//! elsewhere it is [`dense_chunks`] + `quant::requantize_into`.
//!
//! Both are exact integer arithmetic, so they equal the reference bit for bit: host
//! property tests compare them on random inputs, and the firmware in QEMU runs the Arm
//! path against the host's answers (`tests/tests/firmware_qemu.rs`).
//!
//! The sums are exact in int32 for every blob the parser accepts: it refuses a row whose
//! `Σ|w| · 32767 + |bias|` exceeds `i32::MAX` (activations stay within ±32767), and every
//! partial sum of the SIMD paths is bounded by the same total. For other inputs the
//! kernels wrap (two's complement) the same way, so they still agree with the reference.

/// A dense layer's weight matrix as the blob stores it: row-major codes, one byte each
/// (int8) or two (int16 little-endian). int16 weights suit a layer with few inputs of very
/// different ranges (the first layer): the accumulator bound then limits their scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights<'a> {
    Int8(&'a [u8]),
    Int16(&'a [u8]),
}

impl<'a> Weights<'a> {
    /// The matrix for `bytes_per_weight` (1 or 2), else `InvalidValue`.
    pub fn new(bytes_per_weight: u8, bytes: &'a [u8]) -> Result<Self, crate::BlobError> {
        match bytes_per_weight {
            1 => Ok(Weights::Int8(bytes)),
            2 => Ok(Weights::Int16(bytes)),
            _ => Err(crate::BlobError::InvalidValue),
        }
    }

    /// [`Weights::new`] for a validated blob (anything but 2 reads as int8).
    pub fn of(bytes_per_weight: u8, bytes: &'a [u8]) -> Self {
        if bytes_per_weight == 2 {
            Weights::Int16(bytes)
        } else {
            Weights::Int8(bytes)
        }
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        match self {
            Weights::Int8(b) => b.len(),
            Weights::Int16(b) => b.len() / 2,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Weight `k` (row-major index).
    #[inline]
    pub fn get(&self, k: usize) -> i32 {
        match self {
            Weights::Int8(b) => b[k] as i8 as i32,
            Weights::Int16(b) => i16::from_le_bytes([b[2 * k], b[2 * k + 1]]) as i32,
        }
    }
}

/// The specification: a plain loop over the weights and int16 inputs, two's-complement
/// (wrapping) int32 sums. `row` is the weights' row index (rows are `inputs.len()` long).
pub fn dot_reference(weights: Weights<'_>, row: usize, inputs: &[i16]) -> i32 {
    let width = inputs.len();
    let mut acc: i32 = 0;
    for (i, &x) in inputs.iter().enumerate() {
        acc = acc.wrapping_add(weights.get(row * width + i).wrapping_mul(x as i32));
    }
    acc
}

/// The specification of a dense layer: `emit(c, dot_reference(weights, c, x))` for each
/// of the `rows` rows of the row-major `weights` (`rows × x.len()` weights).
pub fn dense_reference(
    weights: Weights<'_>,
    rows: usize,
    x: &[i16],
    mut emit: impl FnMut(usize, i32),
) {
    assert_eq!(
        weights.len(),
        rows * x.len(),
        "weights must be rows × inputs"
    );
    for c in 0..rows {
        emit(c, dot_reference(weights, c, x));
    }
}

/// The dot product on the optimized path; equals [`dot_reference`] of row 0.
#[inline]
pub fn dot(weights: Weights<'_>, inputs: &[i16]) -> i32 {
    let mut out = 0;
    dense(weights, 1, inputs, |_, acc| out = acc);
    out
}

/// Most accumulators [`dense_chunks`] hands over at once.
pub const CHUNK: usize = 32;

/// The dense layer the policy calls; emits exactly what [`dense_reference`] emits, in
/// the same order.
#[inline]
pub fn dense(weights: Weights<'_>, rows: usize, x: &[i16], mut emit: impl FnMut(usize, i32)) {
    dense_chunks(weights, rows, x, |c0, accs| {
        for (r, &acc) in accs.iter().enumerate() {
            emit(c0 + r, acc);
        }
    })
}

/// [`dense`] in runs of consecutive rows: `emit(c0, accs)` gives the sums of rows
/// `c0 .. c0 + accs.len()` (1 to [`CHUNK`] of them), in order, covering `0..rows`. The
/// caller's per-channel code then runs as its own tight loop.
#[inline]
pub fn dense_chunks(weights: Weights<'_>, rows: usize, x: &[i16], emit: impl FnMut(usize, &[i32])) {
    assert_eq!(
        weights.len(),
        rows * x.len(),
        "weights must be rows × inputs"
    );
    if x.len() > crate::MAX_WIDTH {
        // Wider than the kernels' buffers: the policy never gets here.
        let mut emit = emit;
        return dense_reference(weights, rows, x, |c, acc| emit(c, &[acc]));
    }
    match weights {
        Weights::Int8(w) => imp::dense_chunks(w, rows, x, emit),
        Weights::Int16(w) => imp::dense_chunks_w16(w, rows, x, emit),
    }
}

/// A hidden layer's per-channel output stage (docs/blob.md): for channel `c`,
/// `y[c] = interpolate(table, sat16(requantize(acc[c] +wrap bias[c], m[c], shift[c])))`.
/// The byte arrays are the blob's (no alignment): `biases` and `multipliers` hold an i32 LE
/// per channel, `shifts` an i8, `table` the 513 int16 LE entries. What the parser accepts
/// is assumed: `m ≥ 0` and `shift` in [`crate::quant::SHIFT_RANGE`] (other values give
/// unspecified codes, never unsafety).
#[derive(Clone, Copy, Debug)]
pub struct OutputStage<'a> {
    pub biases: &'a [u8],
    pub multipliers: &'a [u8],
    pub shifts: &'a [u8],
    pub table: &'a [u8; crate::quant::TABLE_BYTES],
}

/// The specification of a hidden layer: [`dense_reference`], then per channel the bias
/// (wrapping add), the single-rounding `requantize`, int16 saturation and the
/// interpolated table.
pub fn dense_requantize_reference(
    weights: Weights<'_>,
    rows: usize,
    x: &[i16],
    stage: &OutputStage<'_>,
    y: &mut [i16],
) {
    use crate::blob::i32_at;
    use crate::quant::{interpolate, requantize, saturate_i16};
    dense_reference(weights, rows, x, |c, acc| {
        let acc = acc.wrapping_add(i32_at(stage.biases, c));
        let shift = stage.shifts[c] as i8 as i32;
        let pre = requantize(acc, i32_at(stage.multipliers, c), shift);
        y[c] = interpolate(stage.table, saturate_i16(pre));
    });
}

/// The hidden layer the policy calls: `y[..rows]` exactly as
/// [`dense_requantize_reference`] writes it. On the Cortex-M4 whole blocks of four rows
/// run in one assembly loop (sums, bias, requantization and table interpolation in
/// registers); elsewhere [`dense_chunks`] and [`crate::quant::requantize_into`].
#[inline]
pub fn dense_requantize(
    weights: Weights<'_>,
    rows: usize,
    x: &[i16],
    stage: &OutputStage<'_>,
    y: &mut [i16],
) {
    assert_eq!(
        weights.len(),
        rows * x.len(),
        "weights must be rows × inputs"
    );
    assert!(
        stage.biases.len() >= 4 * rows
            && stage.multipliers.len() >= 4 * rows
            && stage.shifts.len() >= rows
            && y.len() >= rows,
        "output stage shorter than the layer"
    );
    if x.len() > crate::MAX_WIDTH {
        // Wider than the kernels' buffers: the policy never gets here.
        return dense_requantize_reference(weights, rows, x, stage, y);
    }
    match weights {
        Weights::Int8(w) => imp::dense_requantize(w, rows, x, stage, y),
        Weights::Int16(w) => imp::dense_requantize_w16(w, rows, x, stage, y),
    }
}

/// [`crate::quant::requantize_into`] for the rows `c0 .. c0 + accs.len()` of `stage`.
#[inline(always)]
fn requantize_rows(stage: &OutputStage<'_>, c0: usize, accs: &[i32], y: &mut [i16]) {
    crate::quant::requantize_into(
        accs,
        &stage.biases[4 * c0..],
        &stage.multipliers[4 * c0..],
        &stage.shifts[c0..],
        stage.table,
        &mut y[c0..],
    );
}

/// Host (and any non-Arm target): copy `x` into a zero-padded int16 buffer once per layer,
/// then the rows in chunks of up to [`CHUNK`]. On x86-64, four rows per pass share each load of the widened
/// input: `pmaddwd` (SSE2, always), `vpmovsxbw` + `vpmaddwd` (AVX2) or `vpmovsxbw` +
/// `vpdpwssd` (AVX-512 VNNI), the latter two detected at run time in `std` builds.
/// Elsewhere one wrapping reduction per row that the compiler vectorizes. Wrapping
/// operations only, so that overflow checks (debug builds) do not block vectorization;
/// the bound in the module docs makes them exact.
#[cfg(not(target_arch = "arm"))]
mod imp {
    use super::CHUNK;
    use crate::MAX_WIDTH;

    /// The chunk driver of the SSE2 and AVX2 kernels: complete blocks of four rows through
    /// the calling module's `rows4`, the rest of the rows through `dot_widened`; a width-0
    /// layer sums to 0.
    macro_rules! four_rows_at_a_time {
        ($block:expr, $width:expr, $xw:expr, $out:expr) => {{
            let (block, width, out) = ($block, $width, $out);
            let xw = &$xw[..width];
            let mut r = 0;
            for (o, rows) in out
                .chunks_exact_mut(4)
                .zip(block.chunks_exact(4 * width.max(1)))
            {
                o.copy_from_slice(&rows4(rows, width, xw));
                r += 4;
            }
            for (o, row) in out[r..]
                .iter_mut()
                .zip(block[r * width..].chunks_exact(width.max(1)))
            {
                *o = super::dot_widened(row, xw);
            }
            if width == 0 {
                out.fill(0);
            }
        }};
    }

    /// Which x86-64 kernel runs (tests run every one the CPU has).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[cfg_attr(not(any(test, feature = "std")), allow(dead_code))]
    pub(super) enum Level {
        Sse2,
        Avx2,
        Avx512,
    }

    impl Level {
        /// The kernels this CPU can run, slowest first.
        #[cfg(test)]
        pub(super) fn available() -> impl Iterator<Item = Level> {
            [Level::Sse2, Level::Avx2, Level::Avx512]
                .into_iter()
                .filter(|&l| l <= best())
        }
    }

    impl PartialOrd for Level {
        fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
            (*self as u8).partial_cmp(&(*other as u8))
        }
    }

    /// The fastest kernel this CPU has, where `std` can tell (runtime detection, cached by
    /// `std`); SSE2 otherwise.
    #[inline]
    fn best() -> Level {
        #[cfg(all(target_arch = "x86_64", any(test, feature = "std")))]
        {
            if std::is_x86_feature_detected!("avx512vnni")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512f")
            {
                return Level::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") {
                return Level::Avx2;
            }
        }
        Level::Sse2
    }

    #[inline]
    pub fn dense_chunks(weights: &[u8], rows: usize, x: &[i16], emit: impl FnMut(usize, &[i32])) {
        dense_chunks_with(weights, rows, x, emit, best())
    }

    #[inline]
    pub fn dense_requantize(
        weights: &[u8],
        rows: usize,
        x: &[i16],
        stage: &super::OutputStage<'_>,
        y: &mut [i16],
    ) {
        dense_requantize_with(weights, rows, x, stage, y, best())
    }

    /// [`dense_requantize`] with the kernel chosen by the caller (tests run all of them).
    #[inline]
    pub(super) fn dense_requantize_with(
        weights: &[u8],
        rows: usize,
        x: &[i16],
        stage: &super::OutputStage<'_>,
        y: &mut [i16],
        level: Level,
    ) {
        let emit = |c0, accs: &[i32]| super::requantize_rows(stage, c0, accs, y);
        dense_chunks_with(weights, rows, x, emit, level)
    }

    /// [`dense_chunks`] with the kernel chosen by the caller (tests run all of them).
    #[inline]
    pub(super) fn dense_chunks_with(
        weights: &[u8],
        rows: usize,
        x: &[i16],
        mut emit: impl FnMut(usize, &[i32]),
        level: Level,
    ) {
        let _ = level;
        let width = x.len();
        // Zero past `width`: the AVX-512 kernel reads whole 32-input blocks of it.
        let mut xw = [0i16; MAX_WIDTH];
        xw[..width].copy_from_slice(x);
        let mut accs = [0i32; CHUNK];
        let mut c = 0;
        while c < rows {
            let n = CHUNK.min(rows - c);
            let block = &weights[c * width..(c + n) * width];
            let out = &mut accs[..n];
            #[cfg(target_arch = "x86_64")]
            match level {
                #[cfg(any(test, feature = "std"))]
                // SAFETY: `best` (or the test) checked that the CPU has these features.
                Level::Avx512 => unsafe { avx512::chunk(block, width, &xw, out) },
                #[cfg(any(test, feature = "std"))]
                // SAFETY: as above.
                Level::Avx2 => unsafe { avx2::chunk(block, width, &xw, out) },
                _ => sse2::chunk(block, width, &xw, out),
            }
            #[cfg(not(target_arch = "x86_64"))]
            for (o, row) in out.iter_mut().zip(block.chunks_exact(width.max(1))) {
                *o = dot_widened(row, &xw[..width]);
            }
            emit(c, out);
            c += n;
        }
    }

    /// int16 weights (a narrow first layer): one wrapping reduction per row of
    /// int16 × int16 products, which the compiler vectorizes (`pmaddwd` on x86-64).
    #[inline]
    pub fn dense_chunks_w16(
        weights: &[u8],
        rows: usize,
        x: &[i16],
        mut emit: impl FnMut(usize, &[i32]),
    ) {
        let width = x.len();
        let mut accs = [0i32; CHUNK];
        let mut c = 0;
        while c < rows {
            let n = CHUNK.min(rows - c);
            let block = &weights[2 * c * width..2 * (c + n) * width];
            for (o, row) in accs[..n]
                .iter_mut()
                .zip(block.chunks_exact(2 * width.max(1)))
            {
                *o = row.chunks_exact(2).zip(x).fold(0i32, |acc, (w, &x)| {
                    acc.wrapping_add(
                        (i16::from_le_bytes([w[0], w[1]]) as i32).wrapping_mul(x as i32),
                    )
                });
            }
            if width == 0 {
                accs[..n].fill(0);
            }
            emit(c, &accs[..n]);
            c += n;
        }
    }

    #[inline]
    pub fn dense_requantize_w16(
        weights: &[u8],
        rows: usize,
        x: &[i16],
        stage: &super::OutputStage<'_>,
        y: &mut [i16],
    ) {
        let emit = |c0, accs: &[i32]| super::requantize_rows(stage, c0, accs, y);
        dense_chunks_w16(weights, rows, x, emit)
    }

    /// x86-64 with AVX-512 F/BW/VL/VNNI (detected at run time): 32 int8 weights
    /// sign-extended in one `vpmovsxbw`, 32 products added into 16 int32 lanes per
    /// `vpdpwssd` (exact: each pair sum is at most 2 · 128 · 32768, no saturation in this
    /// form). The last partial block of a row is a masked load (nothing past the row is
    /// read); the widened input is zero there.
    #[cfg(all(target_arch = "x86_64", any(test, feature = "std")))]
    mod avx512 {
        use core::arch::x86_64::*;

        /// Sums of the `out.len()` rows of `block` (`width` bytes each) against `xw`.
        ///
        /// # Safety
        /// The CPU must support AVX-512 F, BW, VL and VNNI.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
        pub unsafe fn chunk(
            block: &[u8],
            width: usize,
            xw: &[i16; crate::MAX_WIDTH],
            out: &mut [i32],
        ) {
            assert!(block.len() == out.len() * width);
            let steps = width.div_ceil(32);
            // Mask of the valid weight bytes in the last 32-input block.
            let last: __mmask32 = match width % 32 {
                0 => !0,
                r => (1u32 << r) - 1,
            };
            let mut r = 0;
            while r + 4 <= out.len() {
                let base = block.as_ptr().add(r * width);
                let mut acc = [_mm512_setzero_si512(); 4];
                for k in 0..steps {
                    // Within xw: 32·steps ≤ MAX_WIDTH since width ≤ MAX_WIDTH.
                    let xv = _mm512_loadu_si512(xw.as_ptr().add(32 * k) as *const _);
                    let mask = if k + 1 == steps { last } else { !0 };
                    for (j, a) in acc.iter_mut().enumerate() {
                        // Masked: reads only bytes of row r + j.
                        let w = _mm256_maskz_loadu_epi8(
                            mask,
                            base.add(j * width + 32 * k) as *const i8,
                        );
                        *a = _mm512_dpwssd_epi32(*a, _mm512_cvtepi8_epi16(w), xv);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    out[r + j] = _mm512_reduce_add_epi32(*a);
                }
                r += 4;
            }
            while r < out.len() {
                let base = block.as_ptr().add(r * width);
                let mut acc = _mm512_setzero_si512();
                for k in 0..steps {
                    let xv = _mm512_loadu_si512(xw.as_ptr().add(32 * k) as *const _);
                    let mask = if k + 1 == steps { last } else { !0 };
                    let w = _mm256_maskz_loadu_epi8(mask, base.add(32 * k) as *const i8);
                    acc = _mm512_dpwssd_epi32(acc, _mm512_cvtepi8_epi16(w), xv);
                }
                out[r] = _mm512_reduce_add_epi32(acc);
                r += 1;
            }
        }
    }

    /// x86-64 with AVX2 (detected at run time): as [`sse2`], sixteen int8 weights
    /// sign-extended in one `vpmovsxbw`, sixteen products per `vpmaddwd`.
    #[cfg(all(target_arch = "x86_64", any(test, feature = "std")))]
    mod avx2 {
        use core::arch::x86_64::*;

        /// Sums of the `out.len()` rows of `block` (`width` bytes each) against `xw`.
        ///
        /// # Safety
        /// The CPU must support AVX2.
        #[target_feature(enable = "avx2")]
        pub unsafe fn chunk(
            block: &[u8],
            width: usize,
            xw: &[i16; crate::MAX_WIDTH],
            out: &mut [i32],
        ) {
            four_rows_at_a_time!(block, width, xw, out);
        }

        /// The four rows of `block` (`4 × width` bytes) against `xw` (`width` int16).
        #[inline(always)]
        unsafe fn rows4(block: &[u8], width: usize, xw: &[i16]) -> [i32; 4] {
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
            // Horizontal sums of the four accumulators at once.
            let s01 = _mm256_hadd_epi32(acc[0], acc[1]);
            let s23 = _mm256_hadd_epi32(acc[2], acc[3]);
            let s = _mm256_hadd_epi32(s01, s23);
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let mut sums = [0i32; 4];
            _mm_storeu_si128(sums.as_mut_ptr() as *mut __m128i, s);
            core::array::from_fn(|r| {
                let row = &block[r * width..(r + 1) * width];
                row[full..]
                    .iter()
                    .zip(&xw[full..])
                    .fold(sums[r], |s, (&w, &x)| {
                        s.wrapping_add((w as i8 as i32).wrapping_mul(x as i32))
                    })
            })
        }
    }

    /// x86-64: SSE2 (part of the base ISA, so no feature detection). Four rows per pass
    /// share each load of the widened input; the weights are sign-extended to int16 by
    /// unpacking each byte with itself and shifting right by 8, and `pmaddwd` multiplies
    /// eight int16 pairs and adds adjacent products into int32 lanes (exact: each pair
    /// sum is at most 2 · 128 · 32768).
    #[cfg(target_arch = "x86_64")]
    mod sse2 {
        use core::arch::x86_64::*;

        // SAFETY (every `unsafe` block of register-only intrinsics below): SSE2 is part
        // of the x86-64 base ISA, so these instructions exist on every x86-64 CPU.

        /// Sums of the `out.len()` rows of `block` (`width` bytes each) against `xw`.
        #[inline(always)]
        pub fn chunk(block: &[u8], width: usize, xw: &[i16; crate::MAX_WIDTH], out: &mut [i32]) {
            four_rows_at_a_time!(block, width, xw, out);
        }

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
        fn rows4(block: &[u8], width: usize, xw: &[i16]) -> [i32; 4] {
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

    #[inline(always)]
    fn dot_widened(row: &[u8], xw: &[i16]) -> i32 {
        row.iter().zip(xw).fold(0i32, |acc, (&w, &x)| {
            acc.wrapping_add((w as i8 as i32).wrapping_mul(x as i32))
        })
    }
}

/// Cortex-M4 (ARMv7E-M DSP extension): SXTB16 / SADD16 / SMLAD, as CMSIS-NN's
/// `arm_nn_vec_mat_mult_t_s16` with `read_and_pad`.
///
/// Layout of the repacked input, per group of four inputs `x0..x3` (int16): word `2g`
/// holds the lanes `[x0, x2]` (low, high), word `2g + 1` holds `[x1, x3]`. A
/// little-endian weight word `w = [w0, w1, w2, w3]` gives `SXTB16(w) = [w0, w2]` and
/// `SXTB16(w, ROR #8) = [w1, w3]`, so two `SMLAD`s add `w0·x0 + w2·x2 + w1·x1 + w3·x3`.
/// The last group of a width that is not a multiple of four is padded with zero lanes.
///
/// Four output rows per pass share each load of the repacked input: two groups of four
/// inputs for four rows (32 MACs) are one `LDM` of four input words + 8 `LDR` + 16
/// `SXTB16` + 16 `SMLAD` (1.28 instructions per MAC). The pass is one straight-line body
/// of [`PAIRS`] such double groups (the widest layer) in `global_asm!`, entered
/// `PAIRS − pairs` double groups from its start (every instruction has a 32-bit encoding,
/// so each is exactly [`PAIR_BYTES`] long), through a trampoline that pushes the return
/// address (the body needs LR for data) and left with `POP {PC}`: no loop counter, no
/// per-layer code copies. The input is padded with zero lanes to a whole number of double
/// groups. Leftover rows, and the last block of a matrix whose padded reads would pass the
/// end of the weights, take an exact SMLAD + scalar loop per row.
///
/// int16 weights skip the sign extension: the input is copied as natural-order pairs
/// (`[x0, x1]`, `[x2, x3]`) and a word of two weights feeds one `SMLAD` (16 MACs are one
/// `LDRD`, 8 `LDR` and 8 `SMLAD`), in a four-row body of its own for up to 256 inputs.
#[cfg(target_arch = "arm")]
mod imp {
    use core::arch::{asm, global_asm};
    use core::mem::MaybeUninit;

    use crate::MAX_WIDTH;

    /// Groups of four inputs in the widest layer.
    const GROUPS: usize = MAX_WIDTH / 4;
    /// Double groups (eight inputs) in the widest layer: the four-row body has one each.
    const PAIRS: usize = GROUPS / 2;
    /// Bytes of machine code per double group of the four-row pass: 41 instructions of 4
    /// bytes.
    const PAIR_BYTES: usize = 164;
    /// Words of the repacked input: two per group.
    const WIDE_WORDS: usize = 2 * GROUPS;

    // The `.rept` counts and size checks below are literals.
    const _: () = assert!(PAIRS == 64 && PAIRS * PAIR_BYTES == 10496);

    /// Four inputs of rows 0–3 with the input words `$a` (`[x0, x2]`) and `$b`
    /// (`[x1, x3]`). Registers: r1 row 0 (row 1 at `r1 + r3`, row 2 at `r1 + 2·r3`), r2
    /// row 3, r3 the width; accumulators r4, r5, r9, r8 for rows 0–3; r6, r12 scratch.
    /// Advances r1 and r2 by 4. `.w` forces the 32-bit encoding of the only instruction
    /// that has a 16-bit one.
    macro_rules! quad {
        ($a:literal, $b:literal) => {
            concat!(
                "ldr.w r6, [r1, r3]\n",
                "sxtb16 r12, r6\n",
                "sxtb16 r6, r6, ror #8\n",
                "smlad r5, r12, ",
                $a,
                ", r5\n",
                "smlad r5, r6, ",
                $b,
                ", r5\n",
                "ldr.w r6, [r1, r3, lsl #1]\n",
                "sxtb16 r12, r6\n",
                "sxtb16 r6, r6, ror #8\n",
                "smlad r9, r12, ",
                $a,
                ", r9\n",
                "smlad r9, r6, ",
                $b,
                ", r9\n",
                "ldr.w r6, [r2], #4\n",
                "sxtb16 r12, r6\n",
                "sxtb16 r6, r6, ror #8\n",
                "smlad r8, r12, ",
                $a,
                ", r8\n",
                "smlad r8, r6, ",
                $b,
                ", r8\n",
                "ldr.w r6, [r1], #4\n",
                "sxtb16 r12, r6\n",
                "sxtb16 r6, r6, ror #8\n",
                "smlad r4, r12, ",
                $a,
                ", r4\n",
                "smlad r4, r6, ",
                $b,
                ", r4\n",
            )
        };
    }

    /// One double group: inputs `8p..8p+8` of rows 0–3, its four input words loaded at
    /// once from r0 (advanced by 16 bytes) into r7, r10, r11 and lr.
    macro_rules! pair {
        () => {
            concat!(
                "ldm.w r0!, {{r7, r10, r11, lr}}\n",
                quad!("r7", "r10"),
                quad!("r11", "lr"),
            )
        };
    }

    // The four-row pass: `PAIRS` double groups, then return. Entered at the double group
    // where a layer's inputs start with the return address pushed (see `rows4`); clobbers
    // r0–r2, r6, r7, r10–r12 and lr.
    global_asm!(
        ".pushsection .text.__flame_runtime_rows4,\"ax\",%progbits",
        ".syntax unified",
        ".thumb",
        ".p2align 2",
        ".global __flame_runtime_rows4",
        ".hidden __flame_runtime_rows4",
        ".type __flame_runtime_rows4, %function",
        ".thumb_func",
        "__flame_runtime_rows4:",
        ".rept 64",
        pair!(),
        ".endr",
        "pop {{pc}}",
        ".size __flame_runtime_rows4, . - __flame_runtime_rows4",
        // Fails to assemble if the body outgrew 64 × 164 bytes (+ `POP {PC}`); a shorter
        // body would show in every QEMU test (wrong sums).
        ".org __flame_runtime_rows4 + 10496 + 2",
        ".popsection",
    );

    /// Groups of four inputs the int16-weight four-row body covers: 256 inputs (int16
    /// weights are for the narrow first layer and the output layer; a wider int16 layer
    /// takes the exact row path). Half the widest layer halves the body's flash.
    const W16_GROUPS: usize = 64;
    /// Bytes of machine code per group of the int16-weight four-row pass: 17 instructions.
    const GROUP_W16_BYTES: usize = 68;
    const _: () = assert!(W16_GROUPS * GROUP_W16_BYTES == 4352);

    /// Four inputs of rows 0–3 with int16 weights: r0 the natural-order input pairs
    /// (`[x0, x1]`, `[x2, x3]`, advanced by 8 bytes), r1 row 0 (rows 1, 2 at `r1 + r3`,
    /// `r1 + 2·r3`, r3 the row stride in bytes), r2 row 3; a weight word holds two int16
    /// weights, so each `LDR` feeds one `SMLAD` directly.
    macro_rules! group_w16 {
        () => {
            concat!(
                "ldrd r10, r11, [r0], #8\n",
                "ldr.w r6, [r1, r3]\n",
                "smlad r5, r6, r10, r5\n",
                "ldr.w r6, [r1, r3, lsl #1]\n",
                "smlad r9, r6, r10, r9\n",
                "ldr.w r6, [r2], #4\n",
                "smlad r8, r6, r10, r8\n",
                "ldr.w r6, [r1], #4\n",
                "smlad r4, r6, r10, r4\n",
                "ldr.w r6, [r1, r3]\n",
                "smlad r5, r6, r11, r5\n",
                "ldr.w r6, [r1, r3, lsl #1]\n",
                "smlad r9, r6, r11, r9\n",
                "ldr.w r6, [r2], #4\n",
                "smlad r8, r6, r11, r8\n",
                "ldr.w r6, [r1], #4\n",
                "smlad r4, r6, r11, r4\n",
            )
        };
    }

    // The int16-weight four-row pass, entered and left as the int8 one (through the
    // trampoline, returning with `POP {PC}`).
    global_asm!(
        ".pushsection .text.__flame_runtime_rows4_w16,\"ax\",%progbits",
        ".syntax unified",
        ".thumb",
        ".p2align 2",
        ".global __flame_runtime_rows4_w16",
        ".hidden __flame_runtime_rows4_w16",
        ".type __flame_runtime_rows4_w16, %function",
        ".thumb_func",
        "__flame_runtime_rows4_w16:",
        ".rept 64",
        group_w16!(),
        ".endr",
        "pop {{pc}}",
        ".size __flame_runtime_rows4_w16, . - __flame_runtime_rows4_w16",
        ".org __flame_runtime_rows4_w16 + 4352 + 2",
        ".popsection",
    );

    extern "C" {
        // Not callable from Rust (custom register interface); only their addresses are used.
        fn __flame_runtime_rows4();
        fn __flame_runtime_rows4_w16();
    }

    /// Address (Thumb bit set) at which the int16-weight four-row body runs `groups`
    /// groups; `None` past the body's [`W16_GROUPS`].
    #[inline(always)]
    fn entry_w16(groups: usize) -> Option<usize> {
        let skip = W16_GROUPS.checked_sub(groups)?;
        Some((__flame_runtime_rows4_w16 as *const () as usize | 1) + skip * GROUP_W16_BYTES)
    }

    /// Address (Thumb bit set) at which the four-row body runs `groups` groups (an even
    /// number).
    #[inline(always)]
    fn entry_w8(groups: usize) -> usize {
        debug_assert!(groups <= GROUPS && groups % 2 == 0);
        (__flame_runtime_rows4 as *const () as usize | 1) + (GROUPS - groups) / 2 * PAIR_BYTES
    }

    /// `Σ` over the groups of the four rows starting at `p0` (rows `width` bytes apart).
    ///
    /// # Safety
    /// `entry` from [`entry_w8`] or [`entry_w16`] for `groups` groups; the body's reads
    /// from `p0 .. p0 + 3·width` readable;
    /// `xw` holds `2·groups` initialized words (LDM needs 4-byte alignment).
    #[inline(always)]
    unsafe fn rows4(p0: *const u8, width: usize, xw: *const u32, entry: usize) -> [i32; 4] {
        let (a0, a1, a2, a3): (i32, i32, i32, i32);
        // r6 is LLVM's base pointer and r7 its frame pointer, so they cannot be operands:
        // saved around the call. `BL` to a trampoline that pushes the return address and
        // enters the body, which returns with `POP {PC}`.
        asm!(
            "push {{r6, r7}}",
            "bl 2f",
            "b 3f",
            "2:",
            "push {{lr}}",
            "bx r12",
            "3:",
            "pop {{r6, r7}}",
            inout("r0") xw => _,
            inout("r1") p0 => _,
            inout("r2") p0.wrapping_add(3 * width) => _,
            in("r3") width,
            inout("r4") 0i32 => a0,
            inout("r5") 0i32 => a1,
            inout("r9") 0i32 => a2,
            inout("r8") 0i32 => a3,
            out("r10") _,
            out("r11") _,
            inout("r12") entry => _,
            out("lr") _,
            options(readonly),
        );
        [a0, a1, a2, a3]
    }

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

    /// `f` on the input as `prepare` lays it out (`widen` for int8 weights, `pairs` for
    /// int16): a stack buffer of `2·groups` initialized words.
    #[inline(always)]
    fn with_input<R>(
        x: &[i16],
        prepare: fn(&[i16], &mut [MaybeUninit<u32>; WIDE_WORDS]) -> usize,
        f: impl FnOnce(&[u32]) -> R,
    ) -> R {
        let mut buffer = [MaybeUninit::<u32>::uninit(); WIDE_WORDS];
        let groups = prepare(x, &mut buffer);
        // SAFETY: `prepare` initialized the first 2·groups words.
        f(unsafe { core::slice::from_raw_parts(buffer.as_ptr() as *const u32, 2 * groups) })
    }

    /// `[a.lo, b.lo]` (`PKHBT`).
    #[inline(always)]
    fn pack_low(a: u32, b: u32) -> u32 {
        let r: u32;
        // SAFETY: register-only instruction of ARMv7E-M.
        unsafe {
            asm!("pkhbt {r}, {a}, {b}, lsl #16", r = lateout(reg) r, a = in(reg) a,
                 b = in(reg) b, options(pure, nomem, nostack, preserves_flags));
        }
        r
    }

    /// `[a.hi, b.hi]` (`PKHTB`).
    #[inline(always)]
    fn pack_high(a: u32, b: u32) -> u32 {
        let r: u32;
        // SAFETY: register-only instruction of ARMv7E-M.
        unsafe {
            asm!("pkhtb {r}, {b}, {a}, asr #16", r = lateout(reg) r, a = in(reg) a,
                 b = in(reg) b, options(pure, nomem, nostack, preserves_flags));
        }
        r
    }

    /// Repack `x` into `xw` (layout in the module docs); returns the number of groups of
    /// four inputs, even (whole double groups), the lanes past `x.len()` being zero.
    #[inline(always)]
    fn widen(x: &[i16], xw: &mut [MaybeUninit<u32>; WIDE_WORDS]) -> usize {
        let width = x.len().min(MAX_WIDTH);
        let full = width / 4;
        let src = x.as_ptr() as *const u32;
        for (g, pair) in xw.chunks_exact_mut(2).take(full).enumerate() {
            // SAFETY: inputs 4g..4g+4 of `x` (g < width / 4); two unaligned LDRs.
            let (a, b) = unsafe {
                (
                    src.add(2 * g).read_unaligned(),
                    src.add(2 * g + 1).read_unaligned(),
                )
            };
            pair[0].write(pack_low(a, b));
            pair[1].write(pack_high(a, b));
        }
        let groups = width.div_ceil(4);
        if groups > full {
            let lane = |i: usize| -> u32 {
                if i < width {
                    x[i] as u16 as u32
                } else {
                    0
                }
            };
            let b = 4 * full;
            xw[2 * full].write(lane(b) | lane(b + 2) << 16);
            xw[2 * full + 1].write(lane(b + 1) | lane(b + 3) << 16);
        }
        if groups % 2 == 1 {
            xw[2 * groups].write(0);
            xw[2 * groups + 1].write(0);
        }
        groups + groups % 2
    }

    /// One row exactly: SMLAD over whole groups of four, then scalar.
    #[inline(always)]
    fn dot_row(row: &[u8], xw: &[u32], x: &[i16]) -> i32 {
        let mut acc = 0i32;
        for (w, pair) in row.chunks_exact(4).zip(xw.chunks_exact(2)) {
            let w = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            acc = smlad(sxtb16(w), pair[0], acc);
            acc = smlad(sxtb16_ror8(w), pair[1], acc);
        }
        for i in row.len() / 4 * 4..row.len() {
            acc = acc.wrapping_add((row[i] as i8 as i32) * (x[i] as i32));
        }
        acc
    }

    #[inline(always)]
    pub fn dense_chunks(weights: &[u8], rows: usize, x: &[i16], emit: impl FnMut(usize, &[i32])) {
        with_input(x, widen, |xw| {
            chunks_from(weights, rows, xw, &passes_w8(weights, x, xw), 0, emit)
        })
    }

    /// How a matrix's rows are summed against a prepared input: the entry of its
    /// four-row body (`None`: every row takes the exact path), the bytes the body reads
    /// from a row's start, the bytes between rows, and the exact path (an `SMLAD` loop)
    /// for leftover rows and for rows whose padded read would pass the end of the
    /// weights. One-row bodies would save a few instructions per leftover row, at the cost
    /// of flash the shipped image does not have.
    struct Passes<F: Fn(usize) -> i32> {
        entry4: Option<usize>,
        read: usize,
        stride: usize,
        exact_row: F,
    }

    /// The rows `start..rows` in chunks (see [`super::dense_chunks`]) against the prepared
    /// input `xw`.
    #[inline(always)]
    fn chunks_from<F: Fn(usize) -> i32>(
        weights: &[u8],
        rows: usize,
        xw: &[u32],
        passes: &Passes<F>,
        start: usize,
        mut emit: impl FnMut(usize, &[i32]),
    ) {
        let (len, read, stride) = (weights.len(), passes.read, passes.stride);
        let mut accs = [0i32; super::CHUNK];
        let mut c = start;
        // Each row reads `read` bytes from its start: past a row's end (a width not a
        // multiple of the group) the next row's first weights, which meet zero input
        // lanes. Only the last rows of such a matrix would read past the weights: they
        // take the exact path.
        while c < rows {
            let mut n = 0;
            while let Some(entry4) = passes.entry4.filter(|_| {
                n < super::CHUNK && c + n + 4 <= rows && (c + n + 3) * stride + read <= len
            }) {
                // SAFETY: bounds checked just above; `xw` holds what the body reads.
                let block = unsafe {
                    rows4(
                        weights.as_ptr().add((c + n) * stride),
                        stride,
                        xw.as_ptr(),
                        entry4,
                    )
                };
                accs[n..n + 4].copy_from_slice(&block);
                n += 4;
            }
            if n == 0 {
                // Fewer than four rows left, the last rows of a ragged matrix, or no body.
                while n < super::CHUNK && c + n < rows {
                    accs[n] = (passes.exact_row)(c + n);
                    n += 1;
                }
            }
            emit(c, &accs[..n]);
            c += n;
        }
    }

    /// The int8 passes for `groups` groups of four inputs (even).
    fn passes_w8<'a>(
        weights: &'a [u8],
        x: &'a [i16],
        xw: &'a [u32],
    ) -> Passes<impl Fn(usize) -> i32 + 'a> {
        let (width, groups) = (x.len(), xw.len() / 2);
        Passes {
            entry4: Some(entry_w8(groups)),
            read: 4 * groups,
            stride: width,
            exact_row: move |r| dot_row(&weights[r * width..(r + 1) * width], xw, x),
        }
    }

    /// The int16 passes for `groups` groups of four inputs.
    fn passes_w16<'a>(
        weights: &'a [u8],
        x: &'a [i16],
        xw: &'a [u32],
    ) -> Passes<impl Fn(usize) -> i32 + 'a> {
        let (width, groups) = (x.len(), xw.len() / 2);
        Passes {
            entry4: entry_w16(groups),
            read: 8 * groups,
            stride: 2 * width,
            exact_row: move |r| dot_row_w16(&weights[2 * r * width..2 * (r + 1) * width], xw, x),
        }
    }

    /// One int16-weight row exactly: `SMLAD` of each word of two weights with the
    /// matching input pair, then the odd last input.
    #[inline(always)]
    fn dot_row_w16(row: &[u8], xw: &[u32], x: &[i16]) -> i32 {
        let mut acc = 0i32;
        for (w, &pair) in row.chunks_exact(4).zip(xw) {
            acc = smlad(u32::from_le_bytes([w[0], w[1], w[2], w[3]]), pair, acc);
        }
        if x.len() % 2 == 1 {
            let (i, w) = (x.len() - 1, &row[row.len() - 2..]);
            acc = acc.wrapping_add(i16::from_le_bytes([w[0], w[1]]) as i32 * x[i] as i32);
        }
        acc
    }

    /// Copy `x` into `xw` as int16 pairs in their natural order (`[x0, x1]`, `[x2, x3]`,
    /// what `SMLAD` multiplies with a word of two int16 weights), zero-padded to a whole
    /// group of four inputs; returns the number of groups.
    #[inline(always)]
    fn pairs(x: &[i16], xw: &mut [MaybeUninit<u32>; WIDE_WORDS]) -> usize {
        let width = x.len().min(MAX_WIDTH);
        let groups = width.div_ceil(4);
        let full = width / 2;
        let src = x.as_ptr() as *const u32;
        for (j, word) in xw.iter_mut().take(full).enumerate() {
            // SAFETY: inputs 2j, 2j + 1 of `x` (j < width / 2); one unaligned LDR.
            word.write(unsafe { src.add(j).read_unaligned() });
        }
        for (j, word) in xw.iter_mut().enumerate().take(2 * groups).skip(full) {
            // The odd last input, then zero lanes.
            let lane = 2 * j;
            word.write(if lane < width {
                x[lane] as u16 as u32
            } else {
                0
            });
        }
        groups
    }

    #[inline(always)]
    pub fn dense_chunks_w16(
        weights: &[u8],
        rows: usize,
        x: &[i16],
        emit: impl FnMut(usize, &[i32]),
    ) {
        with_input(x, pairs, |xw| {
            chunks_from(weights, rows, xw, &passes_w16(weights, x, xw), 0, emit)
        })
    }

    /// What [`layer4`] reads: the requantization state (words 0–5, loaded after each
    /// block's sums), the four-row pass's state (words 6–11, loaded before each block) and
    /// the end of the output. The assembly copies it to its stack frame and works there.
    #[repr(C)]
    struct Layer4 {
        multipliers: *const u8,
        shifts: *const u8,
        out: *mut i16,
        /// `&T[256]`, the middle of the activation table.
        table: *const u8,
        /// 64, the interpolation's rounding term.
        half: i32,
        one: u32,
        xw: *const u32,
        row: *const u8,
        biases: *const u8,
        width: usize,
        width3: usize,
        entry: usize,
        end: *mut i16,
    }

    // The pre-activation in `$x` (an i32) to the next output int16: saturate to int16,
    // then interpolate the table (`quant::interpolate`): with u = pre + 32768, k = u >> 7
    // is 256 + (pre >> 7) and f = u & 127 = pre & 127, so r3 points at T[256] and the
    // signed index pre >> 7 reaches T[k]; one unaligned LDR for T[k] and T[k+1],
    // y = T[k] + (slope·f + 64) >> 7. Registers: r2 output (advanced), r3 = &T[256],
    // r6 = 64; r10, r12 and lr scratch.
    #[rustfmt::skip]
    macro_rules! lut {
        ($x:literal) => {
            concat!(
                "ssat ", $x, ", #16, ", $x, "\n",        // sat16(pre)
                "asr r10, ", $x, ", #7\n",               // k − 256
                "and r12, ", $x, ", #127\n",             // f
                "ldr lr, [r3, r10, lsl #1]\n",           // T[k] | T[k+1] << 16
                "sxth r10, lr\n",                        // T[k]
                "rsb lr, r10, lr, asr #16\n",            // slope = T[k+1] − T[k]
                "mla lr, lr, r12, r6\n",                 // slope·f + 64
                "add ", $x, ", r10, lr, asr #7\n",       // y
                "strh ", $x, ", [r2], #2\n",
            )
        };
    }

    // Requantize accumulator `$x` (bias included) into the next output int16 (see
    // `quant::requantize`; the fast path is its `shift < 0` case: with e = −shift ≥ 1 the
    // nudge 2^(30+e) is the register pair (2^(e−1) << 31, 2^(e−1) >> 1) and the quotient
    // by 2^(31+e) is the high word shifted by e − 1), then `lut!`. Registers: r0
    // multipliers, r1 shifts, r2 output, r3 table, r6 = 64, r7 = 1 (all advanced per
    // channel); r10–r12 and lr scratch. A shift ≥ 0 branches to the out-of-line
    // `requant_slow!` at label `$slow`, which comes back to `$cont`.
    #[rustfmt::skip]
    macro_rules! requant {
        ($x:literal, $slow:literal, $cont:literal) => {
            concat!(
                "ldr r10, [r0], #4\n",                   // m
                "ldrsb r11, [r1], #1\n",                 // shift
                "mvns r11, r11\n",                       // e − 1 = !shift; N: shift ≥ 0
                "bmi ", $slow, "f\n",
                "lsl r12, r7, r11\n",                    // 2^(e−1)
                "lsl lr, r12, #31\n",                    // nudge low
                "lsr r12, r12, #1\n",                    // nudge high
                "smlal lr, r12, ", $x, ", r10\n",        // x·m + 2^(30+e)
                "asr ", $x, ", r12, r11\n",              // pre = high >> (e − 1)
                $cont, ":\n",
                lut!($x),
            )
        };
    }

    // `requant!` for a block whose four shifts are all negative: r11 holds their `!shift`
    // bytes, this channel's lowest (register shifts read only the low byte).
    #[rustfmt::skip]
    macro_rules! requant_right {
        ($x:literal) => {
            concat!(
                "ldr r10, [r0], #4\n",
                "lsl r12, r7, r11\n",
                "lsl lr, r12, #31\n",
                "lsr r12, r12, #1\n",
                "smlal lr, r12, ", $x, ", r10\n",
                "asr ", $x, ", r12, r11\n",
                lut!($x),
            )
        };
    }

    // `quant::requantize` for shift ≥ 0 (r11 = !shift): n = 31 − shift in 1..=31, the sum
    // x·m + 2^(n−1) in 64 bits, shifted right by n, saturated to int32.
    #[rustfmt::skip]
    macro_rules! requant_slow {
        ($x:literal, $slow:literal, $cont:literal) => {
            concat!(
                $slow, ":\n",
                "add r11, r11, #32\n",                   // n = 31 − shift = !shift + 32
                "sub r12, r11, #1\n",
                "lsl lr, r7, r12\n",                     // nudge 2^(n−1), low word
                "mov r12, #0\n",
                "smlal lr, r12, ", $x, ", r10\n",        // x·m + nudge
                "lsr lr, lr, r11\n",
                "rsb r10, r11, #32\n",
                "lsl r10, r12, r10\n",
                "orr lr, lr, r10\n",                     // low word of the sum >> n
                "asr r12, r12, r11\n",                   // high word
                "cmp r12, lr, asr #31\n",                // fits an int32?
                "beq 1f\n",
                "mvn lr, #0x80000000\n",
                "eor lr, lr, r12, asr #31\n",            // saturated: MAX or MIN
                "1:\n",
                "mov ", $x, ", lr\n",
                "b ", $cont, "b\n",
            )
        };
    }

    // A hidden layer's whole blocks of four rows: `__flame_runtime_layer4(&Layer4)`
    // (AAPCS). Per block: the biases start the accumulators, the four-row pass adds the
    // sums, and the four channels are requantized and looked up in registers.
    global_asm!(
        ".pushsection .text.__flame_runtime_layer4,\"ax\",%progbits",
        ".syntax unified",
        ".thumb",
        ".p2align 2",
        ".global __flame_runtime_layer4",
        ".hidden __flame_runtime_layer4",
        ".type __flame_runtime_layer4, %function",
        ".thumb_func",
        "__flame_runtime_layer4:",
        "push {{r4-r11, lr}}",
        "sub sp, #52",
        "ldm r0, {{r0-r12}}",
        "stm sp, {{r0-r12}}",
        "2:",
        "add lr, sp, #24",
        // r0 input, r1 row 0, r2 biases, r3 width, r11 3·width, r12 entry.
        "ldm lr, {{r0, r1, r2, r3, r11, r12}}",
        "ldr r4, [r2], #4",
        "ldr r5, [r2], #4",
        "ldr r9, [r2], #4",
        "ldr r8, [r2], #4",
        "add r6, r1, r3, lsl #2",
        "strd r6, r2, [sp, #28]",
        "add r2, r1, r11",
        "bl 7f",
        "ldm sp, {{r0, r1, r2, r3, r6, r7}}",
        // The four shifts at once; all negative (bit 7 of each `!shift` clear): the
        // right-shift path without per-channel tests.
        "ldr r11, [r1], #4",
        "mvn r11, r11",
        "tst r11, #0x80808080",
        "bne 79f",
        requant_right!("r4"),
        "lsr r11, r11, #8",
        requant_right!("r5"),
        "lsr r11, r11, #8",
        requant_right!("r9"),
        "lsr r11, r11, #8",
        requant_right!("r8"),
        "89:",
        "stm sp, {{r0, r1, r2}}",
        "ldr r10, [sp, #48]",
        "cmp r2, r10",
        "bne 2b",
        "add sp, #52",
        "pop {{r4-r11, pc}}",
        // The four-row pass's entry: push the return address (it returns with `POP {PC}`).
        "7:",
        "push {{lr}}",
        "bx r12",
        // A block with a shift ≥ 0: per channel.
        "79:",
        "sub r1, r1, #4",
        requant!("r4", "71", "81"),
        requant!("r5", "72", "82"),
        requant!("r9", "73", "83"),
        requant!("r8", "74", "84"),
        "b 89b",
        requant_slow!("r4", "71", "81"),
        requant_slow!("r5", "72", "82"),
        requant_slow!("r9", "73", "83"),
        requant_slow!("r8", "74", "84"),
        ".size __flame_runtime_layer4, . - __flame_runtime_layer4",
        ".popsection",
    );

    extern "C" {
        fn __flame_runtime_layer4(args: *const Layer4);
    }

    #[inline(always)]
    pub fn dense_requantize(
        weights: &[u8],
        rows: usize,
        x: &[i16],
        stage: &super::OutputStage<'_>,
        y: &mut [i16],
    ) {
        with_input(x, widen, |xw| {
            layer(weights, rows, xw, &passes_w8(weights, x, xw), stage, y)
        })
    }

    #[inline(always)]
    pub fn dense_requantize_w16(
        weights: &[u8],
        rows: usize,
        x: &[i16],
        stage: &super::OutputStage<'_>,
        y: &mut [i16],
    ) {
        with_input(x, pairs, |xw| {
            layer(weights, rows, xw, &passes_w16(weights, x, xw), stage, y)
        })
    }

    /// A hidden layer on the prepared input `xw`: whole blocks of four rows in
    /// `__flame_runtime_layer4` with the four-row body of `passes`, the rest in chunks.
    #[inline(always)]
    fn layer<F: Fn(usize) -> i32>(
        weights: &[u8],
        rows: usize,
        xw: &[u32],
        passes: &Passes<F>,
        stage: &super::OutputStage<'_>,
        y: &mut [i16],
    ) {
        let stride = passes.stride;
        // Whole blocks whose reads (`read` bytes from each of the four rows) stay within
        // the weights: all of them, or all but the last of a ragged matrix; none without
        // a four-row body.
        let mut blocks = if passes.entry4.is_some() { rows / 4 } else { 0 };
        while blocks > 0 && (4 * blocks - 1) * stride + passes.read > weights.len() {
            blocks -= 1;
        }
        if let Some(entry) = passes.entry4.filter(|_| blocks > 0) {
            let args = Layer4 {
                multipliers: stage.multipliers.as_ptr(),
                shifts: stage.shifts.as_ptr(),
                out: y.as_mut_ptr(),
                // T[256]: `lut!` indexes it with pre >> 7 in −256..=255.
                table: stage.table.as_ptr().wrapping_add(512),
                half: 64,
                one: 1,
                xw: xw.as_ptr(),
                row: weights.as_ptr(),
                biases: stage.biases.as_ptr(),
                width: stride,
                width3: 3 * stride,
                entry,
                end: y.as_mut_ptr().wrapping_add(4 * blocks),
            };
            // SAFETY: the reads of the four-row pass are in bounds (checked above; `xw`
            // holds what the body reads); `dense_requantize` checked that the stage's
            // arrays hold `rows ≥ 4·blocks` channels and `y` as many values; the table
            // reads at `2·k` and `2·k + 2` with k ≤ 511 stay within its 1026 bytes.
            unsafe { __flame_runtime_layer4(&args) };
        }
        let emit = |c0, accs: &[i32]| super::requantize_rows(stage, c0, accs, y);
        chunks_from(weights, rows, xw, passes, 4 * blocks, emit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Random int8 weights in [−127, 127], or only ±127 when `extreme`; with `wide`,
    /// int16 weights (LE bytes) in [−32767, 32767] or ±32767 (sums that wrap: the kernels
    /// must wrap alike).
    fn random_weights(
        rng: &mut crate::noise::SplitMix64,
        n: usize,
        extreme: bool,
        wide: bool,
    ) -> Vec<u8> {
        let max: i32 = if wide { 32767 } else { 127 };
        let mut bytes = Vec::new();
        for _ in 0..n {
            let r = rng.next_u64();
            let w = match (extreme, r & 1) {
                (true, 0) => max,
                (true, _) => -max,
                (false, _) => (r % (2 * max as u64 + 1)) as i32 - max,
            };
            if wide {
                bytes.extend_from_slice(&(w as i16).to_le_bytes());
            } else {
                bytes.push(w as i8 as u8);
            }
        }
        bytes
    }

    fn matrix(bytes: &[u8], wide: bool) -> Weights<'_> {
        if wide {
            Weights::Int16(bytes)
        } else {
            Weights::Int8(bytes)
        }
    }

    /// Random int16 activations, or only ±32767 when `extreme` (the largest sums a blob
    /// may produce); occasionally −32768, which only an unvalidated caller passes.
    fn random_inputs(rng: &mut crate::noise::SplitMix64, n: usize, extreme: bool) -> Vec<i16> {
        (0..n)
            .map(|_| {
                let r = rng.next_u64();
                if extreme {
                    if r & 1 == 0 {
                        32767
                    } else {
                        -32767
                    }
                } else if r.is_multiple_of(97) {
                    i16::MIN
                } else {
                    (r >> 8) as i16 >> ((r >> 40) % 12)
                }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn dot_matches_wide_arithmetic(
            pairs in proptest::collection::vec((any::<i8>(), any::<i16>()), 0..crate::MAX_WIDTH),
        ) {
            let weights: Vec<u8> = pairs.iter().map(|p| p.0.max(-127) as u8).collect();
            let inputs: Vec<i16> = pairs.iter().map(|p| p.1).collect();
            let wide: i64 = weights.iter().zip(&inputs)
                .map(|(&w, &x)| (w as i8 as i64) * (x as i64)).sum();
            // |Σ| < 512 · 127 · 32768 < 2^31: no wrap, so both equal the wide sum.
            prop_assert_eq!(dot(Weights::Int8(&weights), &inputs) as i64, wide);
            prop_assert_eq!(dot_reference(Weights::Int8(&weights), 0, &inputs) as i64, wide);
        }

        #[test]
        fn dense_matches_reference(
            width in 0usize..=crate::MAX_WIDTH,
            rows in 1usize..12,
            seed in any::<u64>(),
            extreme in any::<bool>(),
            wide in any::<bool>(),
        ) {
            let mut rng = crate::noise::SplitMix64::new(seed);
            let bytes = random_weights(&mut rng, rows * width, extreme, wide);
            let weights = matrix(&bytes, wide);
            let x = random_inputs(&mut rng, width, extreme);
            let mut expect = Vec::new();
            dense_reference(weights, rows, &x, |c, a| expect.push((c, a)));
            let mut got = Vec::new();
            dense(weights, rows, &x, |c, a| got.push((c, a)));
            prop_assert_eq!(&got, &expect);
            // Every x86-64 kernel this CPU has, whichever `dense` picked.
            #[cfg(target_arch = "x86_64")]
            for level in imp::Level::available().filter(|_| !wide) {
                let mut got = Vec::new();
                imp::dense_chunks_with(&bytes, rows, &x, |c0, accs| {
                    got.extend(accs.iter().enumerate().map(|(r, &a)| (c0 + r, a)))
                }, level);
                prop_assert_eq!(&got, &expect, "{:?}", level);
            }
        }
    }

    /// Output-stage parameters over everything the parser accepts: per channel a shift
    /// anywhere in the range (left shifts included), a multiplier with the edges 0, 1 and
    /// `i32::MAX` or small enough that left shifts do not always saturate, biases up to the
    /// i32 extremes (wrapping sums, saturating shifts), and a random table within ±32767.
    fn random_stage(
        rng: &mut crate::noise::SplitMix64,
        rows: usize,
    ) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let (mut biases, mut multipliers, mut shifts) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rows {
            let r = rng.next_u64();
            let shift = match r % 4 {
                0 => ((r >> 8) % 62) as i32 - 31,
                1 => -(((r >> 8) % 3) as i32) - 29,
                _ => -(((r >> 8) % 12) as i32) - 1,
            };
            let m: i32 = match (r >> 16) % 8 {
                0 => [0, 1, 2, i32::MAX, 1 << 30, (1 << 30) - 1][(r >> 24) as usize % 6],
                1 => (r >> 33) as i32 & 0xFFFF,
                _ => (1 << 30) | (r >> 34) as i32,
            };
            let bias: i32 = match (r >> 40) % 8 {
                0 => [i32::MIN, i32::MAX, i32::MIN + 1, -1, 0, 1 << 30][(r >> 48) as usize % 6],
                1 => rng.next_u64() as i32,
                _ => (rng.next_u64() as i32) >> 12,
            };
            biases.extend_from_slice(&bias.to_le_bytes());
            multipliers.extend_from_slice(&m.to_le_bytes());
            shifts.push(shift as i8 as u8);
        }
        let table = (0..crate::quant::TABLE_ENTRIES)
            .flat_map(|_| (rng.next_u64() as i16).max(-32767).to_le_bytes())
            .collect();
        (biases, multipliers, shifts, table)
    }

    proptest! {
        #[test]
        fn dense_requantize_matches_reference(
            width in 0usize..=crate::MAX_WIDTH,
            rows in 1usize..40,
            seed in any::<u64>(),
            extreme in any::<bool>(),
            wide in any::<bool>(),
        ) {
            let mut rng = crate::noise::SplitMix64::new(seed);
            let bytes = random_weights(&mut rng, rows * width, extreme, wide);
            let weights = matrix(&bytes, wide);
            let x = random_inputs(&mut rng, width, extreme);
            let (biases, multipliers, shifts, table) = random_stage(&mut rng, rows);
            let stage = OutputStage {
                biases: &biases,
                multipliers: &multipliers,
                shifts: &shifts,
                table: table.as_slice().try_into().unwrap(),
            };
            let mut expect = vec![0i16; rows];
            dense_requantize_reference(weights, rows, &x, &stage, &mut expect);
            let mut got = vec![0i16; rows + 1];
            dense_requantize(weights, rows, &x, &stage, &mut got);
            prop_assert_eq!(&got[..rows], &expect[..]);
            prop_assert_eq!(got[rows], 0, "wrote past the layer");
            #[cfg(target_arch = "x86_64")]
            for level in imp::Level::available().filter(|_| !wide) {
                let mut got = vec![0i16; rows];
                imp::dense_requantize_with(&bytes, rows, &x, &stage, &mut got, level);
                prop_assert_eq!(&got, &expect, "{:?}", level);
            }
        }
    }
}
