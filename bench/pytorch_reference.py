#!/usr/bin/env python3
"""PyTorch reference of seqgan's models and training steps, for CPU benchmarks only.

Written from seqgan's Rust sources (src/tokenizer, src/stages/gan, src/perceptual,
src/pretrained/vgg16.rs, src/transformer, src/stages/transformer) and the method spec, so that
`seqgan bench` and this script time the same networks, losses and optimiser steps at the same
config and batch. seqgan itself never needs Python; see bench/README.md.

One stage per invocation; human-readable notes (parameter counts) go to stderr and exactly one
line of JSON goes to stdout, e.g.

    python bench/pytorch_reference.py --stage tokenizer --config tiny --steps 10 --warmup 2
    python bench/pytorch_reference.py --stage decoder --config tiny --steps 5
    python bench/pytorch_reference.py --stage transformer --transformer tiny --arch gpt \
        --tokens 8 64 10 --batch 32 --steps 20
    python bench/pytorch_reference.py --stage sample --transformer base --arch maskgit --batch 32 --steps 3
    python bench/pytorch_reference.py --stage inception --batch 8 --steps 3 --warmup 1

`--params-only` builds the models, prints their parameter counts and exits without timing.
All pretrained networks (VGG-16, Inception-v3) use random weights: only their cost matters.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

def _vm_rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            line = next(l for l in f if l.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024.0
    except (OSError, StopIteration):
        return float("nan")


# Resident memory of the interpreter with torch imported (a CUDA build of torch alone is ~0.5 GiB),
# reported so that readers can compare peak RSS net of it.
IMPORT_RSS_MIB = _vm_rss_mib()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ---------------------------------------------------------------------------------------------
# Configs: the defaults of src/tokenizer/{config,run_config}.rs, src/perceptual/config.rs and
# src/transformer/config.rs, with the JSON presets of configs/ merged over them.
# ---------------------------------------------------------------------------------------------

TOKENIZER_DEFAULTS = {
    "model": {
        "resolution": 256,
        "base_channels": 128,
        "channel_mult": [1, 1, 2, 2, 4],
        "num_res_blocks": 2,
        "code_dim": 256,
        "codebook_size": 1024,
        "norm_groups": 32,
        "norm_eps": 1e-6,
        "attention": {
            "enabled": False,
            "pairs_per_level": 1,
            "window": 8,
            "small_window": 4,
            "small_map": 16,
            "head_dim": 64,
        },
    },
    "disc": {"base_channels": 64, "max_channels": 512, "min_resolution": 4, "minibatch_std": True},
    "loss": {
        "l1": 1.0,
        "codebook": 1.0,
        "beta": 0.25,
        "entropy_gamma": 0.01,
        "entropy_temperature": 1.0,
        "perceptual": 1.0,
        "gan": 0.1,
        "gan_loss": "non-saturating",
        "disc_start": 50_000,
        "r1_gamma": 10.0,
        "r1_interval": 16,
    },
    "perceptual": {"alpha": 1.0, "logits": "require", "lpips_low": False},
    "train": {
        "steps": 500_000,
        "batch_size": 8,
        "grad_accum": 1,
        "lr": 1e-4,
        "disc_lr": 1e-4,
        "beta1": 0.5,
        "beta2": 0.9,
        "adam_eps": 1e-8,
        "warmup_steps": 0,
        "ema_decay": 0.0,
        "seed": 0,
    },
}

TRANSFORMER_DEFAULTS = {
    "arch": "maskgit",
    "model": {"layers": 24, "dim": 768, "heads": 16, "mlp": 3072, "dropout": 0.1},
    "train": {
        "steps": 1_500_000,
        "batch_size": 256,
        "grad_accum": 1,
        "lr": 1e-4,
        "beta1": 0.9,
        "beta2": 0.96,
        "adam_eps": 1e-8,
        "weight_decay": 0.045,
        "warmup_steps": 5000,
        "schedule": "cosine",
        "min_lr_ratio": 0.0,
        "grad_clip": 1.0,
        "label_smoothing": None,
        "class_dropout": 0.1,
        "ema_decay": 0.0,
        "seed": 0,
    },
}


def merge(base: dict, patch: dict) -> dict:
    """Deep merge of `patch` over `base` (objects merge key by key; anything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_json(name: str, prefix: str = "") -> dict:
    path = name if name.endswith(".json") else os.path.join(CONFIGS, f"{prefix}{name}.json")
    with open(path) as f:
        return json.load(f)


def tokenizer_config(name: str, phase2: bool) -> dict:
    cfg = merge(TOKENIZER_DEFAULTS, load_json(name))
    if phase2:  # `seqgan bench --stage decoder` applies the `phase2` patch to the preset
        cfg = merge(cfg, load_json("phase2"))
    return cfg


def transformer_config(name: str, arch: str) -> dict:
    cfg = merge(TRANSFORMER_DEFAULTS, load_json(name, "transformer-"))
    cfg["arch"] = arch  # `seqgan bench` sets the architecture from --arch
    return cfg


# ---------------------------------------------------------------------------------------------
# Tokenizer (src/tokenizer/{blocks,encoder,decoder,attention,quantizer}.rs)
# ---------------------------------------------------------------------------------------------


def group_norm(channels: int, max_groups: int, eps: float) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides `channels`."""
    groups = next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=eps)


def conv(cin: int, cout: int, k: int, bias: bool) -> nn.Conv2d:
    """k x k convolution with "same" padding."""
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


def downsample(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


def upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class ResBlock(nn.Module):
    """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3 (no biases), 1x1 shortcut when channels change."""

    def __init__(self, cin: int, cout: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = group_norm(cin, groups, eps)
        self.conv1 = conv(cin, cout, 3, False)
        self.norm2 = group_norm(cout, groups, eps)
        self.conv2 = conv(cout, cout, 3, False)
        self.shortcut = conv(cin, cout, 1, False) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.shortcut(x) if self.shortcut is not None else x)


class Encoder(nn.Module):
    def __init__(self, m: dict):
        super().__init__()
        g, eps, c = m["norm_groups"], m["norm_eps"], m["base_channels"]
        self.conv_in = conv(3, c, 3, False)
        cin = c
        self.levels = nn.ModuleList()
        for mult in m["channel_mult"]:
            cout = c * mult
            blocks = nn.ModuleList()
            for _ in range(m["num_res_blocks"]):
                blocks.append(ResBlock(cin, cout, g, eps))
                cin = cout
            self.levels.append(blocks)
        self.mid = nn.ModuleList([ResBlock(cin, cin, g, eps) for _ in range(2)])
        self.norm_out = group_norm(cin, g, eps)
        self.conv_out = conv(cin, m["code_dim"], 1, True)

    def forward(self, x):
        h = self.conv_in(x)
        last = len(self.levels) - 1
        for i, blocks in enumerate(self.levels):
            for b in blocks:
                h = b(h)
            if i < last:
                h = downsample(h)
        for b in self.mid:
            h = b(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def window_side(size: int, b: int) -> int:
    """Largest divisor of `size` that is <= b."""
    return next(d for d in range(max(min(b, size), 1), 0, -1) if size % d == 0)


def _group_axes(dilated: bool):
    # View [B, C, nh, bh, nw, bw]; regional groups -> [B, nh, nw, bh, bw, C],
    # dilated groups -> [B, bh, bw, nh, nw, C].
    return (0, 3, 5, 2, 4, 1) if dilated else (0, 2, 4, 3, 5, 1)


def partition(x, win, dilated):
    b, c, h, w = x.shape
    bh, bw = win
    nh, nw = h // bh, w // bw
    groups, tokens = (b * bh * bw, nh * nw) if dilated else (b * nh * nw, bh * bw)
    return x.reshape(b, c, nh, bh, nw, bw).permute(_group_axes(dilated)).reshape(groups, tokens, c)


def merge_windows(t, dims, win, dilated):
    b, c, h, w = dims
    bh, bw = win
    nh, nw = h // bh, w // bw
    grouped = (b, bh, bw, nh, nw, c) if dilated else (b, nh, nw, bh, bw, c)
    axes = _group_axes(dilated)
    inverse = [0] * 6
    for i, a in enumerate(axes):
        inverse[a] = i
    return t.reshape(grouped).permute(inverse).reshape(b, c, h, w)


class WindowAttention(nn.Module):
    """Regional (in-window) or dilated (same in-window offset across windows) MHSA block:
    x + proj(MHSA(LayerNorm(x))), no MLP; `proj` starts at zero (identity block)."""

    def __init__(self, channels: int, head_dim: int, window: int, dilated: bool):
        super().__init__()
        max_heads = max(channels // head_dim, 1)
        self.heads = next(h for h in range(max_heads, 0, -1) if channels % h == 0)
        self.norm = nn.LayerNorm(channels, eps=1e-5)  # burn's LayerNorm default epsilon
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.window = window
        self.dilated = dilated

    def forward(self, x):
        dims = x.shape
        _, c, h, w = dims
        win = (window_side(h, self.window), window_side(w, self.window))
        t = self.norm(partition(x, win, self.dilated))
        g, n, _ = t.shape
        dh = c // self.heads
        q, k, v = self.qkv(t).reshape(g, n, 3, self.heads, dh).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(g, n, c))
        return x + merge_windows(out, dims, win, self.dilated)


def level_shapes(m: dict):
    """Channels and map side of each decoder level, coarsest first."""
    latent = m["resolution"] >> (len(m["channel_mult"]) - 1)
    return [(m["base_channels"] * mult, latent << i) for i, mult in enumerate(reversed(m["channel_mult"]))]


class DecoderLevel(nn.Module):
    def __init__(self, blocks, attn, up):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        self.upsample = up


class Decoder(nn.Module):
    def __init__(self, m: dict):
        super().__init__()
        g, eps, c = m["norm_groups"], m["norm_eps"], m["base_channels"]
        a = m["attention"]
        top = c * m["channel_mult"][-1]
        self.conv_in = conv(m["code_dim"], top, 3, True)
        self.mid = nn.ModuleList([ResBlock(top, top, g, eps) for _ in range(2)])
        cin = top
        shapes = level_shapes(m)
        self.levels = nn.ModuleList()
        for i, (cout, size) in enumerate(shapes):
            blocks = []
            for _ in range(m["num_res_blocks"]):
                blocks.append(ResBlock(cin, cout, g, eps))
                cin = cout
            attn = []
            if a["enabled"]:
                window = a["small_window"] if size <= a["small_map"] else a["window"]
                attn = [WindowAttention(cout, a["head_dim"], window, j % 2 == 1) for j in range(2 * a["pairs_per_level"])]
            up = conv(cin, cin, 3, True) if i + 1 < len(shapes) else None
            self.levels.append(DecoderLevel(blocks, attn, up))
        self.norm_out = group_norm(cin, g, eps)
        self.conv_out = conv(cin, 3, 3, True)

    def attention_params(self) -> int:
        return sum(n_params(a) for lvl in self.levels for a in lvl.attn)

    def forward(self, z):
        h = self.conv_in(z)
        for b in self.mid:
            h = b(h)
        for lvl in self.levels:
            for b in lvl.blocks:
                h = b(h)
            for a in lvl.attn:
                h = a(h)
            if lvl.upsample is not None:
                h = lvl.upsample(upsample(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantizer(nn.Module):
    """Nearest code by squared L2, straight-through estimator, codebook/commitment losses and the
    entropy of the batch-mean soft assignment softmax(-D / T)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        bound = 1.0 / size
        self.codebook = nn.Parameter(torch.empty(size, dim).uniform_(-bound, bound))

    def forward(self, z_e, temperature: float):
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(b * h * w, d)
        e = self.codebook
        dist = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1).reshape(1, -1) - 2.0 * (flat @ e.t())
        indices = dist.detach().argmin(1)
        z_q = e.index_select(0, indices)
        codebook_loss = (flat.detach() - z_q).pow(2).mean()
        commit_loss = (flat - z_q.detach()).pow(2).mean()
        p_mean = torch.softmax(-dist / temperature, dim=1).mean(0, keepdim=True)
        entropy = -(p_mean * (p_mean + 1e-10).log()).sum()
        st = flat + (z_q - flat).detach()
        return st.reshape(b, h, w, d).permute(0, 3, 1, 2), indices, codebook_loss, commit_loss, entropy


