//! Buffers whose first element sits on a 64-byte boundary (a cache line; one zmm), so that
//! vector loads of whole 64-byte blocks never straddle two lines.

use crate::error::{try_vec, Result};

/// Bytes of the alignment.
pub(crate) const ALIGN: usize = 64;

/// `len` elements starting on a 64-byte boundary inside a slightly larger `Vec`.
#[derive(Debug)]
pub(crate) struct Aligned<T> {
    v: Vec<T>,
    off: usize,
    len: usize,
}

impl<T: Copy> Clone for Aligned<T> {
    /// A clone aligned on its own (a plain `Vec` clone may land elsewhere modulo 64).
    fn clone(&self) -> Self {
        let mut v = self.v.clone();
        let off = v.as_ptr().align_offset(ALIGN).min(v.len() - self.len);
        v.copy_within(self.off..self.off + self.len, off);
        Aligned {
            v,
            off,
            len: self.len,
        }
    }
}

impl<T: Copy> Aligned<T> {
    /// `len` copies of `fill` (fails cleanly when the memory is not there).
    pub(crate) fn new(len: usize, fill: T, what: &str) -> Result<Self> {
        let extra = ALIGN / std::mem::size_of::<T>().max(1);
        let v = try_vec(len.saturating_add(extra), fill, what)?;
        let off = v.as_ptr().align_offset(ALIGN).min(extra);
        Ok(Aligned { v, off, len })
    }

    /// `len` elements in the storage of `v` (a buffer from [`Aligned::into_vec`]: callers that
    /// run often keep one per thread instead of allocating and faulting in fresh memory). The
    /// elements hold whatever the buffer held, or `fill` where it grows.
    pub(crate) fn reuse(mut v: Vec<T>, len: usize, fill: T, what: &str) -> Result<Self> {
        let extra = ALIGN / std::mem::size_of::<T>().max(1);
        let need = len.saturating_add(extra);
        if v.len() < need {
            v.try_reserve_exact(need - v.len()).map_err(|_| {
                crate::error::KernelError::OutOfMemory(format!(
                    "cannot allocate {what} ({need} elements)"
                ))
            })?;
            v.resize(need, fill);
        }
        let off = v.as_ptr().align_offset(ALIGN).min(extra);
        Ok(Aligned { v, off, len })
    }

    /// The storage back, for [`Aligned::reuse`].
    pub(crate) fn into_vec(self) -> Vec<T> {
        self.v
    }

    /// A copy of `src`, aligned.
    pub(crate) fn from_slice(src: &[T], what: &str) -> Result<Self>
    where
        T: Default,
    {
        let mut a = Self::new(src.len(), T::default(), what)?;
        a.as_mut_slice().copy_from_slice(src);
        Ok(a)
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        &self.v[self.off..self.off + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.v[self.off..self.off + self.len]
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.v.len() * std::mem::size_of::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_and_keeps_its_length() {
        for len in [0usize, 1, 7, 64, 1000] {
            let a = Aligned::new(len, 3u8, "test").unwrap();
            assert_eq!(a.as_slice().len(), len);
            assert!(a.as_slice().iter().all(|&v| v == 3));
            if len > 0 {
                assert_eq!(a.as_slice().as_ptr() as usize % ALIGN, 0);
            }
            let r = Aligned::reuse(a.into_vec(), len + 3, 9u8, "test").unwrap();
            assert_eq!(r.as_slice().len(), len + 3);
            assert_eq!(r.as_slice().as_ptr() as usize % ALIGN, 0);
            let src: Vec<i32> = (0..len as i32).collect();
            let b = Aligned::from_slice(&src, "test").unwrap().clone();
            assert_eq!(b.as_slice(), &src[..]);
            if len > 0 {
                assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
            }
        }
    }
}
