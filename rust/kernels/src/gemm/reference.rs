//! The naive oracle: unpacked operands, i64 accumulation, no tiling, no `unsafe`.
//! Tests compare every engine against it.

/// Exact `acc[i][j] = Σ_k (a[i][k] − za)·(w[j][k] − zw[j])` as i64, for `a: [M, K]` (u8) and
/// `w: [N, K]` (i8) with per-column weight zero points `zw` (length N).
pub fn reference_acc(
    a: &[u8],
    m: usize,
    k: usize,
    za: i32,
    w: &[i8],
    n: usize,
    zw: &[i32],
) -> Vec<i64> {
    let mut out = vec![0i64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0i64;
            for kk in 0..k {
                s += (a[i * k + kk] as i64 - za as i64) * (w[j * k + kk] as i64 - zw[j] as i64);
            }
            out[i * n + j] = s;
        }
    }
    out
}
