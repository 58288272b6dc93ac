//! Quantized convolution (1d/2d/3d as one 3-D case), channels-last, by im2col + the int8 GEMM.
//!
//! Activations are `[N, D, H, W, C]` u8 (conv1d/2d use D = H = 1 / D = 1). Weights arrive in
//! torch's layout `[Cout, Cin/groups, kd, kh, kw]` and are packed once per group as a GEMM
//! `[Cout/groups, kd·kh·kw·Cin/groups]` with K ordered (kd, kh, kw, c) — the order im2col
//! writes a patch of the channels-last input. Padding uses the input zero point, so padded taps
//! contribute exactly `(zp − zp)·w = 0` (docs/numerics.md "Zero is exact"). Output stages are the GEMM's.
//! (A faster direct depthwise kernel and implicit GEMM come with the conv performance work.)

mod depthwise;
mod grouped;

use crate::arch::Engine;
use crate::error::{check_len, checked_numel, reuse_vec, try_vec, KernelError, Result};
use crate::gemm::gemm_wide;
use crate::packed::{PackedA, PackedWeights};
use crate::quantize::QInt;
use crate::requant::Requantize;
use crate::threading::{for_parts, parallel_for, threads_for};
use std::sync::Mutex;

/// Geometry of a convolution (spatial dims as (d, h, w); unused dims are 1 / 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
    pub groups: usize,
}

impl ConvGeometry {
    /// Output spatial size for an input of spatial size `input`, with overflow-safe
    /// arithmetic: geometry whose padded input or kernel span does not fit is an error.
    pub fn output_size(&self, input: [usize; 3]) -> Result<[usize; 3]> {
        self.check()?;
        let too_large = |i: usize| {
            KernelError::TooLarge(format!(
                "convolution geometry overflows along the {} axis: input {}, padding {}, \
                 kernel {}, dilation {}; use padding and dilation that keep the padded input \
                 and the kernel span below 2^62",
                AXES[i], input[i], self.padding[i], self.kernel[i], self.dilation[i]
            ))
        };
        let mut out = [0; 3];
        for i in 0..3 {
            let span = self.dilation[i]
                .checked_mul(self.kernel[i] - 1)
                .and_then(|v| v.checked_add(1))
                .filter(|&v| v <= MAX_EXTENT)
                .ok_or_else(|| too_large(i))?;
            let padded = self.padding[i]
                .checked_mul(2)
                .and_then(|v| v.checked_add(input[i]))
                .filter(|&v| v <= MAX_EXTENT)
                .ok_or_else(|| too_large(i))?;
            if padded < span {
                return Err(KernelError::ShapeMismatch {
                    what: format!("convolution input along the {} axis", AXES[i]),
                    expected: format!("size ≥ {} (kernel span) after padding", span),
                    got: format!("{} (+ padding {})", input[i], 2 * self.padding[i]),
                });
            }
            out[i] = (padded - span) / self.stride[i] + 1;
        }
        Ok(out)
    }

    fn check(&self) -> Result<()> {
        if self.groups == 0
            || self.kernel.contains(&0)
            || self.stride.contains(&0)
            || self.dilation.contains(&0)
        {
            return Err(KernelError::InvalidQParams(format!(
                "invalid convolution geometry {self:?}: kernel, stride, dilation and groups must be ≥ 1"
            )));
        }
        Ok(())
    }
}

/// The spatial axes as messages name them (a conv1d's length is the width axis, a conv2d's
/// axes are height and width).
const AXES: [&str; 3] = ["depth", "height", "width (length for conv1d)"];

/// Largest padded input or kernel span along one dimension (keeps index arithmetic, done in
/// `isize`, far from overflow).
const MAX_EXTENT: usize = 1 << 62;

/// Conv weights packed per group for this machine's GEMM kernels.
#[derive(Debug, Clone)]
pub struct PackedConv {
    geom: ConvGeometry,
    cin: usize,
    cout: usize,
    /// One packed GEMM per group (empty for a depthwise conv).
    groups: Vec<PackedWeights>,
    /// The weights of a depthwise conv (groups = in = out channels), run by the direct kernel.
    depthwise: Option<depthwise::PackedDepthwise>,
    /// A grouped conv's weights for the engines' grouped kernels (few channels per group, no
    /// weight zero points), beside the per-group GEMM weights other engines run.
    grouped: Option<grouped::PackedGrouped>,
}

impl PackedConv {
    /// `w`: int8 `[cout, cin/groups, kd, kh, kw]`; `scales` / `zero_points`: length 1 or `cout`.
    pub fn new(
        w: &[i8],
        cout: usize,
        cin: usize,
        geom: ConvGeometry,
        scales: &[f32],
        zero_points: &[i32],
    ) -> Result<Self> {
        geom.check()?;
        if geom.kernel.iter().any(|&k| k > MAX_EXTENT) {
            return Err(KernelError::TooLarge(format!(
                "convolution kernel {:?} is too large",
                geom.kernel
            )));
        }
        let g = geom.groups;
        if cin % g != 0 || cout % g != 0 || cin == 0 || cout == 0 {
            return Err(KernelError::ShapeMismatch {
                what: "convolution channels".into(),
                expected: format!("in and out channels > 0 and divisible by groups = {g}"),
                got: format!("in {cin}, out {cout}"),
            });
        }
        let (cin_g, cout_g) = (cin / g, cout / g);
        let taps = checked_numel(&geom.kernel, "convolution kernel")?;
        let k = checked_numel(&[taps, cin_g], "convolution patch")?;
        check_len(
            "convolution weight",
            checked_numel(&[cout, k], "convolution weight")?,
            w.len(),
        )?;
        let per_channel = scales.len() != 1 || zero_points.len() != 1;
        if per_channel {
            check_len("per-channel weight scales", cout, scales.len())?;
            check_len("per-channel weight zero points", cout, zero_points.len())?;
        }
        if depthwise::applies(&geom, cin, cout) {
            let dw = depthwise::PackedDepthwise::new(w, cout, geom.kernel, scales, zero_points)?;
            return Ok(PackedConv {
                geom,
                cin,
                cout,
                groups: Vec::new(),
                depthwise: Some(dw),
                grouped: None,
            });
        }
        let mut groups = Vec::with_capacity(g);
        for gi in 0..g {
            // re-lay [cout_g, cin_g, taps] as [cout_g, taps, cin_g]
            let mut wg = try_vec(cout_g * k, 0i8, "convolution weights of a group")?;
            for o in 0..cout_g {
                let src = &w[(gi * cout_g + o) * k..(gi * cout_g + o + 1) * k];
                for c in 0..cin_g {
                    for t in 0..taps {
                        wg[o * k + t * cin_g + c] = src[c * taps + t];
                    }
                }
            }
            let (s, z) = if per_channel {
                (
                    &scales[gi * cout_g..(gi + 1) * cout_g],
                    &zero_points[gi * cout_g..(gi + 1) * cout_g],
                )
            } else {
                (scales, zero_points)
            };
            groups.push(PackedWeights::new(&wg, cout_g, k, s, z)?);
        }
        // few output channels per group leave the GEMM's 16-column panels mostly empty
        let grouped = if g > 1 && cout_g < 32 && zero_points.iter().all(|&z| z == 0) {
            let s: Vec<f32> = (0..cout)
                .map(|o| scales[if scales.len() == 1 { 0 } else { o }])
                .collect();
            grouped::PackedGrouped::new(w, cin, cout, g, taps, s)?
        } else {
            None
        };
        Ok(PackedConv {
            geom,
            cin,
            cout,
            groups,
            depthwise: None,
            grouped,
        })
    }

