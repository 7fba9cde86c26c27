//! VGG-16 taps, `L_low`, `L_sem` (relu5_3 part), LPIPS and their input gradients against
//! `tests/fixtures/vgg16_reference.json` (independent PyTorch / official lpips values on the
//! same weights), on the weights made by scripts/fetch-vgg16.sh.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use seqgan::perceptual::PerceptualLoss;
use seqgan::perceptual::{LogitMode, PerceptualConfig};
use seqgan::pretrained::vgg16::TAP_NAMES;
use seqgan::pretrained::{Vgg16, WeightFile};
use std::collections::BTreeMap;

fn inputs(device: &Device) -> BTreeMap<&'static str, Tensor<4>> {
    let mut m = BTreeMap::new();
    m.insert(
        "img0",
        png_tensor(&fixture("images/img0_astronaut_64.png"), device),
    );
    m.insert(
        "img1",
        png_tensor(&fixture("images/img1_chelsea_64.png"), device),
    );
    m.insert(
        "img2",
        png_tensor(&fixture("images/img2_coffee_64.png"), device),
    );
    m.insert(
        "synthetic",
        Tensor::from_data(TensorData::new(pattern(3, 32, 32), [1, 3, 32, 32]), device),
    );
    // img0 + 0.1 P(3,64,64), clamped, float32 arithmetic.
    let img0 = values(m["img0"].clone());
    let p = pattern(3, 64, 64);
    let pert: Vec<f32> = img0
        .iter()
        .zip(&p)
        .map(|(a, b)| (a + 0.1f32 * b).clamp(-1.0, 1.0))
        .collect();
    m.insert(
        "img0_perturbed",
        Tensor::from_data(TensorData::new(pert, [1, 3, 64, 64]), device),
    );
    m
}

fn loss(alpha: f64, lpips_low: bool, device: &Device) -> PerceptualLoss {
    let cfg = PerceptualConfig {
        weights: vgg_weights(),
        lpips_weights: vgg_weights(),
        alpha,
        logits: LogitMode::Relu5Only,
        lpips_low,
    };
    PerceptualLoss::new(&cfg, device).unwrap()
}

#[test]
fn inputs_match_fixture() {
    let device = Device::flex();
    let reference = fixture_json("vgg16_reference.json");
    for (name, t) in inputs(&device) {
        let Some(r) = reference["inputs"].get(name) else {
            continue;
        };
        let v = values(t);
        let sum: f64 = v.iter().map(|x| *x as f64).sum();
        close(&format!("{name} sum"), sum, f(&r["sum"]), 1e-6, 1e-4);
    }
}