class VqModel(nn.Module):
    def __init__(self, m: dict):
        super().__init__()
        self.encoder = Encoder(m)
        self.quantizer = Quantizer(m["codebook_size"], m["code_dim"])
        self.decoder = Decoder(m)

    def forward(self, x, temperature: float):
        q = self.quantizer(self.encoder(x), temperature)
        return self.decoder(q[0]), q

    def param_counts(self) -> dict:
        attn = self.decoder.attention_params()
        parts = {
            "encoder": n_params(self.encoder),
            "codebook": n_params(self.quantizer),
            "decoder": n_params(self.decoder) - attn,
        }
        if attn:
            parts["decoder_attention"] = attn
        return parts


# ---------------------------------------------------------------------------------------------
# Discriminator (src/tokenizer/discriminator.rs)
# ---------------------------------------------------------------------------------------------

SLOPE = 0.2


class DiscBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = conv(cin, cin, 3, True)
        self.conv2 = conv(cin, cout, 3, True)
        self.skip = conv(cin, cout, 1, False)

    def forward(self, x):
        skip = self.skip(downsample(x))
        h = F.leaky_relu(self.conv1(x), SLOPE)
        h = downsample(F.leaky_relu(self.conv2(h), SLOPE))
        return (h + skip) * (1.0 / math.sqrt(2.0))


