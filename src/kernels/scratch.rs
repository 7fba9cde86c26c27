//! Per-thread float buffers that the kernels' intermediate results (patch matrices, grouped
//! GEMM outputs) reuse from one call to the next, instead of a fresh zero-filled allocation
//! each time.
//!
//! rayon's `for_each_init` runs its init once per split of the work, not once per thread, so a
//! buffer made there was allocated and zero-filled about once per image (measured: memset
//! 4.6% of the FID Inception forward, inside the convolution's workers). Here a thread keeps
//! up to [`KEPT`] buffers; a request takes the smallest that is large enough (or grows the
//! largest), and hands it back when dropped. Contents are unspecified: zeros where the buffer
//! grew, otherwise what its last user left, so every user writes before it reads.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers a thread keeps between uses (a kernel holds at most three at once).
const KEPT: usize = 4;

thread_local! {
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// `len` floats borrowed from this thread's buffers (see the module doc).
pub(super) struct Scratch {
    buf: Vec<f32>,
    /// Floats before the first one handed out, which starts on a 64-byte boundary.
    skip: usize,
    len: usize,
}

/// Floats in a 64-byte cache line (and AVX-512 vector).
const LINE: usize = 16;

impl Scratch {
    /// A buffer of `len` floats starting on a 64-byte boundary, contents unspecified.
    pub(super) fn take(len: usize) -> Self {
        let mut buf = FREE.with(|free| {
            let mut free = free.borrow_mut();
            // The smallest that fits, else the largest (grown below).
            let fit = (0..free.len())
                .filter(|&i| free[i].len() >= len)
                .min_by_key(|&i| free[i].len())
                .or_else(|| (0..free.len()).max_by_key(|&i| free[i].len()));
            fit.map(|i| free.swap_remove(i)).unwrap_or_default()
        });
        if buf.len() < len + LINE - 1 {
            buf.resize(len + LINE - 1, 0.0);
        }
        let skip = buf.as_ptr().align_offset(LINE * 4);
        assert!(skip < LINE, "f32 buffers are 4-byte aligned");
        Self { buf, skip, len }
    }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.skip..self.skip + self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.skip..self.skip + self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // `try_with`: a buffer dropped while the thread exits is simply freed.
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            free.push(buf);
            if free.len() > KEPT {
                // Keep the largest.
                let smallest = (0..free.len()).min_by_key(|&i| free[i].len());
                if let Some(i) = smallest {
                    free.swap_remove(i);
                }
            }
        });
    }
}

/// Fills every rayon worker's and this thread's kept buffers with NaN (as many as are kept,
/// a million floats each), so that a kernel reading scratch it did not write shows NaN in a
/// test.
#[cfg(test)]
pub(super) fn poison() {
    let fill = || {
        let held: Vec<Scratch> = (0..KEPT)
            .map(|_| {
                let mut s = Scratch::take(1 << 20);
                s.fill(f32::NAN);
                s
            })
            .collect();
        drop(held);
    };
    rayon::broadcast(|_| fill());
    fill();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized() {
        let first = {
            let mut a = Scratch::take(100);
            assert_eq!(a.len(), 100);
            a[99] = 7.0;
            a.as_ptr()
        };
        // The same thread gets the same buffer back, at the requested length.
        let b = Scratch::take(50);
        assert_eq!(b.len(), 50);
        assert_eq!(b.as_ptr(), first);
        // Held buffers are distinct; a larger request grows one.
        let c = Scratch::take(1000);
        assert_eq!(c.len(), 1000);
        assert_ne!(c.as_ptr(), b.as_ptr());
    }
}
