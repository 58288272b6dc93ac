//! What the integration tests share: a tiny deterministic generator (xorshift), so failures
//! reproduce.

// each test crate uses a different subset
#![allow(dead_code)]

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A value in `0..=max`.
    pub fn u8_upto(&mut self, max: u8) -> u8 {
        (self.next() % (max as u64 + 1)) as u8
    }
    pub fn i8(&mut self) -> i8 {
        self.next() as u8 as i8
    }
    /// A value in `[-1, 1]` on a 1e-4 grid.
    pub fn f32(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 - 1.0
    }
}