class Discriminator(nn.Module):
    def __init__(self, d: dict, resolution: int):
        super().__init__()
        ch = min(d["base_channels"], d["max_channels"])
        self.from_rgb = conv(3, ch, 1, True)
        res = resolution
        blocks = []
        while res > d["min_resolution"] and res % 2 == 0:
            cout = min(ch * 2, d["max_channels"])
            blocks.append(DiscBlock(ch, cout))
            ch = cout
            res //= 2
        self.blocks = nn.ModuleList(blocks)
        self.minibatch_std = d["minibatch_std"]
        self.conv_out = conv(ch + int(self.minibatch_std), ch, 3, True)
        self.fc = nn.Linear(ch * res * res, ch)
        self.head = nn.Linear(ch, 1)

    def forward(self, x):
        h = F.leaky_relu(self.from_rgb(x), SLOPE)
        for b in self.blocks:
            h = b(h)
        if self.minibatch_std:
            bsz, _, hh, ww = h.shape
            centred = h - h.mean(0, keepdim=True)
            std = (centred.pow(2).mean(0) + 1e-8).sqrt().mean()
            h = torch.cat([h, std.reshape(1, 1, 1, 1).expand(bsz, 1, hh, ww)], 1)
        h = F.leaky_relu(self.conv_out(h), SLOPE)
        h = F.leaky_relu(self.fc(h.flatten(1)), SLOPE)
        return self.head(h)


# ---------------------------------------------------------------------------------------------
# Frozen VGG-16 and the perceptual loss (src/pretrained/vgg16.rs, src/perceptual/loss.rs)
# ---------------------------------------------------------------------------------------------

