//! An ordered worker pool: item `k` is made by thread `k % workers` and items are received in
//! index order, so what comes out never depends on thread timing. The data loader and the FID
//! feature extraction decode images on it.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// Items `start, start + 1, ...` from `workers` threads, `prefetch` queued per thread; the stream
/// ends at the first index whose item is `None`.
pub struct OrderedPool<T> {
    receivers: Vec<Receiver<T>>,
    next: usize,
    handles: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> OrderedPool<T> {
    /// Starts the threads. `make(k, state)` builds item `k`; each thread keeps its own `state`
    /// (a cache), starting from `S::default()`.
    pub fn new<S, F>(workers: usize, prefetch: usize, start: usize, make: F) -> Self
    where
        S: Default,
        F: Fn(usize, &mut S) -> Option<T> + Send + Sync + 'static,
    {
        let workers = workers.max(1);
        let make = Arc::new(make);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(prefetch.max(1));
            let make = make.clone();
            handles.push(std::thread::spawn(move || {
                let mut state = S::default();
                let mut k = start + w;
                while let Some(item) = make(k, &mut state) {
                    if tx.send(item).is_err() {
                        return; // the pool was dropped
                    }
                    k += workers;
                }
            }));
            receivers.push(rx);
        }
        Self {
            receivers,
            next: 0,
            handles,
        }
    }
}

impl<T> Iterator for OrderedPool<T> {
    type Item = T;

    /// Blocks until the next item in order is ready; `None` once the stream has ended.
    fn next(&mut self) -> Option<T> {
        let w = self.next % self.receivers.len();
        let item = self.receivers[w].recv().ok()?;
        self.next += 1;
        Some(item)
    }
}

impl<T> Drop for OrderedPool<T> {
    fn drop(&mut self) {
        self.receivers.clear(); // unblocks workers waiting on a full queue
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
