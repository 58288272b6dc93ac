//! Manual decoding of the fuzzer's bytes into sizes, qparams and data.
//!
//! Reading past the end yields zeros, so every byte string is a valid input. Bulk data (weights,
//! activations, floats) is taken from the input while it lasts and then from a xorshift stream
//! seeded by the input, so short inputs still make large, varied tensors.

/// Sizes that hit the kernels' tile edges (panels of 16 columns, K groups of 4, row tiles).
pub const EDGE_SIZES: [usize; 24] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65,
];

/// Sizes no buffer can have: products and sums of them overflow, or allocate absurd amounts.
pub const HOSTILE_SIZES: [usize; 16] = [
    usize::MAX,
    usize::MAX - 1,
    usize::MAX / 2,
    usize::MAX / 2 + 1,
    usize::MAX / 3,
    usize::MAX / 4 + 1,
    1 << 62,
    1 << 48,
    1 << 40,
    1 << 33,
    (1 << 32) + 1,
    1 << 32,
    u32::MAX as usize,
    1 << 31,
    1 << 24,
    1 << 20,
];

/// Floats that are interesting to the quantize and requantize rules.
pub const SPECIAL_F32: [f32; 36] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    -0.5,
    1.5,
    -1.5,
    2.5,
    -2.5,
    127.5,
    128.5,
    255.5,
    -128.5,
    f32::NAN,
    -f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::MAX,
    f32::MIN,
    f32::MIN_POSITIVE,
    -f32::MIN_POSITIVE,
    1e-45,  // smallest subnormal
    -1e-45, // smallest negative subnormal
    6.1e-5, // FBGEMM's smallest dynamic scale
    1e-3,
    0.1,
    1e30,
    -1e30,
    4194303.5, // 2^22 - 0.5: the edge of the rounding trick
    8388608.0, // 2^23
    12582912.0,
    16777217.0, // 2^24 + 1 (rounds to 2^24)
    2147483648.0,
    -2147483904.0,
    65504.0,
];

pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
    rng: u64,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        // seed from the whole input (FNV-1a), so the xorshift tail depends on every byte
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        Input {
            data,
            pos: 0,
            rng: h | 1,
        }
    }

    /// Bytes not consumed yet.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        (self.u32() as u64) | ((self.u32() as u64) << 32)
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// True with probability about `num/256`.
    pub fn chance(&mut self, num: u8) -> bool {
        self.u8() < num
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 256 {
            self.u8() as usize % n
        } else {
            self.u32() as usize % n
        }
    }

    /// A value in `lo..=hi`.
    pub fn range_i64(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo) as u64 + 1;
        lo + (self.u64() % span) as i64
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    /// The xorshift stream (used once the input is exhausted).
    pub fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The next input byte, or a pseudo-random one past the end.
    pub fn byte(&mut self) -> u8 {
        if self.pos < self.data.len() {
            self.u8()
        } else {
            self.rand() as u8
        }
    }

    /// A size in `0..=max`: usually a tile-edge size, else any.
    pub fn size(&mut self, max: usize) -> usize {
        let b = self.u8();
        if b < 170 {
            let edges: Vec<usize> = EDGE_SIZES.iter().copied().filter(|&s| s <= max).collect();
            edges[b as usize % edges.len()]
        } else {
            self.below(max + 1)
        }
    }

    /// A size in `1..=max`.
    pub fn size_nonzero(&mut self, max: usize) -> usize {
        self.size(max).max(1)
    }

    /// A size no real buffer has.
    pub fn hostile_size(&mut self) -> usize {
        if self.chance(220) {
            self.pick(&HOSTILE_SIZES)
        } else {
            self.u64() as usize
        }
    }

    /// Any float: special values, raw bits, or small dyadic numbers (full of exact ties).
    pub fn f32_any(&mut self) -> f32 {
        match self.u8() % 8 {
            0 | 1 => self.pick(&SPECIAL_F32),
            2 => f32::from_bits(self.u32()),
            _ => self.f32_small(),
        }
    }

    /// A finite float of moderate size: `i16 / 2^s`, `s` in `0..16`.
    pub fn f32_small(&mut self) -> f32 {
        let v = self.u16() as i16 as f32;
        let s = self.u8() % 16;
        v / (1u32 << s) as f32
    }

    /// Like [`Input::f32_small`] but from the byte stream (random past the end).
    pub fn f32_data(&mut self) -> f32 {
        let v = i16::from_le_bytes([self.byte(), self.byte()]) as f32;
        let s = self.byte() % 16;
        v / (1u32 << s) as f32
    }

    /// A float tensor: `len` values, mostly moderate, with a few specials when `specials`.
    pub fn f32_vec(&mut self, len: usize, specials: bool) -> Vec<f32> {
        let mode = self.u8() % 8;
        let scale = self.f32_small().abs().max(1.0 / 64.0);
        (0..len)
            .map(|_| match mode {
                0 => self.f32_data() * scale,
                1 if specials => {
                    if self.byte() < 16 {
                        let i = self.byte() as usize % SPECIAL_F32.len();
                        SPECIAL_F32[i]
                    } else {
                        self.f32_data()
                    }
                }
                2 => self.byte() as f32 * 0.5 - 32.0, // many exact ties
                3 => f32::from_bits(self.rand() as u32 & 0xbfff_ffff), // |x| < 2 or tiny
                _ => self.f32_data(),
            })
            .collect()
    }

    /// [`Input::f32_vec`] with specials with probability `num/256`.
    pub fn f32_vec_sp(&mut self, len: usize, num: u8) -> Vec<f32> {
        let sp = self.chance(num);
        self.f32_vec(len, sp)
    }

    /// A scale that the kernels accept (normal, > 0), spread over many binades.
    pub fn valid_scale(&mut self) -> f32 {
        match self.u8() % 8 {
            0 => self.pick(&[
                1.0,
                0.5,
                0.1,
                1e-3,
                6.1e-5,
                f32::MIN_POSITIVE,
                3.4e38,
                f32::MAX,
                1e20,
                1e-20,
            ]),
            1 => {
                // any positive finite bit pattern
                let b = self.u32() & 0x7fff_ffff;
                let v = f32::from_bits(b);
                if v.is_normal() {
                    v
                } else {
                    0.25
                }
            }
            _ => {
                let e = self.range_i64(-16, 4) as i32;
                let m = 1.0 + (self.u16() as f32) / 65536.0;
                m * 2f32.powi(e)
            }
        }
    }

    /// A scale, invalid (0, negative, subnormal, NaN, ∞) with probability `bad/256`.
    pub fn scale(&mut self, bad: u8) -> f32 {
        if self.chance(bad) {
            self.pick(&[
                0.0,
                -0.0,
                -1.0,
                -1e-45,
                1e-45,
                1e-40,
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
            ])
        } else {
            self.valid_scale()
        }
    }

    /// An i32 that is usually in `lo..=hi`, sometimes just outside, sometimes extreme.
    pub fn i32_around(&mut self, lo: i32, hi: i32, bad: u8) -> i32 {
        if self.chance(bad) {
            self.pick(&[
                lo.saturating_sub(1),
                hi.saturating_add(1),
                i32::MIN,
                i32::MAX,
                i32::MIN + 1,
                -1,
                256,
                -129,
                128,
                1 << 24,
            ])
        } else {
            self.range_i64(lo as i64, hi as i64) as i32
        }
    }

    /// `len` bytes of u8 data in `0..=max`, or an extreme fill.
    pub fn u8_vec(&mut self, len: usize) -> Vec<u8> {
        match self.u8() % 8 {
            0 => vec![255; len],
            1 => vec![self.u8(); len],
            2 => (0..len).map(|_| self.byte() & 127).collect(), // 7-bit: AVX2's vpmaddubsw kernel
            3 => (0..len)
                .map(|_| if self.byte() & 1 == 0 { 0 } else { 255 })
                .collect(),
            _ => (0..len).map(|_| self.byte()).collect(),
        }
    }

    /// `len` int8 values, or an extreme fill.
    pub fn i8_vec(&mut self, len: usize) -> Vec<i8> {
        match self.u8() % 8 {
            0 => vec![-128; len],
            1 => vec![127; len],
            2 => vec![self.u8() as i8; len],
            3 => (0..len)
                .map(|_| if self.byte() & 1 == 0 { -128 } else { 127 })
                .collect(),
            _ => (0..len).map(|_| self.byte() as i8).collect(),
        }
    }

    /// A length that is `want` most of the time and off by a little otherwise (`bad/256`).
    pub fn len_around(&mut self, want: usize, bad: u8) -> usize {
        if self.chance(bad) {
            match self.u8() % 3 {
                0 => want + 1,
                1 => want.saturating_sub(1),
                _ => self.below(130),
            }
        } else {
            want
        }
    }
}