VGG_LAYOUT = [64, 64, None, 128, 128, None, 256, 256, 256, None, 512, 512, 512, None, 512, 512, 512, None]
TAP_AFTER_CONV = (1, 3, 6, 9, 12)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Vgg16(nn.Module):
    """torchvision-layout VGG-16 (random He-normal weights, frozen): 13 conv3x3+ReLU, 5 max-pools,
    AdaptiveAvgPool(7x7), classifier 25088 -> 4096 -> 4096 -> 1000 (eval: no dropout)."""

    def __init__(self, classifier: bool):
        super().__init__()
        convs, cin = [], 3
        for cout in VGG_LAYOUT:
            if cout is not None:
                c = nn.Conv2d(cin, cout, 3, padding=1)
                nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(c.bias)
                convs.append(c)
                cin = cout
        self.convs = nn.ModuleList(convs)
        self.classifier = None
        if classifier:
            self.classifier = nn.ModuleList([nn.Linear(512 * 49, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 1000)])
            for lin in self.classifier:
                nn.init.normal_(lin.weight, 0.0, 0.01)
                nn.init.zeros_(lin.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))
        self.requires_grad_(False)

    def forward(self, x, logits: bool):
        """[-1, 1] images -> (the 5 taps, logits or None)."""
        h = ((x + 1.0) * 0.5 - self.mean) / self.std
        taps, k = [], 0
        for layer in VGG_LAYOUT:
            if layer is None:
                h = F.max_pool2d(h, 2)
                continue
            h = F.relu(self.convs[k](h))
            if k in TAP_AFTER_CONV:
                taps.append(h)
            if k == 12 and not logits:
                break  # relu5_3 is the deepest tap; no final pool
            k += 1
        out = None
        if logits:
            h = F.adaptive_avg_pool2d(h, (7, 7)).flatten(1)
            a, b, c = self.classifier
            out = c(F.relu(b(F.relu(a(h)))))
        return taps, out


class PerceptualLoss(nn.Module):
    """L_alpha = alpha L_sem + (1 - alpha) L_low. L_sem = relu5_3 MSE (+ logits MSE);
    L_low = sum of the 5 per-tap MSEs. The real image's features take no gradient."""

    def __init__(self, p: dict):
        super().__init__()
        self.alpha = p["alpha"]
        if self.alpha < 1.0 and p["lpips_low"]:
            raise SystemExit("perceptual.lpips_low=true is not mirrored here (the phase2 patch sets it false)")
        self.use_logits = self.alpha > 0.0 and p["logits"] == "require"
        self.vgg = Vgg16(classifier=self.use_logits)

    def forward(self, x_hat, x):
        need_low, need_sem = self.alpha < 1.0, self.alpha > 0.0
        fa_taps, fa_logits = self.vgg(x_hat, need_sem and self.use_logits)
        with torch.no_grad():
            fb_taps, fb_logits = self.vgg(x, need_sem and self.use_logits)
        low = sem = None
        if need_low:
            low = sum(F.mse_loss(a, b) for a, b in zip(fa_taps, fb_taps))
        if need_sem:
            sem = F.mse_loss(fa_taps[4], fb_taps[4])
            if fa_logits is not None:
                sem = sem + F.mse_loss(fa_logits, fb_logits)
        if low is not None and sem is not None:
            return self.alpha * sem + (1.0 - self.alpha) * low
        return low if low is not None else sem


# ---------------------------------------------------------------------------------------------
# The GAN step of phase 1 / phase 2 (src/stages/gan/{mod,loss}.rs)
# ---------------------------------------------------------------------------------------------


class GanBench:
    def __init__(self, cfg: dict, phase2: bool, batch: int, accum: int):
        self.cfg, self.phase2, self.batch, self.accum = cfg, phase2, batch, accum
        m, t = cfg["model"], cfg["train"]
        self.model = VqModel(m)
        self.disc = Discriminator(cfg["disc"], m["resolution"])
        self.perceptual = PerceptualLoss(cfg["perceptual"])
        if phase2:  # encoder and codebook frozen: token maps never change
            self.model.encoder.requires_grad_(False)
            self.model.quantizer.requires_grad_(False)
        g_params = [p for p in self.model.parameters() if p.requires_grad]
        betas, eps = (t["beta1"], t["beta2"]), t["adam_eps"]
        self.opt_g = torch.optim.Adam(g_params, lr=t["lr"], betas=betas, eps=eps)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=t["disc_lr"], betas=betas, eps=eps)
        self.ema = None
        if t["ema_decay"] > 0.0:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
        res = m["resolution"]
        # Random images in [-1, 1] (no data loading); two batches, used in turn.
        self.images = [torch.rand(batch, 3, res, res) * 2.0 - 1.0 for _ in range(2)]
        self.step_index = 0
        self.drawn = 0

    def lr(self, base: float) -> float:
        w = self.cfg["train"]["warmup_steps"]
        return base if w == 0 else base * min((self.step_index + 1) / w, 1.0)

    def next_batch(self):
        x = self.images[self.drawn % len(self.images)]
        self.drawn += 1
        return x

    def generator_loss(self, x):
        l = self.cfg["loss"]
        x_hat, (_, _, codebook, commit, entropy) = self.model(x, l["entropy_temperature"])
        l1 = (x_hat - x).abs().mean()
        loss = (
            l["l1"] * l1
            + l["perceptual"] * self.perceptual(x_hat, x)
            + l["codebook"] * codebook
            + (l["codebook"] * l["beta"]) * commit
            - l["entropy_gamma"] * entropy
        )
        if self.gan_on:
            loss = loss + l["gan"] * F.softplus(-self.disc(x_hat)).mean()  # non-saturating
        return loss, x_hat.detach()

    def disc_loss(self, x, x_hat, with_r1: bool):
        l = self.cfg["loss"]
        r1 = None
        if with_r1 and l["r1_gamma"] > 0.0:
            x = x.detach().requires_grad_(True)
            real = self.disc(x)
            (g,) = torch.autograd.grad(real.sum(), x, create_graph=True)
            r1 = g.pow(2).flatten(1).sum(1).mean()
        else:
            real = self.disc(x)
        fake = self.disc(x_hat)
        loss = F.softplus(-real).mean() + F.softplus(fake).mean()
        if r1 is not None:
            loss = loss + r1 * (0.5 * l["r1_gamma"] * l["r1_interval"])
        return loss

    def step(self) -> float:
        l, t = self.cfg["loss"], self.cfg["train"]
        self.gan_on = l["gan"] > 0.0 and self.step_index >= l["disc_start"]
        # Generator. D's weights take gradients here too (as in seqgan); they are discarded below.
        self.opt_g.zero_grad(set_to_none=True)
        pairs, g_total = [], 0.0
        for _ in range(self.accum):
            x = self.next_batch()
            loss, x_hat = self.generator_loss(x)
            (loss / self.accum).backward()
            g_total += loss.item()  # the finite check reads the loss, as seqgan does
            pairs.append((x, x_hat))
        if math.isfinite(g_total):
            for group in self.opt_g.param_groups:
                group["lr"] = self.lr(t["lr"])
            self.opt_g.step()
            if self.ema is not None:
                with torch.no_grad():
                    src = [p for p in self.model.parameters()]
                    dst = [p for p in self.ema.parameters()]
                    torch._foreach_lerp_(dst, src, 1.0 - t["ema_decay"])
        # Discriminator, with lazy R1 every r1_interval discriminator steps.
        if self.gan_on:
            r1_now = (self.step_index - l["disc_start"]) % l["r1_interval"] == 0
            self.opt_d.zero_grad(set_to_none=True)
            d_total = 0.0
            for x, x_hat in pairs:
                loss = self.disc_loss(x, x_hat, r1_now)
                (loss / self.accum).backward()
                d_total += loss.item()
            if math.isfinite(d_total):
                for group in self.opt_d.param_groups:
                    group["lr"] = self.lr(t["disc_lr"])
                self.opt_d.step()
        self.step_index += 1
        return g_total


