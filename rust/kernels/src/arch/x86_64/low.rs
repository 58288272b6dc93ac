//! AVX-512 and AVX2 kernels for float activations × fp16 / int8 weight-only weights
//! ([`crate::wgemm`]): the weights widened with `vcvtph2ps` / `vpmovsxbd` + `vcvtdq2ps` and one
//! `vfmadd` chain per output element over k, in order — the specification's operations, so the
//! bits equal the generic loop's.

use std::arch::x86_64::*;

/// Columns per panel.
const L: usize = 16;

/// The weights of the panels a block covers (each panel `k·16` elements, panel after panel).
#[derive(Clone, Copy)]
pub(crate) enum LowData<'a> {
    F16(&'a [u16]),
    I8(&'a [i8]),
}

/// One block: `rows = x.len() / k` rows × `panels` panels, written to `out` as
/// `[rows, panels·16]`; `zps`, `scales`, `bias` hold `panels·16` values each.
pub(crate) struct LowBlock<'a> {
    pub x: &'a [f32],
    pub k: usize,
    pub data: LowData<'a>,
    pub zps: &'a [f32],
    pub has_zp: bool,
    pub scales: &'a [f32],
    pub bias: &'a [f32],
}

impl LowBlock<'_> {
    /// Panels in the block, after checking every length (None if they disagree).
    fn panels(&self, out: &[f32]) -> Option<(usize, usize)> {
        let k = self.k;
        if k == 0 || self.x.len() % k != 0 {
            return None;
        }
        let rows = self.x.len() / k;
        let elems = match self.data {
            LowData::F16(d) => d.len(),
            LowData::I8(d) => d.len(),
        };
        if elems % (k * L) != 0 {
            return None;
        }
        let panels = elems / (k * L);
        let cols = panels * L;
        let ok = self.zps.len() == cols
            && self.scales.len() == cols
            && self.bias.len() == cols
            && rows.checked_mul(cols) == Some(out.len());
        ok.then_some((rows, panels))
    }
}

fn has_f16c() -> bool {
    is_x86_feature_detected!("f16c")
}

/// Runs the block with AVX-512 (the caller checked that the CPU has AVX-512F and FMA;
/// `vcvtph2ps zmm` is AVX-512F); false when the lengths disagree (the caller then runs the
/// generic loop).
pub(crate) fn block_avx512(b: &LowBlock, out: &mut [f32]) -> bool {
    let Some((rows, panels)) = b.panels(out) else {
        return false;
    };
    let ld = panels * L;
    let mut r = 0;
    while r < rows {
        let nr = if rows - r >= 4 {
            4
        } else if rows - r >= 2 {
            2
        } else {
            1
        };
        let pw = if nr == 1 { 8 } else { 4 };
        let mut p = 0;
        while p < panels {
            let np = if panels - p >= pw { pw } else { 1 };
            // SAFETY: lengths checked in `panels`; rows r..r+nr and panels p..p+np lie inside
            // x, data, zps/scales/bias and out; the CPU has AVX-512F/FMA (caller).
            unsafe {
                macro_rules! go {
                    ($r:literal, $p:literal) => {
                        tile512::<$r, $p>(b, r, p, out.as_mut_ptr(), ld)
                    };
                }
                match (nr, np) {
                    (4, 4) => go!(4, 4),
                    (2, 4) => go!(2, 4),
                    (1, 8) => go!(1, 8),
                    (4, _) => go!(4, 1),
                    (2, _) => go!(2, 1),
                    _ => go!(1, 1),
                }
            }
            p += np;
        }
        r += nr;
    }
    true
}

/// As [`block_avx512`] with AVX2 + FMA (16 columns in two ymm).
pub(crate) fn block_avx2(b: &LowBlock, out: &mut [f32]) -> bool {
    let Some((rows, panels)) = b.panels(out) else {
        return false;
    };
    // tile256 is compiled with F16C (vcvtph2ps ymm): required for int8 weights too
    if !has_f16c() {
        return false;
    }
    let ld = panels * L;
    let mut r = 0;
    while r < rows {
        let nr = if rows - r >= 2 { 2 } else { 1 };
        let pw = if nr == 1 { 4 } else { 2 };
        let mut p = 0;
        while p < panels {
            let np = if panels - p >= pw { pw } else { 1 };
            // SAFETY: as in block_avx512, with AVX2/FMA (caller) and F16C (checked above).
            unsafe {
                match (nr, np) {
                    (2, 2) => tile256::<2, 2>(b, r, p, out.as_mut_ptr(), ld),
                    (1, 4) => tile256::<1, 4>(b, r, p, out.as_mut_ptr(), ld),
                    (2, _) => tile256::<2, 1>(b, r, p, out.as_mut_ptr(), ld),
                    _ => tile256::<1, 1>(b, r, p, out.as_mut_ptr(), ld),
                }
            }
            p += np;
        }
        r += nr;
    }
    true
}

