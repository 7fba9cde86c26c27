//! Threaded, bounded, deterministic batch loader.
//!
//! Batch `k` is a pure function of `(seed, k)`: the epoch's permutation comes from the seed and
//! the epoch number, each sample's augmentation from `(seed, k, slot)`. Workers decode batches
//! ahead into bounded queues (one per worker, read round-robin), so the order never depends on
//! thread timing and resuming at batch `k` reproduces the exact stream.

use super::Dataset;
use super::pool::OrderedPool;
use super::transform::{Crop, push_chw, resize_crop};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

/// A batch of images as NCHW floats in [-1, 1] plus labels and dataset indices.
#[derive(Clone, Debug)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    pub indices: Vec<usize>,
    pub res: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images on `device` as `[B, 3, res, res]`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<4> {
        let n = self.len();
        Tensor::from_data(
            TensorData::new(self.images.clone(), [n, 3, self.res, self.res]),
            device,
        )
    }

    /// `parts` consecutive shards of equal size (the batch length must be a multiple of it).
    pub fn split(&self, parts: usize) -> Vec<Batch> {
        let per = self.len() / parts;
        let px = 3 * self.res * self.res;
        (0..parts)
            .map(|r| Batch {
                images: self.images[r * per * px..(r + 1) * per * px].to_vec(),
                labels: self.labels[r * per..(r + 1) * per].to_vec(),
                indices: self.indices[r * per..(r + 1) * per].to_vec(),
                res: self.res,
            })
            .collect()
    }

    /// Keeps the first `n` images.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.images.truncate(n * 3 * self.res * self.res);
            self.labels.truncate(n);
            self.indices.truncate(n);
        }
    }
}

/// Which images a batch holds.
#[derive(Clone, Copy, Debug)]
pub enum Order {
    /// Endless shuffled epochs (full batches only), random crop + optional flip.
    Train { seed: u64, hflip: bool },
    /// One pass in index order, centre crop, last batch may be short.
    Sequential,
}

/// Background batch producer.
pub struct Loader {
    pool: OrderedPool<Batch>,
}

fn mix(a: u64, b: u64) -> u64 {
    // splitmix64 of a combined word: decorrelates neighbouring seeds.
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Plan {
    dataset: Dataset,
    res: usize,
    batch: usize,
    order: Order,
}

impl Plan {
    fn permutation(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let mut perm: Vec<usize> = (0..self.dataset.len()).collect();
        perm.shuffle(&mut StdRng::seed_from_u64(mix(seed, epoch)));
        perm
    }

    fn make(&self, k: usize, cache: &mut Option<(u64, Vec<usize>)>) -> Option<Batch> {
        let n = self.dataset.len();
        let mut out = Batch {
            images: Vec::with_capacity(self.batch * 3 * self.res * self.res),
            labels: Vec::with_capacity(self.batch),
            indices: Vec::with_capacity(self.batch),
            res: self.res,
        };
        match self.order {
            Order::Train { seed, hflip } => {
                let per_epoch = n / self.batch;
                let epoch = (k / per_epoch) as u64;
                if cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    *cache = Some((epoch, self.permutation(seed, epoch)));
                }
                let perm = &cache.as_ref().expect("filled above").1;
                let start = (k % per_epoch) * self.batch;
                for slot in 0..self.batch {
                    let mut rng = StdRng::seed_from_u64(mix(mix(seed, k as u64), slot as u64));
                    // An unreadable file is replaced by the next readable one in the permutation.
                    for t in 0..n {
                        let index = perm[(start + slot + t) % n];
                        if let Some(img) = self.dataset.load(index, self.res) {
                            let img = resize_crop(&img, self.res, Crop::Random { hflip }, &mut rng);
                            push_chw(&img, &mut out.images);
                            out.labels.push(self.dataset.label(index));
                            out.indices.push(index);
                            break;
                        }
                    }
                }
                if out.len() < self.batch {
                    return None; // nothing readable at all
                }
            }
            Order::Sequential => {
                let start = k * self.batch;
                if start >= n {
                    return None;
                }
                let mut rng = StdRng::seed_from_u64(0);
                for index in start..(start + self.batch).min(n) {
                    if let Some(img) = self.dataset.load(index, self.res) {
                        let img = resize_crop(&img, self.res, Crop::Centre, &mut rng);
                        push_chw(&img, &mut out.images);
                        out.labels.push(self.dataset.label(index));
                        out.indices.push(index);
                    }
                }
            }
        }
        Some(out)
    }
}