# ---------------------------------------------------------------------------------------------
# Transformer (src/transformer/{model,batch,masking,sampling}.rs, src/stages/transformer)
# ---------------------------------------------------------------------------------------------

INIT_STD = 0.02


def linear(din: int, dout: int) -> nn.Linear:
    lin = nn.Linear(din, dout)
    nn.init.normal_(lin.weight, 0.0, INIT_STD)  # burn draws weight and bias from the initializer
    nn.init.normal_(lin.bias, 0.0, INIT_STD)
    return lin


class Vocab:
    """Codes 0..K, one class token per class, the null class, and (MaskGIT) the mask token."""

    def __init__(self, codes: int, classes: int, arch: str):
        self.codes, self.classes, self.arch = codes, classes, arch

    def class_token(self, c):
        return self.codes + c

    @property
    def null_class(self):
        return self.codes + self.classes

    @property
    def mask_token(self):
        return self.codes + self.classes + 1

    @property
    def size(self):
        return self.codes + self.classes + 1 + int(self.arch == "maskgit")

    def seq_len(self, n: int) -> int:
        return n + 1 if self.arch == "maskgit" else n


class Block(nn.Module):
    """Pre-LN block: x + drop(proj(MHSA(LN(x)))), then x + drop(fc2(GELU(fc1(LN(x)))))."""

    def __init__(self, m: dict):
        super().__init__()
        d = m["dim"]
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.qkv = linear(d, 3 * d)
        self.proj = linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=1e-5)
        self.fc1 = linear(d, m["mlp"])
        self.fc2 = linear(m["mlp"], d)
        self.drop = nn.Dropout(m["dropout"])
        self.heads = m["heads"]

    def _qkv(self, x):
        b, l, d = x.shape
        return self.qkv(self.norm1(x)).reshape(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)

    def _finish(self, x, att):
        b, l, d = x.shape
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, l, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.norm2(x)))))  # exact (erf) GELU, as burn's

    def forward(self, x, causal: bool):
        q, k, v = self._qkv(x)
        return self._finish(x, F.scaled_dot_product_attention(q, k, v, is_causal=causal))

    def forward_cached(self, x, layer_cache: list):
        q, k, v = self._qkv(x)
        if layer_cache:
            k = torch.cat([layer_cache[0], k], 2)
            v = torch.cat([layer_cache[1], v], 2)
        layer_cache[:] = [k, v]
        return self._finish(x, F.scaled_dot_product_attention(q, k, v))


class Transformer(nn.Module):
    def __init__(self, m: dict, vocab: Vocab, seq_len: int):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab.size, m["dim"])
        nn.init.normal_(self.tok_emb.weight, 0.0, INIT_STD)
        self.pos_emb = nn.Parameter(torch.randn(1, seq_len, m["dim"]) * INIT_STD)
        self.blocks = nn.ModuleList([Block(m) for _ in range(m["layers"])])
        self.norm = nn.LayerNorm(m["dim"], eps=1e-5)
        self.head = linear(m["dim"], vocab.codes)
        self.drop = nn.Dropout(m["dropout"])
        self.causal = vocab.arch == "gpt"

    def forward(self, tokens):
        l = tokens.shape[1]
        x = self.drop(self.tok_emb(tokens) + self.pos_emb[:, :l])
        for b in self.blocks:
            x = b(x, self.causal)
        return self.head(self.norm(x))

    def forward_step(self, tokens, pos: int, cache: list):
        """GPT decoding with a KV cache: tokens [B, 1] at position `pos` -> logits [B, K]."""
        if not cache:
            cache.extend([] for _ in self.blocks)
        x = self.tok_emb(tokens) + self.pos_emb[:, pos : pos + 1]
        for b, layer in zip(self.blocks, cache):
            x = b.forward_cached(x, layer)
        return self.head(self.norm(x))[:, 0]


