//! Training batches from a token file: the train/validation split, a deterministic batch order,
//! input/target construction per architecture (masks, class dropout), and the loss.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::config::Arch;
use super::masking::sample_train_mask;
use super::model::Vocab;
use crate::data::loader::keyed_rng;
use crate::data::tokens::TokenFile;

/// Entry indices of the training and validation splits. Flipped copies stay with their image.
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// Holds out `val_fraction` of the source images (at least one when the fraction is > 0 and
/// there are two or more), chosen by `seed`.
pub fn split(file: &TokenFile, val_fraction: f64, seed: u64) -> Split {
    let group = file.header.group();
    let images = file.len() / group;
    let mut ids: Vec<usize> = (0..images).collect();
    ids.shuffle(&mut keyed_rng(seed, 0x0005_9117));
    let n_val = if val_fraction > 0.0 && images >= 2 {
        ((images as f64 * val_fraction).ceil() as usize).clamp(1, images - 1)
    } else {
        0
    };
    let entries = |ids: &[usize]| -> Vec<usize> {
        let mut e: Vec<usize> = ids
            .iter()
            .flat_map(|i| (0..group).map(move |g| i * group + g))
            .collect();
        e.sort_unstable();
        e
    };
    Split {
        val: entries(&ids[..n_val]),
        train: entries(&ids[n_val..]),
    }
}

/// Batch `k` of endless shuffled epochs over `entries`: a pure function of `(seed, k)`, so a
/// resumed run continues the exact stream.
pub struct Order {
    entries: Vec<usize>,
    batch: usize,
    seed: u64,
    epoch: Option<(usize, Vec<usize>)>,
}

impl Order {
    pub fn new(entries: Vec<usize>, batch: usize, seed: u64) -> Self {
        Self {
            entries,
            batch,
            seed,
            epoch: None,
        }
    }

    pub fn batch(&mut self, k: usize) -> Vec<usize> {
        let n = self.entries.len();
        (k * self.batch..(k + 1) * self.batch)
            .map(|p| {
                let e = p / n;
                if self.epoch.as_ref().is_none_or(|(cur, _)| *cur != e) {
                    let mut perm = self.entries.clone();
                    perm.shuffle(&mut keyed_rng(self.seed ^ 0x0000_4de4, e as u64));
                    self.epoch = Some((e, perm));
                }
                self.epoch.as_ref().expect("set above").1[p % n]
            })
            .collect()
    }
}

/// A batch on the host: inputs `[B, L]`, targets `[B, N]`, loss weights `[B, N]`.
pub struct HostBatch {
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
    pub weights: Vec<f32>,
    pub b: usize,
    pub l: usize,
    pub n: usize,
}

impl HostBatch {
    /// `parts` consecutive shards of equal size (`b` must be a multiple of it).
    pub fn split(&self, parts: usize) -> Vec<HostBatch> {
        let per = self.b / parts;
        (0..parts)
            .map(|r| HostBatch {
                inputs: self.inputs[r * per * self.l..(r + 1) * per * self.l].to_vec(),
                targets: self.targets[r * per * self.n..(r + 1) * per * self.n].to_vec(),
                weights: self.weights[r * per * self.n..(r + 1) * per * self.n].to_vec(),
                b: per,
                l: self.l,
                n: self.n,
            })
            .collect()
    }

    /// The sum of the loss weights (the positions the loss averages over).
    pub fn weight_total(&self) -> f64 {
        self.weights.iter().map(|w| *w as f64).sum()
    }

    /// Uploads to `device`.
    pub fn to_device(&self, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2>) {
        (
            Tensor::from_data(
                TensorData::new(self.inputs.clone(), [self.b, self.l]),
                device,
            ),
            Tensor::from_data(
                TensorData::new(self.targets.clone(), [self.b, self.n]),
                device,
            ),
            Tensor::from_data(
                TensorData::new(self.weights.clone(), [self.b, self.n]),
                device,
            ),
        )
    }
}

