//! The token transformer shared by MaskGIT and GPT: token + learned position embeddings,
//! pre-LN blocks (multi-head self-attention, GELU MLP), final LayerNorm, a head over the
//! codebook. MaskGIT runs it bidirectionally, GPT with a causal mask.

use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, Int, Tensor};

use super::config::{Arch, TransformerModelConfig};
use crate::kernels;

/// Std of the normal init of every weight matrix and embedding (GPT-2 / MaskGIT).
const INIT_STD: f64 = 0.02;

/// `n.forward(x)` for the model's LayerNorms, one op on the CPU device.
fn norm(n: &LayerNorm, x: Tensor<3>) -> Tensor<3> {
    kernels::layer_norm(n, x, kernels::norm::EPSILON)
}

fn linear(din: usize, dout: usize, device: &Device) -> Linear {
    LinearConfig::new(din, dout)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: INIT_STD,
        })
        .init(device)
}

/// Token ids: codes `0..K`, then one class token per class, the null class (classifier-free
/// guidance), and for MaskGIT the mask token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vocab {
    pub codes: usize,
    pub classes: usize,
    pub arch: Arch,
}

impl Vocab {
    pub fn class_token(&self, class: usize) -> usize {
        self.codes + class
    }
    pub fn null_class(&self) -> usize {
        self.codes + self.classes
    }
    pub fn mask_token(&self) -> usize {
        self.codes + self.classes + 1
    }
    pub fn size(&self) -> usize {
        self.codes + self.classes + 1 + usize::from(self.arch == Arch::Maskgit)
    }
    /// Input sequence length for `n` image tokens: the class token + all tokens (MaskGIT) or
    /// + all but the last (GPT).
    pub fn seq_len(&self, n: usize) -> usize {
        match self.arch {
            Arch::Maskgit => n + 1,
            Arch::Gpt => n,
        }
    }
}

/// Pre-LN transformer block.
#[derive(Module, Debug)]
pub struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    drop: Dropout,
    heads: usize,
}

impl Block {
    fn new(c: &TransformerModelConfig, device: &Device) -> Self {
        Self {
            norm1: LayerNormConfig::new(c.dim)
                .with_epsilon(kernels::norm::EPSILON)
                .init(device),
            qkv: linear(c.dim, 3 * c.dim, device),
            proj: linear(c.dim, c.dim, device),
            norm2: LayerNormConfig::new(c.dim)
                .with_epsilon(kernels::norm::EPSILON)
                .init(device),
            fc1: linear(c.dim, c.mlp, device),
            fc2: linear(c.mlp, c.dim, device),
            drop: DropoutConfig::new(c.dropout).init(),
            heads: c.heads,
        }
    }

    /// The packed projection `[B, L, 3D]` of `x` `[B, L, D]`: per position `[3, heads, dh]`.
    fn qkv(&self, x: Tensor<3>) -> Tensor<3> {
        kernels::linear(&self.qkv, norm(&self.norm1, x))
    }

    /// Residual update from attention output `[B, L, D]` (heads side by side), then the MLP.
    fn finish(&self, x: Tensor<3>, att: Tensor<3>) -> Tensor<3> {
        let x = x + kernels::dropout(&self.drop, kernels::linear(&self.proj, att));
        let h = kernels::linear(
            &self.fc2,
            kernels::gelu(kernels::linear(&self.fc1, norm(&self.norm2, x.clone()))),
        );
        x + kernels::dropout(&self.drop, h)
    }

    /// One new position `x` `[B, 1, D]` attending to the cached keys/values plus itself.
    fn forward_cached(
        &self,
        x: Tensor<3>,
        cache: &mut Option<(Tensor<4>, Tensor<4>)>,
    ) -> Tensor<3> {
        let [q, k, v] = kernels::split_heads(self.qkv(x.clone()), self.heads);
        let (k, v) = match cache.take() {
            Some((ck, cv)) => (Tensor::cat(vec![ck, k], 2), Tensor::cat(vec![cv, v], 2)),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let att = attention(q, k, v, None, None, AttentionModuleOptions::default());
        self.finish(x, kernels::merge_heads(att))
    }

    fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        // One differentiable op on the CPU device (src/kernels/attention.rs).
        let att = kernels::self_attention(self.qkv(x.clone()), self.heads, causal);
        self.finish(x, att)
    }
}

/// Keys and values of the positions decoded so far, per layer (see [`Transformer::forward_step`]).
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
}

/// MaskGIT or GPT over token maps.
#[derive(Module, Debug)]
pub struct Transformer {
    tok_emb: Embedding,
    pos_emb: Param<Tensor<3>>,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
    drop: Dropout,
    causal: bool,
}

impl Transformer {
    /// A transformer for `vocab` over sequences of `seq_len` tokens.
    pub fn new(c: &TransformerModelConfig, vocab: Vocab, seq_len: usize, device: &Device) -> Self {
        let normal = Initializer::Normal {
            mean: 0.0,
            std: INIT_STD,
        };
        Self {
            tok_emb: EmbeddingConfig::new(vocab.size(), c.dim)
                .with_initializer(normal)
                .init(device),
            pos_emb: Param::from_tensor(Tensor::random(
                [1, seq_len, c.dim],
                Distribution::Normal(0.0, INIT_STD),
                device,
            )),
            blocks: (0..c.layers).map(|_| Block::new(c, device)).collect(),
            norm: LayerNormConfig::new(c.dim)
                .with_epsilon(kernels::norm::EPSILON)
                .init(device),
            head: linear(c.dim, vocab.codes, device),
            drop: DropoutConfig::new(c.dropout).init(),
            causal: vocab.arch == Arch::Gpt,
        }
    }

    /// Causal decoding with a key/value cache: feeds `tokens` `[B, 1]` at position `pos`
    /// (positions must arrive in order 0, 1, ...) and returns that position's code logits
    /// `[B, K]`. Each call costs one position's compute, not the whole prefix.
    pub fn forward_step(
        &self,
        tokens: Tensor<2, Int>,
        pos: usize,
        cache: &mut KvCache,
    ) -> Tensor<2> {
        assert!(self.causal, "the KV cache is for causal (GPT) models");
        assert_eq!(cache.len, pos, "positions must be fed in order");
        if cache.layers.is_empty() {
            cache.layers = vec![None; self.blocks.len()];
        }
        let b = tokens.dims()[0];
        let mut x = self.tok_emb.forward(tokens) + self.pos_emb.val().narrow(1, pos, 1);
        for (block, layer) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = block.forward_cached(x, layer);
        }
        cache.len += 1;
        let logits = kernels::linear(&self.head, norm(&self.norm, x));
        let k = logits.dims()[2];
        logits.reshape([b, k])
    }

    /// Token ids `[B, L]` -> code logits `[B, L, K]`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [_, l] = tokens.dims();
        let pos = self.pos_emb.val().narrow(1, 0, l);
        let mut x = kernels::dropout(&self.drop, self.tok_emb.forward(tokens) + pos);
        for block in &self.blocks {
            x = block.forward(x, self.causal);
        }
        kernels::linear(&self.head, norm(&self.norm, x))
    }
}