def build_transformer(cfg: dict, side: int, codes: int, classes: int):
    vocab = Vocab(codes, max(classes, 1), cfg["arch"])
    n = side * side
    return Transformer(cfg["model"], vocab, vocab.seq_len(n)), vocab, n


def lr_at(t: dict, step: int) -> float:
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / t["warmup_steps"]
    if t["schedule"] == "constant":
        return t["lr"]
    span = max(t["steps"] - t["warmup_steps"], 1)
    p = min((step - t["warmup_steps"]) / span, 1.0)
    floor = t["min_lr_ratio"] * t["lr"]
    return floor + (t["lr"] - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


class TransformerBench:
    def __init__(self, cfg: dict, side: int, codes: int, classes: int, batch: int):
        self.cfg, self.batch = cfg, batch
        t = cfg["train"]
        self.model, self.vocab, self.n = build_transformer(cfg, side, codes, classes)
        self.model.train()  # dropout on, as on seqgan's autodiff device
        self.smoothing = t["label_smoothing"]
        if self.smoothing is None:
            self.smoothing = 0.1 if cfg["arch"] == "maskgit" else 0.0
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=t["lr"],
            betas=(t["beta1"], t["beta2"]),
            eps=t["adam_eps"],
            weight_decay=t["weight_decay"],  # applied to every weight, as seqgan's AdamW
        )
        # Random token maps and labels, as `seqgan bench` makes them.
        entries = max(batch * 4, 8)
        self.codes = torch.randint(0, codes, (entries, self.n))
        self.labels = torch.randint(0, max(classes, 1), (entries,))
        self.order = torch.randperm(entries)
        self.drawn = 0
        self.step_index = 0

    def next_entries(self):
        e = self.codes.shape[0]
        idx = []
        for _ in range(self.batch):
            p = self.drawn % e
            if p == 0 and self.drawn > 0:
                self.order = torch.randperm(e)
            idx.append(self.order[p])
            self.drawn += 1
        return torch.stack(idx)

    def make_batch(self):
        """MaskGIT: class token + codes with a cosine-count uniform mask (loss on masked
        positions); GPT: class token + all codes but the last (loss everywhere)."""
        v, n, b = self.vocab, self.n, self.batch
        idx = self.next_entries()
        codes = self.codes[idx]
        cls = self.labels[idx] + v.codes
        p_drop = self.cfg["train"]["class_dropout"]
        if p_drop > 0.0:
            cls = torch.where(torch.rand(b) < p_drop, torch.full_like(cls, v.null_class), cls)
        if v.arch == "maskgit":
            r = torch.rand(b, dtype=torch.float64)
            count = torch.ceil(torch.cos(math.pi / 2 * r) * n).clamp(1, n).long()
            ranks = torch.rand(b, n).argsort(1).argsort(1)  # a uniform random order per row
            mask = ranks < count[:, None]
            inputs = torch.cat([cls[:, None], torch.where(mask, torch.full_like(codes, v.mask_token), codes)], 1)
            weights = mask.float()
        else:
            inputs = torch.cat([cls[:, None], codes[:, :-1]], 1)
            weights = torch.ones(b, n)
        return inputs, codes, weights

    def step(self) -> float:
        t = self.cfg["train"]
        self.opt.zero_grad(set_to_none=True)
        accum = t["grad_accum"]
        for _ in range(accum):
            inputs, targets, weights = self.make_batch()
            logits = self.model(inputs)
            if self.vocab.arch == "maskgit":
                logits = logits[:, 1:]
            k = logits.shape[-1]
            per = F.cross_entropy(
                logits.reshape(-1, k), targets.reshape(-1), reduction="none", label_smoothing=self.smoothing
            ).reshape(weights.shape)
            total = weights.sum().clamp_min(1.0)
            loss = (per * weights).sum() / total
            (loss / accum).backward()
            with torch.no_grad():  # accuracy, as seqgan's step reports it
                _ = ((logits.argmax(-1) == targets).float() * weights).sum() / total
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t["grad_clip"]) if t["grad_clip"] > 0 else None
        if norm is None or math.isfinite(norm.item()):
            for group in self.opt.param_groups:
                group["lr"] = lr_at(t, self.step_index)
            self.opt.step()
        self.step_index += 1
        return loss.item()


def gumbel(shape, gen):
    u = torch.rand(shape, generator=gen).clamp(1e-10, 1.0 - 1e-7)
    return -(-u.log()).log()


def masked_after_step(t: int, steps: int, n: int, unknown: int) -> int:
    """Tokens still masked after step t of `steps` (cosine schedule, MaskGIT's floor of one)."""
    if t + 1 >= steps:
        return 0
    planned = math.floor(n * math.cos(math.pi / 2 * (t + 1) / steps))
    return max(min(max(planned, 0), max(unknown - 1, 0)), 1)


