//! Arithmetic of each benchmarked step, counted from the configs (a multiply-add is 2 FLOPs;
//! normalisations, activations and element-wise ops are left out), so `bench` can print the
//! FLOP/s it achieved. A backward pass is counted as twice its forward.

use crate::tokenizer::{DiscConfig, TokenizerModelConfig, TokenizerRunConfig};
use crate::transformer::config::TransformerModelConfig;

fn conv(cin: usize, cout: usize, k: usize, side: usize) -> f64 {
    2.0 * (cin * cout * k * k * side * side) as f64
}

fn res_block(cin: usize, cout: usize, side: usize) -> f64 {
    let shortcut = if cin != cout {
        conv(cin, cout, 1, side)
    } else {
        0.0
    };
    conv(cin, cout, 3, side) + conv(cout, cout, 3, side) + shortcut
}

/// One window-attention block on a `side x side` map of `c` channels with window `b`.
fn window_attention(c: usize, side: usize, b: usize, dilated: bool) -> f64 {
    let tokens = (side * side) as f64;
    let group = if dilated {
        (side / b.max(1)).pow(2)
    } else {
        b * b
    } as f64;
    // qkv + proj, then QK^T and AV within each group.
    2.0 * tokens * (4 * c * c) as f64 + 4.0 * tokens * group * c as f64
}

/// Forward of encoder + quantiser + decoder, per image.
pub fn tokenizer_forward(c: &TokenizerModelConfig) -> f64 {
    let (base, r) = (c.base_channels, c.resolution);
    let latent = c.latent_size();
    let top = base * c.channel_mult.last().copied().unwrap_or(1);
    let mut f = conv(3, base, 3, r);
    let (mut cin, mut side) = (base, r);
    for (i, m) in c.channel_mult.iter().enumerate() {
        for _ in 0..c.num_res_blocks {
            f += res_block(cin, base * m, side);
            cin = base * m;
        }
        if i + 1 < c.channel_mult.len() {
            side /= 2;
        }
    }
    f += 2.0 * res_block(top, top, latent) + conv(top, c.code_dim, 1, latent);
    f += 2.0 * (latent * latent * c.code_dim * c.codebook_size) as f64;
    // Decoder, top level first.
    f += conv(c.code_dim, top, 3, latent) + 2.0 * res_block(top, top, latent);
    let (mut cin, levels) = (top, c.channel_mult.len());
    for (i, m) in c.channel_mult.iter().rev().enumerate() {
        let (cout, side) = (base * m, latent << i);
        for _ in 0..c.num_res_blocks {
            f += res_block(cin, cout, side);
            cin = cout;
        }
        if c.attention.enabled {
            let b = c.attention.window_for(side);
            for p in 0..2 * c.attention.pairs_per_level {
                f += window_attention(cout, side, b, p % 2 == 1);
            }
        }
        if i + 1 < levels {
            f += conv(cin, cin, 3, side * 2);
        }
    }
    f + conv(cin, 3, 3, r)
}

/// Forward of the discriminator, per image.
pub fn disc_forward(d: &DiscConfig, resolution: usize) -> f64 {
    let mut ch = d.base_channels.min(d.max_channels);
    let mut side = resolution;
    let mut f = conv(3, ch, 1, side);
    while side > d.min_resolution && side.is_multiple_of(2) {
        let cout = (ch * 2).min(d.max_channels);
        f += conv(ch, ch, 3, side) + conv(ch, cout, 3, side) + conv(ch, cout, 1, side / 2);
        ch = cout;
        side /= 2;
    }
    let extra = usize::from(d.minibatch_std);
    f + conv(ch + extra, ch, 3, side) + 2.0 * ((ch * side * side) * ch + ch) as f64
}

/// Forward of VGG-16's convs at `res` (up to relu5_3), plus the classifier with `logits`.
pub fn vgg_forward(res: usize, logits: bool) -> f64 {
    let layout: [(usize, usize, usize); 5] = [
        (3, 64, 2),
        (64, 128, 2),
        (128, 256, 3),
        (256, 512, 3),
        (512, 512, 3),
    ];
    let (mut f, mut side) = (0.0, res);
    for (cin, cout, n) in layout {
        f += conv(cin, cout, 3, side);
        f += (n - 1) as f64 * conv(cout, cout, 3, side);
        side /= 2;
    }
    if logits {
        f += 2.0 * (512 * 49 * 4096 + 4096 * 4096 + 4096 * 1000) as f64;
    }
    f
}

/// One phase-1 or phase-2 training step, per image (GAN on, R1 every `r1_interval` steps).
pub fn gan_step(cfg: &TokenizerRunConfig) -> f64 {
    let tok = tokenizer_forward(&cfg.model);
    let disc = disc_forward(&cfg.disc, cfg.model.resolution);
    let p = &cfg.perceptual;
    let logits = p.alpha > 0.0 && p.logits == crate::perceptual::LogitMode::Require;
    let vgg = vgg_forward(cfg.model.resolution, logits);
    // Generator: forward + backward; VGG on the real image (forward) and on the
    // reconstruction (forward + input gradient); the discriminator on the reconstruction.
    let generator = 3.0 * tok + 3.0 * vgg + 3.0 * disc;
    // Discriminator: real and fake, forward + backward; R1: an input-gradient pass and a
    // forward carrying a tangent, with its backward.
    let r1 = 9.0 * disc / cfg.loss.r1_interval.max(1) as f64;
    generator + 6.0 * disc + r1
}

/// Parameters of a transformer's blocks (the part whose FLOPs scale with tokens).
fn block_params(m: &TransformerModelConfig) -> f64 {
    (m.layers * (4 * m.dim * m.dim + 2 * m.dim * m.mlp)) as f64
}

/// One training step of a transformer over `seq`-token sequences, per sequence.
pub fn transformer_step(m: &TransformerModelConfig, seq: usize, codes: usize) -> f64 {
    let per_token = 2.0 * (block_params(m) + (m.dim * codes) as f64);
    let attention = 4.0 * (m.layers * seq * seq * m.dim) as f64;
    3.0 * (seq as f64 * per_token + attention)
}

/// One forward of a transformer over `seq` tokens (MaskGIT sampling step), per sequence.
pub fn transformer_forward(m: &TransformerModelConfig, seq: usize, codes: usize) -> f64 {
    transformer_step(m, seq, codes) / 3.0
}

/// Generating `n` tokens after a one-token prefix with a KV cache (GPT), per sequence.
pub fn gpt_generate(m: &TransformerModelConfig, n: usize, codes: usize) -> f64 {
    let per_token = 2.0 * (block_params(m) + (m.dim * codes) as f64);
    (1..=n)
        .map(|pos| per_token + 4.0 * (m.layers * pos * m.dim) as f64)
        .sum()
}

/// The FID Inception forward at 299x299, per image: Inception-v3's 5.7 G multiply-adds.
pub const INCEPTION_FORWARD: f64 = 2.0 * 5.7e9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_hand_computed_cases() {
        // One 3x3 conv 64 -> 64 on 224x224: 2 * 64 * 64 * 9 * 224^2.
        assert_eq!(conv(64, 64, 3, 224), 2.0 * 64.0 * 64.0 * 9.0 * 50176.0);
        // VGG-16 at 224: the well-known 15.5 G multiply-adds (convs + classifier).
        let g = vgg_forward(224, true) / 2e9;
        assert!((g - 15.47).abs() < 0.05, "{g}");
    }
}