    pub fn geometry(&self) -> ConvGeometry {
        self.geom
    }
    pub fn in_channels(&self) -> usize {
        self.cin
    }
    pub fn out_channels(&self) -> usize {
        self.cout
    }
    /// The int8 weights back in torch's layout `[cout, cin/groups, kd, kh, kw]` (the values
    /// [`PackedConv::new`] was given).
    pub fn unpack(&self) -> Vec<i8> {
        if let Some(dw) = &self.depthwise {
            return dw.unpack();
        }
        let (cout_g, cin_g) = (self.cout / self.geom.groups, self.cin / self.geom.groups);
        let taps: usize = self.geom.kernel.iter().product();
        let k = taps * cin_g;
        let mut w = vec![0i8; self.cout * k];
        for (gi, pw) in self.groups.iter().enumerate() {
            // the group's GEMM rows are [cout_g, taps, cin_g]; torch's are [cout_g, cin_g, taps]
            let wg = pw.unpack();
            for o in 0..cout_g {
                let dst = &mut w[(gi * cout_g + o) * k..(gi * cout_g + o + 1) * k];
                for c in 0..cin_g {
                    for t in 0..taps {
                        dst[c * taps + t] = wg[o * k + t * cin_g + c];
                    }
                }
            }
        }
        w
    }
    /// Whether the direct depthwise kernel runs this conv.
    pub fn is_depthwise(&self) -> bool {
        self.depthwise.is_some()
    }
    /// Bytes held by the packed weights and their per-channel data.
    pub fn bytes(&self) -> usize {
        self.groups.iter().map(PackedWeights::bytes).sum::<usize>()
            + self.depthwise.as_ref().map_or(0, |d| d.bytes())
            + self.grouped.as_ref().map_or(0, |g| g.bytes())
    }
}

/// The input of a conv call, channels-last, with its geometry.
struct ConvInput<'a> {
    x: &'a [u8],
    sp: [usize; 3],
    c: usize,
    geom: ConvGeometry,
    osp: [usize; 3],
    zp: u8,
}

impl ConvInput<'_> {
    /// The input rows of output pixels `rows` when they already are packed activation rows: a
    /// 1x1 conv (one group, stride 1, no padding) whose channel count is a multiple of 4 reads
    /// input pixel r for output pixel r, `c` bytes each.
    fn pointwise_rows(&self, rows: std::ops::Range<usize>) -> Option<&[u8]> {
        let g = &self.geom;
        let pointwise = g.groups == 1
            && g.kernel == [1, 1, 1]
            && g.stride == [1, 1, 1]
            && g.padding == [0; 3]
            && self.c % crate::arch::KR == 0;
        pointwise.then(|| &self.x[rows.start * self.c..rows.end * self.c])
    }

    /// im2col of output pixels `rows` (flattened over `[n, od, oh, ow]`) for group `gi`
    /// (`cin_g` channels), written straight into packed rows (`kp` bytes apart, the first
    /// `taps·cin_g` written): K ordered (kd, kh, kw, c), padded taps at the zero point. Along the
    /// width, undilated taps of a conv with one group are contiguous in the channels-last input
    /// and are copied as one run (`kw·c` bytes).
    fn im2col(
        &self,
        gi: usize,
        cin_g: usize,
        rows: std::ops::Range<usize>,
        data: &mut [u8],
        kp: usize,
    ) {
        let (geom, sp, osp, c) = (&self.geom, self.sp, self.osp, self.c);
        let [kd_n, kh_n, kw_n] = geom.kernel;
        let k = kd_n * kh_n * kw_n * cin_g;
        let line = kw_n * cin_g; // bytes of one (kd, kh) line of a patch
        let runs = geom.dilation[2] == 1 && cin_g == c;
        let zp = self.zp;
        if runs && geom.kernel == [1, 1, 1] && geom.stride == [1, 1, 1] && geom.padding == [0; 3] {
            // a pointwise conv: output pixel r reads input pixel r, so the block is one
            // contiguous run of the input
            let src = &self.x[rows.start * c..rows.end * c];
            if kp == c {
                data[..src.len()].copy_from_slice(src);
            } else {
                for (row, s) in data.chunks_exact_mut(kp).zip(src.chunks_exact(c)) {
                    row[..c].copy_from_slice(s);
                }
            }
            return;
        }
        let inside = |v: isize, n: usize| v >= 0 && (v as usize) < n;
        let (sw, pw) = (geom.stride[2], geom.padding[2]);
        // output columns whose whole kernel width lies inside the input (runs only)
        let interior = if runs && sp[2] + pw >= kw_n {
            pw.div_ceil(sw)..(sp[2] + pw - kw_n) / sw + 1
        } else {
            0..0
        };
        // rows (output pixels) go by segments of one output line: the input rows a line reads
        // are found once per segment; interior pixels copy one run per kernel row, kernel row
        // by kernel row (a tight strided copy), the others pixel by pixel
        let mut src_rows: Vec<Option<usize>> = Vec::with_capacity(kd_n * kh_n);
        let mut r = rows.start;
        while r < rows.end {
            let ow_first = r % osp[2];
            let oh = (r / osp[2]) % osp[1];
            let od = (r / (osp[2] * osp[1])) % osp[0];
            let b = r / (osp[2] * osp[1] * osp[0]);
            let seg = (osp[2] - ow_first).min(rows.end - r);
            src_rows.clear();
            for kd in 0..kd_n {
                let id = (od * geom.stride[0] + kd * geom.dilation[0]) as isize
                    - geom.padding[0] as isize;
                for kh in 0..kh_n {
                    let ih = (oh * geom.stride[1] + kh * geom.dilation[1]) as isize
                        - geom.padding[1] as isize;
                    src_rows.push(
                        (inside(id, sp[0]) && inside(ih, sp[1]))
                            .then(|| ((b * sp[0] + id as usize) * sp[1] + ih as usize) * sp[2]),
                    );
                }
            }
            let seg_data = &mut data[(r - rows.start) * kp..(r - rows.start + seg) * kp];
            let lo = interior.start.clamp(ow_first, ow_first + seg);
            let hi = interior.end.clamp(lo, ow_first + seg);
            if hi > lo {
                let block = &mut seg_data[(lo - ow_first) * kp..(hi - ow_first) * kp];
                for (j, src) in src_rows.iter().enumerate() {
                    match src {
                        Some(pix0) => {
                            let at = (pix0 + lo * sw - pw) * c;
                            strided_runs(&mut block[j * line..], kp, &self.x[at..], sw * c, line);
                        }
                        None => {
                            for row in block.chunks_exact_mut(kp) {
                                row[j * line..(j + 1) * line].fill(zp);
                            }
                        }
                    }
                }
            }
            for (i, row) in seg_data.chunks_exact_mut(kp).enumerate() {
                let ow = ow_first + i;
                if (lo..hi).contains(&ow) {
                    continue;
                }
                let row = &mut row[..k];
                let iw0 = (ow * sw) as isize - pw as isize;
                let whole = runs && iw0 >= 0 && iw0 as usize + kw_n <= sp[2];
                for (dst, src) in row.chunks_exact_mut(line).zip(&src_rows) {
                    match src {
                        None => dst.fill(zp),
                        Some(pix0) if whole => {
                            let at = (pix0 + iw0 as usize) * c;
                            copy_run(dst, &self.x[at..at + line]);
                        }
                        Some(pix0) if runs => {
                            // taps lo..hi fall inside the row of the input
                            let lo = (-iw0).clamp(0, kw_n as isize) as usize;
                            let hi =
                                (sp[2] as isize - iw0).clamp(lo as isize, kw_n as isize) as usize;
                            dst[..lo * c].fill(zp);
                            if hi > lo {
                                let at = (pix0 + (iw0 + lo as isize) as usize) * c;
                                dst[lo * c..hi * c]
                                    .copy_from_slice(&self.x[at..at + (hi - lo) * c]);
                            }
                            dst[hi * c..].fill(zp);
                        }
                        Some(pix0) => {
                            for kw in 0..kw_n {
                                let iw = iw0 + (kw * geom.dilation[2]) as isize;
                                let d = &mut dst[kw * cin_g..(kw + 1) * cin_g];
                                if inside(iw, sp[2]) {
                                    let at = (pix0 + iw as usize) * c + gi * cin_g;
                                    d.copy_from_slice(&self.x[at..at + cin_g]);
                                } else {
                                    d.fill(zp);
                                }
                            }
                        }
                    }
                }
            }
            r += seg;
        }
    }
}