/// # Safety
/// AVX-512F and FMA; rows `r0..r0+R` and panels `p0..p0+P` inside the block.
#[target_feature(enable = "avx512f,fma,avx2")]
unsafe fn tile512<const R: usize, const P: usize>(
    b: &LowBlock,
    r0: usize,
    p0: usize,
    out: *mut f32,
    ld: usize,
) {
    let k = b.k;
    let x = b.x.as_ptr().add(r0 * k);
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    let mut zp = [_mm512_setzero_ps(); P];
    for p in 0..P {
        zp[p] = _mm512_loadu_ps(b.zps.as_ptr().add((p0 + p) * L));
    }
    for kk in 0..k {
        let mut w = [_mm512_setzero_ps(); P];
        for p in 0..P {
            let at = (p0 + p) * k * L + kk * L;
            w[p] = match b.data {
                LowData::F16(d) => {
                    _mm512_cvtph_ps(_mm256_loadu_si256(d.as_ptr().add(at) as *const __m256i))
                }
                LowData::I8(d) => {
                    let v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                        d.as_ptr().add(at) as *const __m128i,
                    )));
                    if b.has_zp {
                        _mm512_sub_ps(v, zp[p])
                    } else {
                        v
                    }
                }
            };
        }
        for r in 0..R {
            let xv = _mm512_set1_ps(*x.add(r * k + kk));
            for p in 0..P {
                acc[r][p] = _mm512_fmadd_ps(xv, w[p], acc[r][p]);
            }
        }
    }
    for r in 0..R {
        for p in 0..P {
            let c = (p0 + p) * L;
            let s = _mm512_loadu_ps(b.scales.as_ptr().add(c));
            let bias = _mm512_loadu_ps(b.bias.as_ptr().add(c));
            _mm512_storeu_ps(
                out.add((r0 + r) * ld + c),
                _mm512_fmadd_ps(acc[r][p], s, bias),
            );
        }
    }
}

/// # Safety
/// AVX2, FMA and F16C; rows `r0..r0+R` and panels `p0..p0+P` inside the block.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile256<const R: usize, const P: usize>(
    b: &LowBlock,
    r0: usize,
    p0: usize,
    out: *mut f32,
    ld: usize,
) {
    let k = b.k;
    let x = b.x.as_ptr().add(r0 * k);
    let mut acc = [[[_mm256_setzero_ps(); 2]; P]; R];
    let mut zp = [[_mm256_setzero_ps(); 2]; P];
    for p in 0..P {
        for h in 0..2 {
            zp[p][h] = _mm256_loadu_ps(b.zps.as_ptr().add((p0 + p) * L + h * 8));
        }
    }
    for kk in 0..k {
        let mut w = [[_mm256_setzero_ps(); 2]; P];
        for p in 0..P {
            let at = (p0 + p) * k * L + kk * L;
            for h in 0..2 {
                w[p][h] = match b.data {
                    LowData::F16(d) => _mm256_cvtph_ps(_mm_loadu_si128(
                        d.as_ptr().add(at + h * 8) as *const __m128i
                    )),
                    LowData::I8(d) => {
                        let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                            d.as_ptr().add(at + h * 8) as *const __m128i,
                        )));
                        if b.has_zp {
                            _mm256_sub_ps(v, zp[p][h])
                        } else {
                            v
                        }
                    }
                };
            }
        }
        for r in 0..R {
            let xv = _mm256_set1_ps(*x.add(r * k + kk));
            for p in 0..P {
                for h in 0..2 {
                    acc[r][p][h] = _mm256_fmadd_ps(xv, w[p][h], acc[r][p][h]);
                }
            }
        }
    }
    for r in 0..R {
        for p in 0..P {
            for h in 0..2 {
                let c = (p0 + p) * L + h * 8;
                let s = _mm256_loadu_ps(b.scales.as_ptr().add(c));
                let bias = _mm256_loadu_ps(b.bias.as_ptr().add(c));
                _mm256_storeu_ps(
                    out.add((r0 + r) * ld + c),
                    _mm256_fmadd_ps(acc[r][p][h], s, bias),
                );
            }
        }
    }
}