/// Inputs and targets for `entries`. MaskGIT: class token + codes with a cosine-schedule mask
/// (weights = the mask). GPT: class token + all codes but the last (weights = 1). With
/// probability `class_dropout` the class token is the null class.
pub fn make_batch(
    file: &TokenFile,
    entries: &[usize],
    vocab: Vocab,
    rng: &mut StdRng,
    class_dropout: f64,
) -> HostBatch {
    let n = file.header.tokens_per_entry();
    let l = vocab.seq_len(n);
    let mut hb = HostBatch {
        inputs: Vec::with_capacity(entries.len() * l),
        targets: Vec::with_capacity(entries.len() * n),
        weights: Vec::with_capacity(entries.len() * n),
        b: entries.len(),
        l,
        n,
    };
    for &e in entries {
        let codes = file.entry(e);
        let class = if class_dropout > 0.0 && rng.random::<f64>() < class_dropout {
            vocab.null_class()
        } else {
            vocab.class_token(file.labels[e] as usize)
        };
        hb.inputs.push(class as i64);
        hb.targets.extend(codes.iter().map(|&c| c as i64));
        match vocab.arch {
            Arch::Maskgit => {
                let mask = sample_train_mask(rng, n);
                for (&c, &m) in codes.iter().zip(&mask) {
                    hb.inputs.push(if m {
                        vocab.mask_token() as i64
                    } else {
                        c as i64
                    });
                    hb.weights.push(if m { 1.0 } else { 0.0 });
                }
            }
            Arch::Gpt => {
                hb.inputs.extend(codes[..n - 1].iter().map(|&c| c as i64));
                hb.weights.extend(std::iter::repeat_n(1.0, n));
            }
        }
    }
    hb
}

/// Loss and accuracy of a forward pass (device scalars).
pub struct LossOut {
    /// Label-smoothed cross-entropy, weighted mean over positions.
    pub loss: Tensor<1>,
    /// Plain cross-entropy (no smoothing), same weighting.
    pub ce: Tensor<1>,
    /// Fraction of weighted positions whose argmax is the target.
    pub accuracy: Tensor<1>,
}

/// The loss of logits `[B, L, K]` against targets `[B, N]` with position weights `[B, N]`,
/// averaged over the weighted positions.
pub fn loss(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    weights: Tensor<2>,
    arch: Arch,
    smoothing: f64,
) -> LossOut {
    let total = weights.clone().sum().clamp_min(1.0);
    loss_over(logits, targets, weights, arch, smoothing, total)
}

/// [`loss`] divided by a given `total` weight (`[1]`) instead of this batch's own: a replica's
/// share of a data-parallel batch, so the replicas' losses sum to the global one.
pub fn loss_over(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    weights: Tensor<2>,
    arch: Arch,
    smoothing: f64,
    total: Tensor<1>,
) -> LossOut {
    let [b, l, _] = logits.dims();
    let n = targets.dims()[1];
    let logits = match arch {
        Arch::Maskgit => logits.narrow(1, l - n, n),
        Arch::Gpt => logits,
    };
    let logp = log_softmax(logits, 2);
    let nll = logp
        .clone()
        .gather(2, targets.clone().reshape([b, n, 1]))
        .reshape([b, n])
        .neg();
    let uniform = logp.clone().mean_dim(2).reshape([b, n]).neg();
    let per = nll.clone() * (1.0 - smoothing) + uniform * smoothing;
    let hit = logp.argmax(2).reshape([b, n]).equal(targets).float();
    LossOut {
        loss: (per * weights.clone()).sum() / total.clone(),
        ce: (nll * weights.clone()).sum().detach() / total.clone(),
        accuracy: (hit * weights).sum() / total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothed_loss_matches_a_direct_computation() {
        let device = Device::flex();
        let (b, n, k) = (2, 3, 4);
        let logits: Vec<f32> = (0..b * (n + 1) * k)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let targets = vec![0i64, 3, 2, 1, 1, 0];
        let weights = vec![1.0f32, 0.0, 1.0, 1.0, 1.0, 0.0];
        let out = loss(
            Tensor::from_data(TensorData::new(logits.clone(), [b, n + 1, k]), &device),
            Tensor::from_data(TensorData::new(targets.clone(), [b, n]), &device),
            Tensor::from_data(TensorData::new(weights.clone(), [b, n]), &device),
            Arch::Maskgit,
            0.1,
        );
        // Direct: MaskGIT predicts positions 1..=n of each row.
        let (mut sum, mut ce, mut hits, mut w) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for bi in 0..b {
            for p in 0..n {
                let row = &logits[(bi * (n + 1) + p + 1) * k..][..k];
                let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
                let lse = max
                    + row
                        .iter()
                        .map(|v| (*v as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                let t = targets[bi * n + p] as usize;
                let nll = lse - row[t] as f64;
                let uni = lse - row.iter().map(|v| *v as f64).sum::<f64>() / k as f64;
                let wt = weights[bi * n + p] as f64;
                sum += wt * (0.9 * nll + 0.1 * uni);
                ce += wt * nll;
                let arg = (0..k).max_by(|a, c| row[*a].total_cmp(&row[*c])).unwrap();
                hits += wt * f64::from(u8::from(arg == t));
                w += wt;
            }
        }
        let got = |t: Tensor<1>| t.into_scalar::<f32>() as f64;
        assert!((got(out.loss) - sum / w).abs() < 1e-5);
        assert!((got(out.ce) - ce / w).abs() < 1e-5);
        assert!((got(out.accuracy) - hits / w).abs() < 1e-6);
    }
}
