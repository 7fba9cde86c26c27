//! Sampling token maps from a trained transformer, batched on the device.
//!
//! - MaskGIT: iterative parallel decoding (method.md). Start all-masked; each step samples
//!   every masked token, scores it by its probability (plus annealed Gumbel noise,
//!   `choice_temperature * (1 - (t+1)/T)`), keeps the most confident and re-masks the rest
//!   following the schedule; fixed tokens stay fixed.
//! - GPT: raster order with a key/value cache (one position's compute per step); temperature,
//!   top-k, top-p.
//! - Both: classifier-free guidance `logits = c + s (c - u)` with `u` from the null class.
//!
//! Randomness comes from the device generator reseeded per step from the caller's seed, so a
//! seed gives the same tokens on a given device.

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Distribution, IndexingUpdateOp, Int, Tensor, TensorData};

use super::masking::{MaskSchedule, masked_after_step};
use super::model::{KvCache, Transformer, Vocab};

/// MaskGIT decoding settings.
#[derive(Clone, Copy, Debug)]
pub struct MaskgitOptions {
    /// Decoding steps T.
    pub steps: usize,
    /// Sampling temperature of the token draws (0 = argmax).
    pub temperature: f64,
    /// Gumbel noise scale on the confidences at the first step (annealed to 0).
    pub choice_temperature: f64,
    /// How many tokens stay masked after each step.
    pub schedule: MaskSchedule,
}

/// GPT decoding settings.
#[derive(Clone, Copy, Debug)]
pub struct GptOptions {
    /// Sampling temperature (0 = argmax).
    pub temperature: f64,
    /// Keep only the k most likely codes.
    pub top_k: Option<usize>,
    /// Keep the smallest set of codes whose probability reaches p.
    pub top_p: Option<f64>,
    /// Use the key/value cache (else recompute the whole prefix each step: for tests).
    pub use_cache: bool,
}

/// A model ready to sample (inference weights on a plain device).
pub struct Sampler<'a> {
    pub model: &'a Transformer,
    pub vocab: Vocab,
    /// Tokens per map.
    pub n: usize,
    /// Classifier-free guidance scale (0 = off).
    pub cfg_scale: f64,
    pub device: Device,
}

fn ints(v: Vec<i64>, shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// Gumbel(0, 1) noise of a shape, from the device generator.
fn gumbel<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    let u: Tensor<D> = Tensor::random(shape, Distribution::Uniform(0.0, 1.0), device);
    u.clamp(1e-10, 1.0 - 1e-7).log().neg().log().neg()
}

/// Draws from `logits` along the last axis at `temperature` (Gumbel-max; 0 = argmax).
fn draw<const D: usize>(logits: Tensor<D>, temperature: f64, device: &Device) -> Tensor<D, Int> {
    let last = D - 1;
    if temperature <= 0.0 {
        return logits.argmax(last);
    }
    let shape = logits.dims();
    (logits / temperature + gumbel(shape, device)).argmax(last)
}