@torch.inference_mode()
def sample_maskgit(model, vocab, n, classes, gen, steps=12, temperature=1.0, choice_temperature=4.5):
    b = len(classes)
    column = torch.tensor([vocab.class_token(c) for c in classes]).reshape(b, 1)
    mask_id = vocab.mask_token
    tokens = torch.full((b, n), mask_id, dtype=torch.long)
    unknown = n
    for t in range(steps):
        logits = model(torch.cat([column, tokens], 1))[:, 1 : 1 + n]
        scaled = logits / temperature
        sampled = (scaled + gumbel(scaled.shape, gen)).argmax(-1)
        p = torch.softmax(scaled, -1).gather(2, sampled[..., None])[..., 0]
        is_masked = tokens == mask_id
        sampled = torch.where(is_masked, sampled, tokens)
        still = masked_after_step(t, steps, n, unknown)
        if still == 0:
            tokens = sampled
        else:
            anneal = choice_temperature * (1.0 - (t + 1) / steps)
            confidence = p.clamp_min(1e-30).log() + gumbel((b, n), gen) * anneal
            confidence = confidence.masked_fill(~is_masked, float("inf"))
            remask = confidence.argsort(1)[:, :still]
            tokens = sampled.scatter(1, remask, mask_id)
        unknown = still
    return tokens