/// What a [`Loader`] produces: image side, batch size, order, first batch, threads.
#[derive(Clone, Copy, Debug)]
pub struct LoaderSpec {
    pub res: usize,
    pub batch: usize,
    pub order: Order,
    /// Index of the first batch (a resumed run's position).
    pub start: usize,
    /// Decoding threads.
    pub workers: usize,
    /// Batches queued ahead per thread.
    pub prefetch: usize,
}

impl LoaderSpec {
    /// Endless shuffled epochs with random crops (and flips with `hflip`), from batch 0, on 2
    /// threads with 2 batches queued each.
    pub fn train(res: usize, batch: usize, seed: u64, hflip: bool) -> Self {
        Self {
            res,
            batch,
            order: Order::Train { seed, hflip },
            start: 0,
            workers: 2,
            prefetch: 2,
        }
    }

    /// One pass in index order with centre crops, on 2 threads with 2 batches queued each.
    pub fn sequential(res: usize, batch: usize) -> Self {
        Self {
            order: Order::Sequential,
            ..Self::train(res, batch, 0, false)
        }
    }

    /// Starts at batch `k`.
    pub fn start_at(self, k: usize) -> Self {
        Self { start: k, ..self }
    }

    /// Decodes on `workers` threads with `prefetch` batches queued per thread.
    pub fn workers(self, workers: usize, prefetch: usize) -> Self {
        Self {
            workers,
            prefetch,
            ..self
        }
    }
}

impl Loader {
    /// Starts the spec's threads producing batches `start, start+1, ...`.
    pub fn new(dataset: Dataset, spec: LoaderSpec) -> anyhow::Result<Self> {
        let LoaderSpec {
            res,
            batch,
            order,
            start,
            workers,
            prefetch,
        } = spec;
        anyhow::ensure!(batch > 0, "batch size must be > 0");
        if let Order::Train { .. } = order {
            anyhow::ensure!(
                dataset.len() >= batch,
                "the dataset {} has {} images, fewer than one batch of {batch}",
                dataset.describe(),
                dataset.len()
            );
        }
        let plan = Plan {
            dataset,
            res,
            batch,
            order,
        };
        let pool = OrderedPool::new(workers, prefetch, start, move |k, cache| {
            plan.make(k, cache)
        });
        Ok(Self { pool })
    }

    /// Blocks until the next batch in order is ready; `None` at the end of a sequential pass.
    pub fn next_batch(&mut self) -> Option<Batch> {
        self.pool.next()
    }
}

impl Iterator for Loader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.next_batch()
    }
}

/// Draws a uniform value in [0, 1) from a batch-keyed stream (used for host-side noise).
pub fn keyed_rng(seed: u64, key: u64) -> StdRng {
    StdRng::seed_from_u64(mix(seed, key))
}

/// Standard normal samples from a keyed stream (Box-Muller), for deterministic device-free noise.
pub fn normal_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(n: usize) -> Dataset {
        Dataset::open("builtin:shapes", n).unwrap()
    }

    #[test]
    fn order_is_deterministic_and_resumable() {
        let spec = LoaderSpec::train(16, 4, 3, true);
        let a: Vec<_> = Loader::new(shapes(20), spec.workers(3, 2))
            .unwrap()
            .take(12)
            .collect();
        let b: Vec<_> = Loader::new(shapes(20), spec.start_at(7).workers(1, 1))
            .unwrap()
            .take(5)
            .collect();
        for (x, y) in a[7..].iter().zip(&b) {
            assert_eq!(x.indices, y.indices);
            assert_eq!(x.images, y.images);
        }
        // Each epoch (5 batches of 4) is a permutation of all 20 images.
        let mut seen: Vec<_> = a[..5].iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
        assert_ne!(a[0].indices, a[5].indices, "epochs are reshuffled");
    }

    #[test]
    fn sequential_covers_all_once() {
        let batches: Vec<_> = Loader::new(shapes(10), LoaderSpec::sequential(8, 4).workers(2, 1))
            .unwrap()
            .collect();
        assert_eq!(
            batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert_eq!(batches[2].indices, vec![8, 9]);
        assert_eq!(batches[0].images.len(), 4 * 3 * 8 * 8);
    }

    #[test]
    fn too_small_dataset_is_an_error() {
        let err = Loader::new(shapes(3), LoaderSpec::train(8, 4, 0, false).workers(1, 1))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("fewer than one batch"), "{err}");
    }
}