impl Sampler<'_> {
    fn seed(&self, seed: u64, step: usize) {
        self.device
            .seed(seed ^ (step as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }

    /// The class column `[B(,x2), 1]`: class tokens, then null-class rows under guidance.
    fn class_column(&self, classes: &[usize]) -> Tensor<2, Int> {
        let mut ids: Vec<i64> = classes
            .iter()
            .map(|&c| self.vocab.class_token(c) as i64)
            .collect();
        if self.cfg_scale > 0.0 {
            ids.extend(std::iter::repeat_n(
                self.vocab.null_class() as i64,
                classes.len(),
            ));
        }
        let rows = ids.len();
        ints(ids, [rows, 1], &self.device)
    }

    /// Under guidance the batch is doubled: combines the halves as `c + s (c - u)`.
    fn guide<const D: usize>(&self, logits: Tensor<D>, b: usize) -> Tensor<D> {
        if self.cfg_scale <= 0.0 {
            return logits;
        }
        let c = logits.clone().narrow(0, 0, b);
        let u = logits.narrow(0, b, b);
        c.clone() + (c - u) * self.cfg_scale
    }

    /// Doubles token rows `[B, L]` for guidance (the same tokens for both halves).
    fn rows(&self, tokens: Tensor<2, Int>) -> Tensor<2, Int> {
        if self.cfg_scale > 0.0 {
            Tensor::cat(vec![tokens.clone(), tokens], 0)
        } else {
            tokens
        }
    }

    /// MaskGIT decoding of one map per entry of `classes`. Returns the tokens `[B, N]` and,
    /// when `trace` is set, the number of mask tokens left after each step (read from the
    /// device; for tests and diagnostics).
    pub fn maskgit(
        &self,
        classes: &[usize],
        opts: &MaskgitOptions,
        seed: u64,
        trace: bool,
    ) -> (Tensor<2, Int>, Vec<usize>) {
        let (b, n) = (classes.len(), self.n);
        let mask_id = self.vocab.mask_token() as i64;
        let column = self.class_column(classes);
        let mut tokens = ints(vec![mask_id; b * n], [b, n], &self.device);
        let mut unknown = n;
        let mut left = Vec::new();
        for t in 0..opts.steps {
            self.seed(seed, t);
            let input = Tensor::cat(vec![column.clone(), self.rows(tokens.clone())], 1);
            let logits = self.model.forward(input).narrow(1, 1, n);
            let logits = self.guide(logits, b);
            let sampled = draw(logits.clone(), opts.temperature, &self.device).reshape([b, n]);
            let scaled = if opts.temperature > 0.0 {
                logits / opts.temperature
            } else {
                logits
            };
            let p = softmax(scaled, 2)
                .gather(2, sampled.clone().reshape([b, n, 1]))
                .reshape([b, n]);
            let is_masked = tokens.clone().equal_elem(mask_id);
            let sampled = tokens.clone().mask_where(is_masked.clone(), sampled);
            let still = masked_after_step(opts.schedule, t, opts.steps, n, unknown);
            tokens = if still == 0 {
                sampled
            } else {
                let anneal = opts.choice_temperature * (1.0 - (t + 1) as f64 / opts.steps as f64);
                let confidence = (p.clamp_min(1e-30).log() + gumbel([b, n], &self.device) * anneal)
                    .mask_fill(is_masked.bool_not(), f32::INFINITY);
                let remask = confidence.argsort(1).narrow(1, 0, still);
                let flags = Tensor::<2, Int>::zeros([b, n], &self.device).scatter(
                    1,
                    remask,
                    Tensor::ones([b, still], &self.device),
                    IndexingUpdateOp::Add,
                );
                sampled.mask_fill(flags.greater_elem(0), mask_id)
            };
            unknown = still;
            if trace {
                let count = tokens
                    .clone()
                    .equal_elem(mask_id)
                    .int()
                    .sum()
                    .into_scalar::<i64>();
                left.push(count as usize / b);
            }
        }
        (tokens, left)
    }

    /// Filters logits `[B, K]` to the top-k codes and/or the top-p nucleus.
    fn filter(&self, mut logits: Tensor<2>, opts: &GptOptions) -> Tensor<2> {
        let k_codes = logits.dims()[1];
        if let Some(k) = opts.top_k.filter(|k| *k < k_codes) {
            let kth = logits.clone().topk(k, 1).narrow(1, k - 1, 1);
            let drop = logits.clone().lower(kth.expand(logits.dims()));
            logits = logits.mask_fill(drop, f32::NEG_INFINITY);
        }
        if let Some(p) = opts.top_p.filter(|p| *p < 1.0) {
            let (sorted, idx) = logits.clone().sort_descending_with_indices(1);
            let probs = softmax(sorted.clone(), 1);
            // Drop a code when the codes before it already reach p (the first always stays).
            let before = probs.clone().cumsum(1) - probs;
            let kept = sorted.mask_fill(before.greater_elem(p), f32::NEG_INFINITY);
            logits = Tensor::full(logits.dims(), f32::NEG_INFINITY, &self.device).scatter(
                1,
                idx,
                kept,
                IndexingUpdateOp::Assign,
            );
        }
        logits
    }

    fn pick(&self, logits: Tensor<2>, opts: &GptOptions, b: usize) -> Tensor<2, Int> {
        let logits = self.guide(logits, b);
        // Temperature first, so top-p sees the distribution that is sampled.
        let (scale, draw_t) = if opts.temperature > 0.0 {
            (opts.temperature, 1.0)
        } else {
            (1.0, 0.0)
        };
        draw(self.filter(logits / scale, opts), draw_t, &self.device)
    }

    /// GPT decoding in raster order: tokens `[B, N]`.
    pub fn gpt(&self, classes: &[usize], opts: &GptOptions, seed: u64) -> Tensor<2, Int> {
        let (b, n) = (classes.len(), self.n);
        let column = self.class_column(classes);
        let mut picked: Vec<Tensor<2, Int>> = Vec::with_capacity(n);
        let mut cache = KvCache::default();
        for pos in 0..n {
            self.seed(seed, pos);
            let logits = if opts.use_cache {
                let input = match picked.last() {
                    None => column.clone(),
                    Some(prev) => self.rows(prev.clone()),
                };
                self.model.forward_step(input, pos, &mut cache)
            } else {
                let mut parts = vec![column.clone()];
                parts.extend(picked.iter().map(|p| self.rows(p.clone())));
                let out = self.model.forward(Tensor::cat(parts, 1));
                let [rows, len, k] = out.dims();
                out.narrow(1, len - 1, 1).reshape([rows, k])
            };
            picked.push(self.pick(logits, opts, b).reshape([b, 1]));
        }
        Tensor::cat(picked, 1)
    }
}