/// `dst[i·kp ..][.. line] = src[i·step ..][.. line]` for every whole row `i` of `dst` (`kp`
/// apart; the last may end right after its run): im2col's interior runs, one kernel row at a
/// time, with the run length's moves chosen once.
fn strided_runs(dst: &mut [u8], kp: usize, src: &[u8], step: usize, line: usize) {
    let count = (dst.len() + kp - line) / kp;
    macro_rules! each {
        ($copy:expr) => {
            for i in 0..count {
                let d = &mut dst[i * kp..i * kp + line];
                let s = &src[i * step..i * step + line];
                $copy(d, s);
            }
        };
    }
    fn two<const W: usize>(d: &mut [u8], s: &[u8]) {
        let n = d.len();
        let a: [u8; W] = s[..W].try_into().unwrap();
        d[..W].copy_from_slice(&a);
        let b: [u8; W] = s[n - W..].try_into().unwrap();
        d[n - W..].copy_from_slice(&b);
    }
    fn blocks64(d: &mut [u8], s: &[u8]) {
        let n = d.len();
        let mut o = 0;
        while o + 64 <= n {
            let a: [u8; 64] = s[o..o + 64].try_into().unwrap();
            d[o..o + 64].copy_from_slice(&a);
            o += 64;
        }
        if o < n {
            let a: [u8; 64] = s[n - 64..].try_into().unwrap();
            d[n - 64..].copy_from_slice(&a);
        }
    }
    match line {
        0 => {}
        1..=3 => each!(|d: &mut [u8], s: &[u8]| d.copy_from_slice(s)),
        4..=7 => each!(two::<4>),
        8..=15 => each!(two::<8>),
        16..=31 => each!(two::<16>),
        32..=63 => each!(two::<32>),
        _ => each!(blocks64),
    }
}

/// `dst.copy_from_slice(src)` for one im2col run: runs of up to 32 bytes (a stem's 3x3 rows of
/// 3 channels: 9 bytes) as two overlapping fixed-size moves instead of a `memcpy` call.
#[inline(always)]
fn copy_run(dst: &mut [u8], src: &[u8]) {
    let n = dst.len();
    macro_rules! two {
        ($w:expr) => {{
            let a: [u8; $w] = src[..$w].try_into().unwrap();
            let b: [u8; $w] = src[n - $w..n].try_into().unwrap();
            dst[..$w].copy_from_slice(&a);
            dst[n - $w..].copy_from_slice(&b);
        }};
    }
    match n {
        4..=7 => two!(4),
        8..=15 => two!(8),
        16..=32 => two!(16),
        _ => dst.copy_from_slice(src),
    }
}

/// AVX2 blocks keep the 7-bit kernel with the rows holding a value above 127 computed apart
/// when at most one row in this many does (a row apart costs about 1.3 rows in a tile — up to
/// ~2 where the rows are the input's own and cut the runs; the exact 8-bit kernel costs ~2.5x
/// the 7-bit one on every row).
const WIDE_SHARE: usize = 2;

/// The largest im2col buffer a thread keeps between calls (blocks are ~[`BLOCK_BYTES`]; only a
/// K so large that 24 rows exceed it makes one bigger).
const KEEP_IM2COL_BYTES: usize = 4 * BLOCK_BYTES;

thread_local! {
    /// Each thread's im2col block buffer, reused from block to block and call to call (about
    /// [`BLOCK_BYTES`]; a block's rows are all rewritten before use).
    static IM2COL: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Bytes of im2col a block of output pixels may take: the conv never materialises the whole
/// im2col matrix, only one block per thread (L2-sized).
const BLOCK_BYTES: usize = 256 << 10;

/// The fewest output pixels per thread for blocks to run in parallel (fewer: blocks run one
/// after another and the GEMM of each is threaded over its columns).
const PARALLEL_BLOCK_MIN_ROWS: usize = 64;

/// Output pixels per block for patches of `k` bytes: about [`BLOCK_BYTES`], a multiple of 24
/// (every micro-kernel's row count divides it), at least 24.
fn block_rows(k: usize) -> usize {
    (BLOCK_BYTES / k.max(1)).max(24) / 24 * 24
}

/// Static quantized convolution: `x` u8 `[n, d, h, w, cin]` with `(x_scale, x_zp)` → out
/// `[n, od, oh, ow, cout]` requantized to `(out_scale, out_zp)`, clamped to `[qmin, qmax]`
/// (raised to `out_zp` with `relu`). Returns the output and its spatial size.
///
/// Output pixels are processed in blocks: each block's im2col rows are built, packed and
/// multiplied, so the extra memory of a call is a few blocks per thread plus the output, not
/// the im2col matrix. Many blocks run in parallel (one thread each); few blocks run one after
/// another with the GEMM itself threaded. K is never split: results do not depend on blocks or
/// threads.
#[allow(clippy::too_many_arguments)]
pub fn conv_static<T: QInt>(
    engine: Engine,
    x: &[u8],
    n: usize,
    spatial: [usize; 3],
    x_scale: f32,
    x_zp: i32,
    pc: &PackedConv,
    bias: Option<&[f32]>,
    out_scale: f32,
    out_zp: i32,
    qmin: i32,
    qmax: i32,
    relu: bool,
    threads: usize,
) -> Result<(Vec<T>, [usize; 3])> {
    conv_static_reusing(
        engine,
        x,
        n,
        spatial,
        x_scale,
        x_zp,
        pc,
        bias,
        out_scale,
        out_zp,
        qmin,
        qmax,
        relu,
        threads,
        Vec::new(),
    )
}

/// [`conv_static`] writing into `buf`'s allocation: a buffer at least as long as the output is
/// truncated to it (no fill: every output element is written), a shorter one grown. For callers
/// that run convolutions back to back and recycle their outputs (`_core.Plan`).
#[allow(clippy::too_many_arguments)]
pub fn conv_static_reusing<T: QInt>(
    engine: Engine,
    x: &[u8],
    n: usize,
    spatial: [usize; 3],
    x_scale: f32,
    x_zp: i32,
    pc: &PackedConv,
    bias: Option<&[f32]>,
    out_scale: f32,
    out_zp: i32,
    qmin: i32,
    qmax: i32,
    relu: bool,
    threads: usize,
    buf: Vec<T>,
) -> Result<(Vec<T>, [usize; 3])> {
    let args = ConvArgs {
        x_scale,
        x_zp,
        bias,
        out_scale,
        out_zp,
        qmin,
        qmax,
        relu,
    };
    conv_static_blocked(engine, x, n, spatial, pc, &args, threads, None, buf)
}

/// The scalar arguments of a conv call.
struct ConvArgs<'a> {
    x_scale: f32,
    x_zp: i32,
    bias: Option<&'a [f32]>,
    out_scale: f32,
    out_zp: i32,
    qmin: i32,
    qmax: i32,
    relu: bool,
}