@torch.inference_mode()
def sample_gpt(model, vocab, n, classes, gen, temperature=1.0):
    b = len(classes)
    column = torch.tensor([vocab.class_token(c) for c in classes]).reshape(b, 1)
    picked, cache = [], []
    for pos in range(n):
        inp = column if not picked else picked[-1]
        logits = model.forward_step(inp, pos, cache) / temperature
        picked.append((logits + gumbel(logits.shape, gen)).argmax(-1).reshape(b, 1))
    return torch.cat(picked, 1)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def timed(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - t0


def run_tokenizer(a) -> dict:
    phase2 = a.stage == "decoder"
    cfg = tokenizer_config(a.config, phase2)
    cfg["loss"]["disc_start"] = 0  # as `seqgan bench`: GAN (and R1) on from step 0
    t = cfg["train"]
    batch = a.batch or t["batch_size"]
    accum = a.grad_accum or t["grad_accum"]
    bench = GanBench(cfg, phase2, batch, accum)
    parts = bench.model.param_counts()
    total = sum(parts.values())
    disc = n_params(bench.disc)
    for name, v in list(parts.items()) + [("tokenizer", total), ("discriminator", disc)]:
        note(f"params {name:>17}: {v:>11} ({v / 1e6:.2f}M)")
    trainable = sum(p.numel() for p in bench.model.parameters() if p.requires_grad)
    res = cfg["model"]["resolution"]
    out = {
        "stage": a.stage,
        "config": a.config + ("+phase2" if phase2 else ""),
        "batch": batch,
        "grad_accum": accum,
        "resolution": res,
        "params": total,
        "param_parts": parts,
        "trainable_params": trainable,
        "disc_params": disc,
        "vgg_logits": bench.perceptual.use_logits,
        "alpha": cfg["perceptual"]["alpha"],
    }
    if a.params_only:
        return out
    note(f"{a.stage} @ {res}x{res}, batch {batch} x accum {accum}, {a.steps} steps (+{a.warmup} warm-up), GAN + R1 on")
    secs = timed(bench.step, a.steps, a.warmup)
    images = batch * accum * a.steps
    out.update(throughput=images / secs, unit="img/s", seconds_per_step=secs / a.steps)
    return out


def run_transformer(a) -> dict:
    cfg = transformer_config(a.transformer, a.arch)
    side, codes, classes = a.tokens
    batch = a.batch or 8
    out = {
        "stage": a.stage,
        "transformer": a.transformer,
        "arch": a.arch,
        "tokens": [side, codes, classes],
        "batch": batch,
    }
    if a.stage == "transformer":
        cfg["train"]["batch_size"] = batch
        bench = TransformerBench(cfg, side, codes, classes, batch)
        model = bench.model
    else:
        model, vocab, n = build_transformer(cfg, side, codes, classes)
        model.eval()  # no dropout when sampling
    params = n_params(model)
    note(f"params {a.arch} transformer: {params} ({params / 1e6:.2f}M)")
    out["params"] = params
    if a.params_only:
        return out
    if a.stage == "transformer":
        accum = cfg["train"]["grad_accum"]
        secs = timed(bench.step, a.steps, a.warmup)
        tok = a.steps * batch * accum * side * side
        out.update(grad_accum=accum, throughput=tok / secs, unit="tokens/s", seconds_per_step=secs / a.steps)
        return out
    classes_of = [i % max(classes, 1) for i in range(batch)]
    gen = torch.Generator().manual_seed(a.seed)
    sampler = sample_maskgit if a.arch == "maskgit" else sample_gpt
    secs = timed(lambda: sampler(model, vocab, n, classes_of, gen), a.steps, a.warmup)
    out.update(
        maskgit_steps=12 if a.arch == "maskgit" else None,
        throughput=a.steps * batch / secs,
        unit="token maps/s",
        seconds_per_step=secs / a.steps,
    )
    return out


def run_inception(a) -> dict:
    try:
        import torchvision
    except ImportError:
        raise SystemExit("the inception stage needs torchvision (pip install torchvision)")
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    net.fc = nn.Identity()  # stop at the 2048-d pooled features
    net.eval()
    params = n_params(net)
    note(f"params torchvision inception_v3 (to pool, no fc): {params} ({params / 1e6:.2f}M)")
    batch = a.batch or 8
    out = {"stage": "inception", "batch": batch, "params": params, "torchvision": torchvision.__version__}
    if a.params_only:
        return out
    x = torch.rand(batch, 3, 299, 299) * 2.0 - 1.0

    @torch.inference_mode()
    def fwd():
        feats = net(x)
        assert feats.shape == (batch, 2048)
        feats.sum().item()

    secs = timed(fwd, a.steps, a.warmup)
    out.update(throughput=a.steps * batch / secs, unit="img/s", seconds_per_step=secs / a.steps)
    return out


# 3x3 "same" convolutions of `seqgan bench --stage kernels`: (channels in = out, map side).
CONV_SHAPES = [(128, 32), (64, 32), (32, 32), (64, 16), (64, 8), (16, 32), (256, 8), (512, 4), (512, 16), (512, 32)]
# Attention shapes of `seqgan bench --stage kernels`: the tiny and base MaskGIT blocks.
ATTENTION_SHAPES = {"tiny": (32, 4, 65, 16), "base": (2, 16, 257, 48)}


def run_kernels(a) -> dict:
    """As `seqgan bench --stage kernels`: a res x res matmul, 3x3 convs (CONV_SHAPES) on a
    batch of maps, forward and forward + backward, attention, in GFLOP/s (one line per kernel on
    stderr)."""
    n, batch = a.res, a.batch or 8
    rates = {}

    def rate(name, flop, fn):
        secs = timed(fn, a.steps, a.warmup)
        rates[name] = flop * a.steps / secs / 1e9
        note(f"{name}: {rates[name]:.1f} GFLOP/s ({secs / a.steps * 1e3:.1f} ms)")

    x, y = torch.rand(n, n) * 2 - 1, torch.rand(n, n) * 2 - 1
    with torch.inference_mode():
        rate("matmul", 2.0 * n**3, lambda: (x @ y).sum().item())
    for c, side in a.conv_shapes or CONV_SHAPES:
        flop = 2.0 * batch * c * c * 9 * side * side
        inp = torch.rand(batch, c, side, side) * 2 - 1
        w = (torch.rand(c, c, 3, 3) * 2 - 1) * 0.03
        with torch.inference_mode():
            rate(f"conv_{c}x{side}_forward", flop, lambda: F.conv2d(inp, w, padding=1).sum().item())
        inp_g, w_g = inp.clone().requires_grad_(), w.clone().requires_grad_()

        def fwd_bwd():
            gx, gw = torch.autograd.grad(F.conv2d(inp_g, w_g, padding=1).sum(), [inp_g, w_g])
            (gx.sum() + gw.sum()).item()

        rate(f"conv_{c}x{side}_forward_backward", 3.0 * flop, fwd_bwd)
    # Attention forward + backward at the tiny and base transformers' shapes (MaskGIT,
    # batch x heads x L x dh), reading the three gradients.
    for name, (b, h, l, dh) in ATTENTION_SHAPES.items():
        q, k, v = (torch.randn(b, h, l, dh).requires_grad_() for _ in range(3))

        def att():
            out = F.scaled_dot_product_attention(q, k, v)
            gq, gk, gv = torch.autograd.grad((out * out.detach().cos()).sum(), [q, k, v])
            (gq.sum() + gk.sum() + gv.sum()).item()

        rate(f"attention_{name}", 3.0 * 4.0 * b * h * l * l * dh, att)
    return {"stage": "kernels", "batch": batch, "params": 0, "throughput": rates["matmul"],
            "unit": "GFLOP/s", **{f"gflop_per_s_{k}": round(v, 2) for k, v in rates.items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=["tokenizer", "decoder", "transformer", "sample", "inception", "kernels"], default="tokenizer")
    ap.add_argument("--res", type=int, default=1024, help="kernels: matrix side")
    ap.add_argument("--conv-shapes", type=lambda v: [tuple(map(int, t.split("x"))) for t in v.split(",")], default=None,
                    help="kernels: 3x3 convolutions as CHANNELSxSIDE,... (as seqgan bench --conv-shapes)")
    ap.add_argument("--config", default="tiny", help="tokenizer preset in configs/ (tiny, paper256, ...) or a JSON file")
    ap.add_argument("--transformer", default="tiny", help="transformer preset (tiny, base, ...) or a JSON file")
    ap.add_argument("--arch", choices=["maskgit", "gpt"], default="maskgit")
    ap.add_argument("--tokens", type=int, nargs=3, metavar=("SIDE", "CODES", "CLASSES"), default=[16, 1024, 1000])
    ap.add_argument("--batch", type=int, default=None, help="tokenizer/decoder: default train.batch_size; others: 8")
    ap.add_argument("--grad-accum", type=int, default=None, help="tokenizer/decoder: default train.grad_accum (as seqgan bench)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (sample: timed calls)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params-only", action="store_true", help="build the models, print parameter counts, time nothing")
    a = ap.parse_args(argv)
    if a.steps < 1 and not a.params_only:
        ap.error("--steps must be >= 1")

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    torch.set_default_dtype(torch.float32)

    if a.stage in ("tokenizer", "decoder"):
        out = run_tokenizer(a)
    elif a.stage in ("transformer", "sample"):
        out = run_transformer(a)
    elif a.stage == "kernels":
        out = run_kernels(a)
    else:
        out = run_inception(a)
    out.update(
        steps=a.steps,
        warmup=a.warmup,
        threads=a.threads,
        torch=torch.__version__,
        peak_rss_mib=round(peak_rss_mib(), 1),
        import_rss_mib=round(IMPORT_RSS_MIB, 1),
    )
    for k in ("throughput", "seconds_per_step"):
        if k in out:
            out[k] = round(out[k], 6)
    print(json.dumps(out, separators=(",", ":")), flush=True)  # compact: one line, greppable "key":value


if __name__ == "__main__":
    main()