#[test]
fn taps_match_torchvision() {
    let device = Device::flex();
    let reference = fixture_json("vgg16_reference.json");
    let vgg = Vgg16::load(&WeightFile::open(&vgg_weights()).unwrap(), &device).unwrap();
    let ins = inputs(&device);
    for name in ["img0", "img1", "img2", "synthetic"] {
        let out = vgg.forward(ins[name].clone(), 4, false);
        assert_eq!(out.taps.len(), 5);
        for (i, tap) in TAP_NAMES.iter().enumerate() {
            let r = &reference["taps"][name][*tap];
            let dims: Vec<usize> = out.taps[i].dims().to_vec();
            let want: Vec<usize> = r["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(dims, want, "{name} {tap} shape");
            let v = values(out.taps[i].clone());
            let n = v.len() as f64;
            let sum: f64 = v.iter().map(|x| *x as f64).sum();
            let mean = sum / n;
            let std = (v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            let l2 = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let max = v.iter().fold(f64::MIN, |m, x| m.max(*x as f64));
            let what = format!("{name}/{tap}");
            close(&format!("{what} mean"), mean, f(&r["mean"]), 1e-4, 1e-6);
            close(&format!("{what} std"), std, f(&r["std"]), 1e-4, 1e-6);
            close(&format!("{what} l2"), l2, f(&r["l2"]), 1e-4, 1e-6);
            close(&format!("{what} max"), max, f(&r["max"]), 1e-3, 1e-5);
            for (k, want) in r["first8"].as_array().unwrap().iter().enumerate() {
                close(
                    &format!("{what} first8[{k}]"),
                    v[k] as f64,
                    f(want),
                    1e-3,
                    1e-5,
                );
            }
            let step = v.len() / 8;
            for (k, want) in r["strided8"].as_array().unwrap().iter().enumerate() {
                close(
                    &format!("{what} strided8[{k}]"),
                    v[k * step] as f64,
                    f(want),
                    1e-3,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn stops_at_the_deepest_tap_needed() {
    let device = Device::flex();
    let vgg = Vgg16::load(&WeightFile::open(&vgg_weights()).unwrap(), &device).unwrap();
    let x = inputs(&device)["img0"].clone();
    let full = vgg.forward(x.clone(), 4, false);
    let short = vgg.forward(x, 1, false);
    assert_eq!(short.taps.len(), 2);
    assert_eq!(values(short.taps[1].clone()), values(full.taps[1].clone()));
}

#[test]
fn pair_losses_match_reference() {
    let device = Device::flex();
    let reference = fixture_json("vgg16_reference.json");
    let ins = inputs(&device);
    let low = loss(0.0, false, &device);
    let sem = loss(1.0, false, &device);
    let lp = loss(0.0, true, &device);
    for pair in reference["pairs"].as_array().unwrap() {
        let (a, b) = (pair["a"].as_str().unwrap(), pair["b"].as_str().unwrap());
        let (xa, xb) = (ins[a].clone(), ins[b].clone());
        let name = pair["name"].as_str().unwrap();
        let mses = low.tap_mses(xa.clone(), xb.clone());
        for (i, tap) in TAP_NAMES.iter().enumerate() {
            let got = mses[i].clone().into_scalar::<f32>() as f64;
            close(
                &format!("{name} mse {tap}"),
                got,
                f(&pair["mse"][*tap]),
                1e-4,
                0.0,
            );
        }
        let l_low = low
            .forward(xa.clone(), xb.clone())
            .total
            .into_scalar::<f32>() as f64;
        close(
            &format!("{name} L_low"),
            l_low,
            f(&pair["L_low"]),
            1e-4,
            0.0,
        );
        let l_sem = sem
            .forward(xa.clone(), xb.clone())
            .total
            .into_scalar::<f32>() as f64;
        close(
            &format!("{name} L_sem relu5"),
            l_sem,
            f(&pair["L_sem_relu5"]),
            1e-4,
            0.0,
        );
        let lpips = lp
            .lpips(xa.clone(), xb.clone())
            .unwrap()
            .into_scalar::<f32>() as f64;
        close(
            &format!("{name} LPIPS"),
            lpips,
            f(&pair["lpips"]),
            1e-4,
            0.0,
        );
        let as_loss = lp.forward(xa, xb).total.into_scalar::<f32>() as f64;
        close(
            &format!("{name} LPIPS as L_low"),
            as_loss,
            f(&pair["lpips"]),
            1e-4,
            0.0,
        );
    }
}

#[test]
fn l_alpha_mixes_the_two_losses() {
    let device = Device::flex();
    let ins = inputs(&device);
    let (a, b) = (ins["img0"].clone(), ins["img2"].clone());
    let l_low = loss(0.0, false, &device)
        .forward(a.clone(), b.clone())
        .total
        .into_scalar::<f32>() as f64;
    let l_sem = loss(1.0, false, &device)
        .forward(a.clone(), b.clone())
        .total
        .into_scalar::<f32>() as f64;
    let mixed = loss(0.3, false, &device).forward(a, b);
    close(
        "L_0.3",
        mixed.total.into_scalar::<f32>() as f64,
        0.3 * l_sem + 0.7 * l_low,
        1e-5,
        0.0,
    );
    assert!(mixed.low.is_some() && mixed.sem.is_some());
}

#[test]
fn input_gradients_match_reference() {
    let device = Device::flex().autodiff();
    let reference = fixture_json("vgg16_reference.json");
    let ins = inputs(&device);
    for (key, lpips_low) in [("L_low", false), ("lpips", true)] {
        let r = &reference["gradients"][key];
        let l = loss(0.0, lpips_low, &device);
        let x_hat = ins["img0"].clone().require_grad();
        let total = l.forward(x_hat.clone(), ins["img1"].clone()).total;
        close(
            &format!("{key} loss"),
            total.clone().into_scalar::<f32>() as f64,
            f(&r["loss"]),
            1e-4,
            0.0,
        );
        let grads = total.backward();
        let g = x_hat.grad(&grads).expect("gradient reaches the input");
        let v: Vec<f32> = g.into_data().convert::<f32>().try_to_vec().unwrap();
        let sum: f64 = v.iter().map(|x| *x as f64).sum();
        let abs: f64 = v.iter().map(|x| x.abs() as f64).sum();
        let l2 = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let max = v.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
        close(&format!("{key} grad_l2"), l2, f(&r["grad_l2"]), 1e-3, 0.0);
        close(
            &format!("{key} grad_abs_sum"),
            abs,
            f(&r["grad_abs_sum"]),
            1e-3,
            0.0,
        );
        close(
            &format!("{key} grad_max_abs"),
            max,
            f(&r["grad_max_abs"]),
            1e-3,
            0.0,
        );
        close(
            &format!("{key} grad_sum"),
            sum,
            f(&r["grad_sum"]),
            2e-3,
            1e-3 * f(&r["grad_abs_sum"]) / v.len() as f64 * 10.0,
        );
        for (k, want) in r["grad_first8"].as_array().unwrap().iter().enumerate() {
            close(
                &format!("{key} grad[{k}]"),
                v[k] as f64,
                f(want),
                1e-3,
                1e-3 * f(&r["grad_max_abs"]),
            );
        }
    }
}

/// The classifier path on a small random classifier in torchvision's key layout, checked against
/// an independent host computation from the relu5_3 tap (already verified above).
#[test]
fn classifier_logits_and_l_sem_with_logits() {
    let device = Device::flex();
    let base = WeightFile::open(&vgg_weights()).unwrap();
    let mut tensors = base.tensors().clone();
    let (h1, h2, classes) = (16, 8, 5);
    let mut state = 12345u64;
    let mut rand = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    };
    let w0 = rand(h1 * 25088, 0.02);
    let b0 = rand(h1, 0.1);
    let w3 = rand(h2 * h1, 0.5);
    let b3 = rand(h2, 0.1);
    let w6 = rand(classes * h2, 0.5);
    let b6 = rand(classes, 0.1);
    for (k, v, s) in [
        ("classifier.0.weight", &w0, vec![h1, 25088]),
        ("classifier.0.bias", &b0, vec![h1]),
        ("classifier.3.weight", &w3, vec![h2, h1]),
        ("classifier.3.bias", &b3, vec![h2]),
        ("classifier.6.weight", &w6, vec![classes, h2]),
        ("classifier.6.bias", &b6, vec![classes]),
    ] {
        tensors.insert(k.to_string(), TensorData::new(v.clone(), s));
    }
    let file = WeightFile::from_tensors("test-classifier", tensors);
    let vgg = Vgg16::load(&file, &device).unwrap();
    assert!(vgg.has_classifier());
    let x = png_tensor(&fixture("images/img0_astronaut_64.png"), &device);
    let out = vgg.forward(x.clone(), 4, true);
    let logits: Vec<f32> = out.logits.unwrap().into_data().try_to_vec().unwrap();
    // Host reference: relu5_3 (512 x 4 x 4) -> maxpool 2x2 -> adaptive avg 7x7 -> 3 linear layers.
    let r5 = values(out.taps[4].clone());
    let (c, h, w) = (512, 4, 4);
    let (ph, pw) = (h / 2, w / 2);
    let mut pooled = vec![0f64; c * ph * pw];
    for ci in 0..c {
        for y in 0..ph {
            for xx in 0..pw {
                let mut m = f64::MIN;
                for dy in 0..2 {
                    for dx in 0..2 {
                        m = m.max(r5[ci * h * w + (2 * y + dy) * w + 2 * xx + dx] as f64);
                    }
                }
                pooled[ci * ph * pw + y * pw + xx] = m;
            }
        }
    }
    // AdaptiveAvgPool2d(7) from 2x2: bin i covers [floor(i*2/7), ceil((i+1)*2/7)).
    let mut flat = vec![0f64; c * 49];
    for ci in 0..c {
        for i in 0..7 {
            for j in 0..7 {
                let (y0, y1) = ((i * ph) / 7, ((i + 1) * ph).div_ceil(7));
                let (x0, x1) = ((j * pw) / 7, ((j + 1) * pw).div_ceil(7));
                let mut s = 0.0;
                for y in y0..y1 {
                    for xx in x0..x1 {
                        s += pooled[ci * ph * pw + y * pw + xx];
                    }
                }
                flat[ci * 49 + i * 7 + j] = s / ((y1 - y0) * (x1 - x0)) as f64;
            }
        }
    }
    let lin = |x: &[f64], w: &[f32], b: &[f32], out: usize, relu: bool| -> Vec<f64> {
        (0..out)
            .map(|o| {
                let s: f64 = x
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * w[o * x.len() + i] as f64)
                    .sum::<f64>()
                    + b[o] as f64;
                if relu { s.max(0.0) } else { s }
            })
            .collect()
    };
    let y = lin(
        &lin(&lin(&flat, &w0, &b0, h1, true), &w3, &b3, h2, true),
        &w6,
        &b6,
        classes,
        false,
    );
    for (k, (g, want)) in logits.iter().zip(&y).enumerate() {
        close(&format!("logit {k}"), *g as f64, *want, 1e-4, 1e-5);
    }
    // L_sem with logits = relu5 MSE + logit MSE.
    let cfg = PerceptualConfig {
        weights: "unused".into(),
        lpips_weights: "unused".into(),
        alpha: 1.0,
        logits: LogitMode::Require,
        lpips_low: false,
    };
    let sem = PerceptualLoss::from_vgg(vgg, &cfg, "test-classifier", &device).unwrap();
    assert!(sem.uses_logits());
    let y2 = png_tensor(&fixture("images/img1_chelsea_64.png"), &device);
    let with_logits = sem
        .forward(x.clone(), y2.clone())
        .total
        .into_scalar::<f32>() as f64;
    let relu5_only = loss(1.0, false, &device)
        .forward(x, y2)
        .total
        .into_scalar::<f32>() as f64;
    assert!(with_logits > relu5_only, "{with_logits} vs {relu5_only}");
}

#[test]
fn missing_classifier_is_a_clear_error_unless_relu5_only() {
    let device = Device::flex();
    let cfg = PerceptualConfig {
        weights: vgg_weights(),
        lpips_weights: vgg_weights(),
        alpha: 1.0,
        logits: LogitMode::Require,
        lpips_low: false,
    };
    let err = PerceptualLoss::new(&cfg, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("classifier")
            && err.contains("relu5-only")
            && err.contains("vgg16-397923af.pth"),
        "{err}"
    );
    // alpha = 0 needs no logits.
    let cfg = PerceptualConfig { alpha: 0.0, ..cfg };
    assert!(PerceptualLoss::new(&cfg, &device).is_ok());
}

#[test]
fn bad_weight_files_are_clear_errors() {
    let device = Device::flex();
    let err = WeightFile::open(std::path::Path::new("/nonexistent/vgg.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not found") && err.contains("fetch-vgg16.sh"),
        "{err}"
    );
    let base = WeightFile::open(&vgg_weights()).unwrap();
    let mut t = base.tensors().clone();
    t.remove("features.10.weight");
    let err = Vgg16::load(&WeightFile::from_tensors("x.safetensors", t), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("features.10.weight") && err.contains("missing"),
        "{err}"
    );
    let mut t = base.tensors().clone();
    t.insert(
        "features.0.bias".into(),
        TensorData::new(vec![0f32; 3], [3]),
    );
    let err = Vgg16::load(&WeightFile::from_tensors("x.safetensors", t), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("features.0.bias") && err.contains("[3]") && err.contains("[64]"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    let err = format!("{:#}", WeightFile::open(&junk).err().unwrap());
    assert!(err.contains("junk.safetensors"), "{err}");
}

/// VGG weights without LPIPS heads (torchvision's layout) take the heads from
/// `perceptual.lpips_weights`; a missing heads file is an error naming the key and the script.
#[test]
fn lpips_heads_come_from_their_own_file() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let conv_only = tmp.path().join("vgg16-conv-only.safetensors");
    common::weights::write_safetensors(&conv_only, &common::weights::vgg16_specs(false));
    let mut cfg = PerceptualConfig {
        weights: conv_only,
        lpips_weights: tmp.path().join("missing.safetensors"),
        alpha: 0.0,
        logits: LogitMode::Relu5Only,
        lpips_low: true,
    };
    let err = format!("{:#}", PerceptualLoss::new(&cfg, &device).err().unwrap());
    assert!(
        err.contains("missing.safetensors")
            && err.contains("perceptual.lpips_weights")
            && err.contains("fetch-vgg16.sh"),
        "{err}"
    );
    // A file that has no heads either is refused, naming it.
    cfg.lpips_weights = cfg.weights.clone();
    let err = format!("{:#}", PerceptualLoss::new(&cfg, &device).err().unwrap());
    assert!(err.contains("has no LPIPS heads"), "{err}");
    // With the fetch script's file as the heads source, the LPIPS form of L_low runs.
    cfg.lpips_weights = vgg_weights();
    let loss = PerceptualLoss::new(&cfg, &device).unwrap();
    assert!(
        loss.describe().contains("L_low = LPIPS"),
        "{}",
        loss.describe()
    );
    let x = png_tensor(&fixture("images/img0_astronaut_64.png"), &device);
    let y = png_tensor(&fixture("images/img1_chelsea_64.png"), &device);
    let v = loss.forward(x, y).total.into_scalar::<f32>();
    assert!(v.is_finite() && v > 0.0, "{v}");
}