/// [`conv_static`] with the block size chosen by the caller (tests use tiny blocks).
#[allow(clippy::too_many_arguments)]
fn conv_static_blocked<T: QInt>(
    engine: Engine,
    x: &[u8],
    n: usize,
    spatial: [usize; 3],
    pc: &PackedConv,
    args: &ConvArgs<'_>,
    threads: usize,
    block: Option<usize>,
    buf: Vec<T>,
) -> Result<(Vec<T>, [usize; 3])> {
    let geom = pc.geom;
    let (cin, cout, g) = (pc.cin, pc.cout, geom.groups);
    let in_numel = checked_numel(
        &[n, spatial[0], spatial[1], spatial[2], cin],
        "convolution input",
    )?;
    check_len("convolution input", in_numel, x.len())?;
    if !(0..=255).contains(&args.x_zp) {
        return Err(KernelError::InvalidQParams(format!(
            "quint8 input zero point {} is outside [0, 255]",
            args.x_zp
        )));
    }
    if let Some(b) = args.bias {
        check_len("bias", cout, b.len())?;
    }
    let osp = geom.output_size(spatial)?;
    let pixels = checked_numel(&[n, osp[0], osp[1], osp[2]], "convolution output")?;
    let out_numel = checked_numel(&[pixels, cout], "convolution output")?;
    let (cin_g, cout_g) = (cin / g, cout / g);
    let input = ConvInput {
        x,
        sp: spatial,
        c: cin,
        geom,
        osp,
        zp: args.x_zp as u8,
    };
    // the direct kernels' stage: one scale per output channel
    let direct_stage = |scales: &[f32]| {
        Requantize::<T>::with_scales(
            args.x_scale,
            scales,
            args.bias,
            args.out_scale,
            args.out_zp,
            args.qmin,
            args.qmax,
            args.relu,
        )
    };
    if let Some(dw) = &pc.depthwise {
        let stage = direct_stage(dw.scales())?;
        let mut out = reuse_vec(buf, out_numel, T::default(), "the convolution output")?;
        depthwise::depthwise(engine, dw, &input, &stage, &mut out, threads)?;
        return Ok((out, osp));
    }
    let grouped_run = pc.grouped.as_ref().and_then(|gp| {
        let kernel = crate::arch::grouped_kernel(engine)?;
        Some((gp, kernel, gp.blocks_for(&kernel)?))
    });
    if let Some((gp, kernel, blocks)) = grouped_run {
        let stage = direct_stage(gp.scales())?;
        let mut out = reuse_vec(buf, out_numel, T::default(), "the convolution output")?;
        grouped::grouped(
            engine, kernel, blocks, gp, &input, &stage, &mut out, threads,
        )?;
        return Ok((out, osp));
    }
    // every group's stage is built (and validated) before any work
    let stages = pc
        .groups
        .iter()
        .enumerate()
        .map(|(gi, pw)| {
            let b = args.bias.map(|b| &b[gi * cout_g..(gi + 1) * cout_g]);
            Requantize::<T>::new(
                args.x_scale,
                pw,
                b,
                args.out_scale,
                args.out_zp,
                args.qmin,
                args.qmax,
                args.relu,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut out = reuse_vec(buf, out_numel, T::default(), "the convolution output")?;
    if pixels == 0 {
        return Ok((out, osp));
    }
    let k = pc.groups[0].k();
    let macs = pixels.saturating_mul(cout).saturating_mul(k);
    let threads = threads_for(macs, threads);
    let rows = match block {
        Some(b) => b,
        None => {
            // about block_rows(k) pixels per block; with threads and enough pixels, at least one
            // block per thread and a multiple of the threads (7 blocks on 2 threads would leave
            // one idle 1/7 of the time), so that im2col runs in parallel too — the nearest
            // multiple (3 blocks on 2 threads become 2, not 4 blocks of which the last is
            // short); rows a multiple of 8 (whole tiles of the 8-row kernels)
            let mut blocks = pixels.div_ceil(block_rows(k));
            if threads > 1 && pixels >= threads * PARALLEL_BLOCK_MIN_ROWS {
                blocks = (blocks + threads / 2).div_euclid(threads).max(1) * threads;
            }
            pixels.div_ceil(blocks).div_ceil(8) * 8
        }
    }
    .clamp(1, pixels);
    let blocks = pixels.div_ceil(rows);
    // one block: im2col, pack, GEMM (threaded with `gemm_threads`) into `dst`
    // (`[block pixels, cout]`), group by group
    let run_block = |bi: usize, dst: &mut [T], gemm_threads: usize| -> Result<()> {
        let r = bi * rows..((bi + 1) * rows).min(pixels);
        let m = r.len();
        let mut tmp = if g > 1 {
            try_vec(m * cout_g, T::default(), "a grouped convolution block")?
        } else {
            Vec::new()
        };
        for (gi, (pw, stage)) in pc.groups.iter().zip(&stages).enumerate() {
            // row sums feed only the weight zero-point correction (computed with the largest
            // value in one pass); AVX2's kernel choice needs the largest value alone
            let stats = pw.has_zero_points();
            let a = match input.pointwise_rows(r.clone()) {
                // a 1x1 conv's block already is packed rows: the GEMM reads the input in place
                Some(rows) => PackedA::borrowed(rows, m, k, args.x_zp, stats)?,
                None => {
                    let buf = IM2COL.with(|c| c.take());
                    PackedA::from_fill_reusing(buf, m, k, args.x_zp, stats, |data, kp| {
                        // a block the GEMM will thread (few pixels, large K): its im2col is
                        // split over the same threads, rows apart
                        let split =
                            threads_for(m.saturating_mul(k).saturating_mul(16), gemm_threads);
                        if split > 1 && kp > 0 {
                            for_parts(split, kp, &mut data[..m * kp], &|start, part| {
                                let r0 = r.start + start / kp;
                                input.im2col(gi, cin_g, r0..r0 + part.len() / kp, part, kp)
                            });
                        } else {
                            input.im2col(gi, cin_g, r.clone(), data, kp)
                        }
                    })?
                }
            };
            // AVX2 picks its 7-bit kernel by the largest value: one vectorised pass finds it and
            // the rows holding a value above 127 (activations beyond the calibrated range: D7
            // clamps to 0..255); a few such rows are computed apart, exactly, and the block keeps
            // the 7-bit kernel
            let mut a = a;
            let wide = if engine == Engine::Avx2 {
                a.wide_rows_7bit(engine, WIDE_SHARE).map(|mut wr| {
                    a.clamp_wide_rows(&mut wr);
                    wr
                })
            } else {
                None
            };
            let wide = wide.as_ref();
            if g == 1 {
                gemm_wide(engine, &a, pw, stage, dst, gemm_threads, wide)?;
            } else {
                gemm_wide(engine, &a, pw, stage, &mut tmp, gemm_threads, wide)?;
                for (d, s) in dst.chunks_exact_mut(cout).zip(tmp.chunks_exact(cout_g)) {
                    d[gi * cout_g..(gi + 1) * cout_g].copy_from_slice(s);
                }
            }
            let buf = a.into_data();
            // keep a usual block's buffer for the next call; let a huge one (enormous K) go
            if buf.capacity() > 0 && buf.capacity() <= KEEP_IM2COL_BYTES {
                IM2COL.with(|c| c.set(buf));
            }
        }
        Ok(())
    };
    // few pixels (ResNet's 7x7 maps: 49 rows cut into blocks of 32 and 17 would leave one
    // thread idle a third of the time): blocks one after another, each GEMM threaded over its
    // columns
    let few = pixels < threads * PARALLEL_BLOCK_MIN_ROWS;
    if threads <= 1 || blocks < threads || few {
        for (bi, dst) in out.chunks_mut(rows * cout).enumerate() {
            run_block(bi, dst, threads)?;
        }
    } else {
        let dsts: Vec<Mutex<&mut [T]>> = out.chunks_mut(rows * cout).map(Mutex::new).collect();
        let results: Vec<Mutex<Result<()>>> = (0..blocks).map(|_| Mutex::new(Ok(()))).collect();
        parallel_for(threads, blocks, &|bi| {
            let mut dst = dsts[bi].lock().unwrap_or_else(|e| e.into_inner());
            let r = run_block(bi, &mut dst, 1);
            *results[bi].lock().unwrap_or_else(|e| e.into_inner()) = r;
        });
        for r in results {
            r.into_inner().unwrap_or_else(|e| e.into_inner())?;
        }
    }
    Ok((out, osp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::available_engines;

    /// Direct reference: exact integer conv on NCDHW-free indexing, then the same requant.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[u8],
        n: usize,
        sp: [usize; 3],
        cin: usize,
        w: &[i8],
        cout: usize,
        geom: &ConvGeometry,
        zp: i32,
    ) -> Vec<i64> {
        let osp = geom.output_size(sp).unwrap();
        let (g, cin_g, cout_g) = (geom.groups, cin / geom.groups, cout / geom.groups);
        let taps: usize = geom.kernel.iter().product();
        let mut out = vec![0i64; n * osp.iter().product::<usize>() * cout];
        let mut p = 0;
        for b in 0..n {
            for od in 0..osp[0] {
                for oh in 0..osp[1] {
                    for ow in 0..osp[2] {
                        for o in 0..cout {
                            let gi = o / cout_g;
                            let mut s = 0i64;
                            for c in 0..cin_g {
                                for kd in 0..geom.kernel[0] {
                                    for kh in 0..geom.kernel[1] {
                                        for kw in 0..geom.kernel[2] {
                                            let id = (od * geom.stride[0] + kd * geom.dilation[0])
                                                as isize
                                                - geom.padding[0] as isize;
                                            let ih = (oh * geom.stride[1] + kh * geom.dilation[1])
                                                as isize
                                                - geom.padding[1] as isize;
                                            let iw = (ow * geom.stride[2] + kw * geom.dilation[2])
                                                as isize
                                                - geom.padding[2] as isize;
                                            if id < 0
                                                || ih < 0
                                                || iw < 0
                                                || id as usize >= sp[0]
                                                || ih as usize >= sp[1]
                                                || iw as usize >= sp[2]
                                            {
                                                continue;
                                            }
                                            let pix = ((b * sp[0] + id as usize) * sp[1]
                                                + ih as usize)
                                                * sp[2]
                                                + iw as usize;
                                            let xv =
                                                x[pix * cin + gi * cin_g + c] as i64 - zp as i64;
                                            let t =
                                                (kd * geom.kernel[1] + kh) * geom.kernel[2] + kw;
                                            s += xv * w[(o * cin_g + c) * taps + t] as i64;
                                        }
                                    }
                                }
                            }
                            out[p * cout + o] = s;
                        }
                        p += 1;
                    }
                }
            }
        }
        let _ = g;
        out
    }

    #[test]
    fn conv_matches_direct_reference_on_every_engine() {
        // small problems on several threads too (restored below; results never depend on it)
        let old = crate::threading::set_parallel_min_macs(0);
        let cases = [
            // (n, spatial, cin, cout, kernel, stride, padding, dilation, groups)
            (
                1,
                [1, 5, 5],
                3,
                4,
                [1, 3, 3],
                [1, 1, 1],
                [0, 1, 1],
                [1, 1, 1],
                1,
            ),
            (
                2,
                [1, 7, 6],
                4,
                6,
                [1, 3, 2],
                [1, 2, 1],
                [0, 1, 0],
                [1, 1, 2],
                2,
            ),
            (
                1,
                [1, 6, 6],
                5,
                5,
                [1, 3, 3],
                [1, 1, 1],
                [0, 2, 2],
                [1, 2, 2],
                5,
            ), // depthwise, dilated
            (
                1,
                [1, 1, 9],
                3,
                2,
                [1, 1, 4],
                [1, 1, 2],
                [0, 0, 1],
                [1, 1, 1],
                1,
            ), // conv1d
            (
                1,
                [3, 4, 4],
                2,
                3,
                [2, 2, 2],
                [1, 1, 1],
                [1, 0, 1],
                [1, 1, 1],
                1,
            ), // conv3d
            (
                2,
                [1, 4, 5],
                5,
                7,
                [1, 1, 1],
                [1, 1, 1],
                [0, 0, 0],
                [1, 1, 1],
                1,
            ), // pointwise, K padded (5 -> 8)
            (
                1,
                [1, 6, 3],
                8,
                20,
                [1, 1, 1],
                [1, 1, 1],
                [0, 0, 0],
                [1, 1, 1],
                1,
            ), // pointwise, K = C
            (
                2,
                [1, 6, 7],
                16,
                8,
                [1, 3, 3],
                [1, 1, 2],
                [0, 1, 1],
                [1, 1, 1],
                4,
            ), // grouped: 4 in, 2 out channels per group
            (
                1,
                [1, 5, 5],
                32,
                48,
                [1, 3, 3],
                [1, 2, 1],
                [0, 2, 1],
                [1, 2, 1],
                8,
            ), // grouped: 4 in, 6 out per group, dilated
            (
                1,
                [2, 4, 4],
                24,
                36,
                [2, 3, 3],
                [1, 1, 1],
                [1, 1, 1],
                [1, 1, 1],
                3,
            ), // grouped conv3d: 8 in, 12 out per group
            (
                1,
                [1, 3, 9],
                80,
                30,
                [1, 1, 3],
                [1, 1, 1],
                [0, 0, 1],
                [1, 1, 1],
                2,
            ), // grouped conv1d: 40 in (a window past 64 bytes: the GEMM path), 15 out
            (
                1,
                [1, 4, 5],
                64,
                64,
                [1, 3, 3],
                [1, 1, 1],
                [0, 1, 1],
                [1, 1, 1],
                16,
            ), // grouped: 4 in, 4 out per group (ResNeXt-style)
            (
                2,
                [1, 5, 4],
                48,
                16,
                [1, 2, 3],
                [1, 1, 1],
                [0, 1, 1],
                [1, 1, 1],
                2,
            ), // grouped: 24 in (6 quads: two kernel passes), 8 out per group
            (
                1,
                [1, 6, 5],
                32,
                64,
                [1, 3, 3],
                [1, 1, 1],
                [0, 1, 1],
                [1, 1, 1],
                16,
            ), // grouped: 2 in (two groups per input dword), 4 out per group
            (
                2,
                [1, 5, 6],
                6,
                8,
                [1, 3, 2],
                [1, 2, 1],
                [0, 1, 1],
                [1, 1, 1],
                2,
            ), // grouped: 3 in (the second group straddles a dword), 4 out, C not a multiple of 4
            (
                1,
                [1, 4, 7],
                10,
                10,
                [1, 2, 3],
                [1, 1, 1],
                [0, 1, 0],
                [1, 1, 2],
                2,
            ), // grouped: 5 in, 5 out per group, dilated
            (
                1,
                [1, 5, 5],
                8,
                16,
                [1, 3, 3],
                [1, 1, 1],
                [0, 1, 1],
                [1, 1, 1],
                8,
            ), // grouped: 1 in, 2 out per group (a channel multiplier)
            (
                1,
                [1, 6, 7],
                16,
                8,
                [1, 3, 3],
                [1, 1, 1],
                [0, 1, 1],
                [1, 1, 1],
                1,
            ), // im2col runs of 48 bytes (two 32-byte moves)
            (
                2,
                [1, 5, 9],
                24,
                8,
                [1, 3, 3],
                [1, 1, 2],
                [0, 1, 2],
                [1, 1, 1],
                1,
            ), // im2col runs of 72 bytes (64-byte moves), stride 2 along the width
        ];
        for (ci, &(n, sp, cin, cout, kernel, stride, padding, dilation, groups)) in
            cases.iter().enumerate()
        {
            let geom = ConvGeometry {
                kernel,
                stride,
                padding,
                dilation,
                groups,
            };
            let taps: usize = kernel.iter().product();
            // inputs over the whole u8 range, and 7-bit ones with a few bytes above 127 (AVX2
            // keeps its 7-bit kernel and computes the rows holding them apart)
            for sparse in [false, true] {
                let x: Vec<u8> = (0..n * sp.iter().product::<usize>() * cin)
                    .map(|i| {
                        let v = ((i * 37 + ci * 11) % 256) as u8;
                        match sparse {
                            false => v,
                            true if i % 211 == 5 => v | 128,
                            true => v & 127,
                        }
                    })
                    .collect();
                let w: Vec<i8> = (0..cout * cin / groups * taps)
                    .map(|i| ((i * 53 + 7) % 255) as i32 as i8)
                    .collect();
                let pc = PackedConv::new(&w, cout, cin, geom, &[1.0], &[0]).unwrap();
                let want = reference(&x, n, sp, cin, &w, cout, &geom, 9);
                // A power-of-two output scale makes acc / scale exact in f32, so the expected
                // value is exact; it is chosen so that outputs spread over the range unclamped.
                let amax = want.iter().map(|v| v.abs()).max().unwrap().max(1) as f64;
                let out_scale = (amax / 100.0).log2().ceil().exp2().max(1.0) as f32;
                let expect: Vec<i8> = want
                    .iter()
                    .map(|&v| {
                        ((v as f64) / out_scale as f64)
                            .round_ties_even()
                            .clamp(-128.0, 127.0) as i8
                    })
                    .collect();
                let clamped = expect.iter().filter(|&&v| v == -128 || v == 127).count();
                assert!(
                    clamped * 10 <= expect.len(),
                    "case {ci}: too many outputs clamped"
                );
                let distinct: std::collections::HashSet<i8> = expect.iter().copied().collect();
                assert!(
                    distinct.len() >= expect.len().min(20),
                    "case {ci}: outputs too uniform"
                );
                let args = ConvArgs {
                    x_scale: 1.0,
                    x_zp: 9,
                    bias: None,
                    out_scale,
                    out_zp: 0,
                    qmin: -128,
                    qmax: 127,
                    relu: false,
                };
                for e in available_engines() {
                    // whole blocks, blocks of one pixel, of 5 pixels; one and three threads
                    for (block, threads) in [(None, 1), (Some(1), 1), (Some(5), 3), (None, 3)] {
                        let (got, _) = conv_static_blocked::<i8>(
                            e,
                            &x,
                            n,
                            sp,
                            &pc,
                            &args,
                            threads,
                            block,
                            Vec::new(),
                        )
                        .unwrap();
                        assert_eq!(
                            got,
                            expect,
                            "case {ci} sparse {sparse} engine {} block {block:?} threads {threads}",
                            e.name()
                        );
                        // u8 outputs: the requantizing tiles (zero point 128)
                        let args_u8 = ConvArgs {
                            out_zp: 128,
                            qmin: 0,
                            qmax: 255,
                            ..args
                        };
                        let (got, _) = conv_static_blocked::<u8>(
                            e,
                            &x,
                            n,
                            sp,
                            &pc,
                            &args_u8,
                            threads,
                            block,
                            Vec::new(),
                        )
                        .unwrap();
                        let expect_u8: Vec<u8> =
                            expect.iter().map(|&v| (v as i32 + 128) as u8).collect();
                        assert_eq!(
                            got,
                            expect_u8,
                            "u8: case {ci} sparse {sparse} engine {} block {block:?} threads {threads}",
                            e.name()
                        );
                    }
                }
            }
        }
        crate::threading::set_parallel_min_macs(old);
    }

    /// Depthwise convs (the direct kernel, and the engines' all-taps-inside fast paths) against
    /// a direct reference with per-channel weight zero points, on edge channel counts, kernel
    /// sizes, strides, dilations and 1d/3d, every engine, one and three threads.
    #[test]
    fn depthwise_matches_reference_on_every_engine_and_thread_count() {
        let old = crate::threading::set_parallel_min_macs(0);
        // (spatial, kernel, stride, padding, dilation)
        type Geom = ([usize; 3], [usize; 3], [usize; 3], [usize; 3], [usize; 3]);
        let geoms: [Geom; 8] = [
            ([1, 9, 8], [1, 3, 3], [1, 1, 1], [0, 1, 1], [1, 1, 1]),
            ([1, 3, 2], [1, 3, 3], [1, 1, 1], [0, 2, 3], [1, 1, 1]),
            ([1, 7, 9], [1, 7, 7], [1, 2, 3], [0, 3, 3], [1, 1, 1]),
            ([1, 11, 10], [1, 5, 5], [1, 2, 2], [0, 2, 2], [1, 1, 1]),
            ([1, 9, 9], [1, 3, 3], [1, 2, 1], [0, 2, 1], [1, 2, 2]),
            ([1, 1, 13], [1, 1, 3], [1, 1, 1], [0, 0, 1], [1, 1, 1]),
            ([4, 5, 5], [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1]),
            ([1, 6, 7], [1, 2, 4], [1, 3, 2], [0, 0, 3], [1, 1, 1]),
        ];
        for (gi, &(sp, kernel, stride, padding, dilation)) in geoms.iter().enumerate() {
            for &c in &[1usize, 7, 15, 16, 17, 33, 48, 63, 64, 65, 144] {
                let geom = ConvGeometry {
                    kernel,
                    stride,
                    padding,
                    dilation,
                    groups: c,
                };
                let taps: usize = kernel.iter().product();
                let n = 2;
                // inputs: the full u8 range around zero point 200; 7-bit (AVX2's line kernel
                // takes every line); 7-bit with a few bytes above 127 (some lines, not all,
                // go to the exact pixel-run kernel there)
                let xin = (gi + c) % 3;
                let zx = [200, 60, 3][xin];
                let x: Vec<u8> = (0..n * sp.iter().product::<usize>() * c)
                    .map(|i| {
                        let v = (i * 97 + gi * 13 + c) % 256;
                        match xin {
                            0 => v as u8,
                            1 => (v % 128) as u8,
                            _ if i % 101 == 7 => 128 + (v % 128) as u8,
                            _ => (v % 128) as u8,
                        }
                    })
                    .collect();
                // weights: full range with zero points (w − zw past i8: the pixel-run
                // kernels), full range symmetric and small with zero points (w − zw fits in
                // i8: the engines' line kernels)
                for variant in 0..3 {
                    let w: Vec<i8> = (0..c * taps)
                        .map(|i| {
                            let v = ((i * 53 + 7 * c) % 256) as u8 as i8;
                            if variant == 2 {
                                v / 3
                            } else {
                                v
                            }
                        })
                        .collect();
                    let zw: Vec<i32> = (0..c)
                        .map(|j| {
                            if variant == 1 {
                                0
                            } else {
                                (j as i32 * 37) % 21 - 10
                            }
                        })
                        .collect();
                    let scales = vec![1.0f32; c];
                    let pc = PackedConv::new(&w, c, c, geom, &scales, &zw).unwrap();
                    assert!(pc.depthwise.is_some());
                    let osp = geom.output_size(sp).unwrap();
                    // exact accumulators
                    let mut want = Vec::new();
                    for b in 0..n {
                        for od in 0..osp[0] {
                            for oh in 0..osp[1] {
                                for ow in 0..osp[2] {
                                    for ch in 0..c {
                                        let mut s = 0i64;
                                        for t in 0..taps {
                                            let (kd, kh, kw) = (
                                                t / (kernel[1] * kernel[2]),
                                                (t / kernel[2]) % kernel[1],
                                                t % kernel[2],
                                            );
                                            let o = [od, oh, ow];
                                            let kk = [kd, kh, kw];
                                            let mut idx = [0usize; 3];
                                            let mut inside = true;
                                            for a in 0..3 {
                                                let v = (o[a] * stride[a] + kk[a] * dilation[a])
                                                    as isize
                                                    - padding[a] as isize;
                                                inside &= v >= 0 && (v as usize) < sp[a];
                                                idx[a] = v.max(0) as usize;
                                            }
                                            if inside {
                                                let pix = ((b * sp[0] + idx[0]) * sp[1] + idx[1])
                                                    * sp[2]
                                                    + idx[2];
                                                let xv = x[pix * c + ch] as i64 - zx as i64;
                                                s += xv * (w[ch * taps + t] as i64 - zw[ch] as i64);
                                            }
                                        }
                                        want.push(s);
                                    }
                                }
                            }
                        }
                    }
                    let amax = want.iter().map(|v| v.abs()).max().unwrap().max(1) as f64;
                    let out_scale = (amax / 100.0).log2().ceil().exp2().max(1.0) as f32;
                    let expect: Vec<i8> = want
                        .iter()
                        .map(|&v| {
                            ((v as f64) / out_scale as f64)
                                .round_ties_even()
                                .clamp(-128.0, 127.0) as i8
                        })
                        .collect();
                    let args = ConvArgs {
                        x_scale: 1.0,
                        x_zp: zx,
                        bias: None,
                        out_scale,
                        out_zp: 0,
                        qmin: -128,
                        qmax: 127,
                        relu: false,
                    };
                    // u8 outputs (requantized inside the line kernels), zero point 128, with
                    // and without a fused ReLU
                    let expect_u8 = |relu: bool| -> Vec<u8> {
                        want.iter()
                            .map(|&v| {
                                let q = ((v as f64) / out_scale as f64).round_ties_even() + 128.0;
                                q.clamp(if relu { 128.0 } else { 0.0 }, 255.0) as u8
                            })
                            .collect()
                    };
                    for e in available_engines() {
                        for threads in [1, 3] {
                            let (got, _) = conv_static_blocked::<i8>(
                                e,
                                &x,
                                n,
                                sp,
                                &pc,
                                &args,
                                threads,
                                None,
                                Vec::new(),
                            )
                            .unwrap();
                            assert_eq!(
                            got,
                            expect,
                            "geometry {gi} channels {c} weights {variant} engine {} threads {threads}",
                            e.name()
                        );
                            for relu in [false, true] {
                                let args_u8 = ConvArgs {
                                    out_zp: 128,
                                    qmin: 0,
                                    qmax: 255,
                                    relu,
                                    ..args
                                };
                                let (got, _) = conv_static_blocked::<u8>(
                                    e,
                                    &x,
                                    n,
                                    sp,
                                    &pc,
                                    &args_u8,
                                    threads,
                                    None,
                                    Vec::new(),
                                )
                                .unwrap();
                                assert_eq!(
                                    got,
                                    expect_u8(relu),
                                    "u8 relu {relu} geometry {gi} channels {c} weights {variant} \
                                     engine {} threads {threads}",
                                    e.name()
                                );
                            }
                        }
                    }
                }
            }
        }
        crate::threading::set_parallel_min_macs(old);
    }

    #[test]
    fn unpack_returns_the_packed_weights_in_torch_layout() {
        for (cin, cout, groups, kernel) in [
            (6, 4, 2, [1, 3, 2]),
            (5, 5, 5, [1, 3, 3]),
            (3, 8, 1, [2, 2, 3]),
            (16, 16, 16, [1, 1, 5]),
        ] {
            let geom = ConvGeometry {
                kernel,
                stride: [1, 1, 1],
                padding: [0, 0, 0],
                dilation: [1, 1, 1],
                groups,
            };
            let n = cout * cin / groups * kernel.iter().product::<usize>();
            let w: Vec<i8> = (0..n).map(|i| ((i * 71 + 3) % 256) as u8 as i8).collect();
            let pc = PackedConv::new(&w, cout, cin, geom, &[0.5], &[0]).unwrap();
            assert_eq!(pc.unpack(), w, "cin {cin} cout {cout} groups {groups}");
        }
    }

    #[test]
    fn many_blocks_on_many_threads_equal_one_block_on_one() {
        let old = crate::threading::set_parallel_min_macs(0);
        let geom = ConvGeometry {
            kernel: [1, 3, 3],
            stride: [1, 1, 1],
            padding: [0, 1, 1],
            dilation: [1, 1, 1],
            groups: 1,
        };
        let (n, sp, cin, cout) = (2, [1, 23, 19], 8, 20);
        let x: Vec<u8> = (0..n * 23 * 19 * cin)
            .map(|i| ((i * 97) % 251) as u8)
            .collect();
        let w: Vec<i8> = (0..cout * cin * 9)
            .map(|i| ((i * 31) % 200) as i32 as i8)
            .collect();
        let pc = PackedConv::new(&w, cout, cin, geom, &[0.02], &[0]).unwrap();
        let args = ConvArgs {
            x_scale: 0.05,
            x_zp: 3,
            bias: None,
            out_scale: 0.7,
            out_zp: 128,
            qmin: 0,
            qmax: 255,
            relu: false,
        };
        for e in available_engines() {
            let (one, _) = conv_static_blocked::<u8>(
                e,
                &x,
                n,
                sp,
                &pc,
                &args,
                1,
                Some(usize::MAX),
                Vec::new(),
            )
            .unwrap();
            for (block, threads) in [(Some(24), 2), (Some(7), 4), (None, 2)] {
                let (got, _) =
                    conv_static_blocked::<u8>(e, &x, n, sp, &pc, &args, threads, block, Vec::new())
                        .unwrap();
                assert_eq!(got, one, "engine {} block {block:?}", e.name());
            }
        }
        crate::threading::set_parallel_min_macs(old);
    }

    #[test]
    fn reused_output_buffers_give_the_same_bytes_on_every_path() {
        // GEMM (3x3, 1x1), depthwise and grouped paths write every output element: a recycled
        // buffer full of garbage, longer or shorter than the output, changes nothing
        let cases = [
            ([1, 3, 3], [1, 1, 1], [0, 1, 1], [1, 1, 1], 1, 8, 20),
            ([1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 1, 1], 1, 16, 24),
            ([1, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1], 1, 16, 24),
            ([1, 3, 3], [1, 2, 2], [0, 1, 1], [1, 1, 1], 32, 32, 32),
            ([1, 3, 3], [1, 1, 1], [0, 1, 1], [1, 1, 1], 4, 16, 16),
            ([1, 3, 3], [1, 1, 1], [0, 2, 2], [1, 2, 2], 1, 8, 16),
            ([3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], 1, 4, 8),
        ];
        for (kernel, stride, padding, dilation, groups, cin, cout) in cases {
            let geom = ConvGeometry {
                kernel,
                stride,
                padding,
                dilation,
                groups,
            };
            let (n, sp) = (2, [if kernel[0] == 3 { 3 } else { 1 }, 13, 11]);
            let x: Vec<u8> = (0..n * sp[0] * 13 * 11 * cin)
                .map(|i| ((i * 97) % 251) as u8)
                .collect();
            let kk = kernel[0] * kernel[1] * kernel[2];
            let w: Vec<i8> = (0..cout * cin / groups * kk)
                .map(|i| ((i * 31) % 200) as i32 as i8)
                .collect();
            let pc = PackedConv::new(&w, cout, cin, geom, &[0.02], &[0]).unwrap();
            for e in available_engines() {
                let run = |buf: Vec<u8>| {
                    conv_static_reusing::<u8>(
                        e, &x, n, sp, 0.05, 3, &pc, None, 0.7, 128, 0, 255, true, 2, buf,
                    )
                    .unwrap()
                };
                let (fresh, osp) = run(Vec::new());
                for len in [fresh.len() * 2, fresh.len() / 2, fresh.len()] {
                    let (got, got_sp) = run(vec![0xA5; len]);
                    assert_eq!(
                        (got, got_sp),
                        (fresh.clone(), osp),
                        "engine {} groups {groups}",
                        e.name()
                    );
                }
            }
        }
    }

    #[test]
    fn hostile_geometry_is_an_error_not_a_wrap_or_abort() {
        let pc = PackedConv::new(
            &[1],
            1,
            1,
            ConvGeometry {
                kernel: [1, 1, 1],
                stride: [1; 3],
                padding: [0; 3],
                dilation: [1; 3],
                groups: 1,
            },
            &[1.0],
            &[0],
        )
        .unwrap();
        let run = |pc: &PackedConv| {
            conv_static::<u8>(
                Engine::Scalar,
                &[7],
                1,
                [1, 1, 1],
                1.0,
                0,
                pc,
                None,
                1.0,
                0,
                0,
                255,
                false,
                1,
            )
        };
        for padding in [usize::MAX / 2, 1 << 62, usize::MAX] {
            let mut p = pc.clone();
            p.geom.padding = [0, 0, padding];
            assert!(
                matches!(run(&p), Err(KernelError::TooLarge(_))),
                "padding {padding}"
            );
        }
        let dilated = PackedConv::new(
            &[1, 1],
            1,
            1,
            ConvGeometry {
                kernel: [1, 1, 2],
                stride: [1; 3],
                padding: [0; 3],
                dilation: [1, 1, usize::MAX],
                groups: 1,
            },
            &[1.0],
            &[0],
        )
        .unwrap();
        assert!(matches!(run(&dilated), Err(KernelError::TooLarge(_))));
        // an output too large to allocate is an error, not an abort
        let mut p = pc.clone();
        p.geom.padding = [1 << 20, 1 << 20, 1 << 20];
        assert!(matches!(
            run(&p),
            Err(KernelError::OutOfMemory(_)) | Err(KernelError::TooLarge(_))
        ));
    }

    #[test]
    fn bad_geometry_and_shapes_are_errors() {
        let geom = ConvGeometry {
            kernel: [1, 3, 3],
            stride: [1, 1, 1],
            padding: [0; 3],
            dilation: [1; 3],
            groups: 2,
        };
        assert!(PackedConv::new(&[0; 27], 3, 3, geom, &[1.0], &[0]).is_err()); // channels not divisible
        let geom1 = ConvGeometry { groups: 1, ..geom };
        let pc = PackedConv::new(&[0; 27], 1, 3, geom1, &[1.0], &[0]).unwrap();
        assert!(conv_static::<u8>(
            Engine::Scalar,
            &[0; 12],
            1,
            [1, 2, 2],
            1.0,
            0,
            &pc,
            None,
            1.0,
            0,
            0,
            255,
            false,
            1
        )
        .is_err());
    }
}
