//! Phase-1 training on the tiny config and `builtin:shapes` (CPU): it learns, keeps the
//! codebook in use, and a resumed run ends bit-identical to an uninterrupted one.

mod common;

use burn::module::Module;
use burn::store::ModuleSnapshot;
use burn::tensor::Device;
use common::*;
use seqgan::config::{self, RunKind};
use seqgan::data::{Dataset, Loader, LoaderSpec};
use seqgan::stages::gan::GanState;
use seqgan::stages::tokenizer::{Start, train_tokenizer};
use seqgan::tokenizer::TokenizerRunConfig;
use seqgan::tokenizer::VqModel;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicBool;

fn tiny(sets: &[&str]) -> TokenizerRunConfig {
    let mut sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    sets.push(format!("perceptual.weights={}", vgg_weights().display()));
    config::from_preset("tiny", &sets).unwrap()
}

/// Mean L1 and codebook usage of `model` on 64 held-out images.
fn held_out(model: &VqModel, cfg: &TokenizerRunConfig, device: &Device) -> (f64, f64) {
    let ds = Dataset::open("builtin:shapes:val", 64).unwrap();
    let mut l1 = 0.0;
    let mut n = 0.0;
    let mut used = HashSet::new();
    for batch in Loader::new(
        ds,
        LoaderSpec::sequential(cfg.model.resolution, 16).workers(1, 1),
    )
    .unwrap()
    {
        let x = batch.to_tensor(device);
        let (x_hat, q) = model.forward(x.clone(), 1.0);
        l1 += (x_hat - x).abs().mean().into_scalar::<f32>() as f64 * batch.len() as f64;
        n += batch.len() as f64;
        let idx: Vec<i64> = q.indices.into_data().convert::<i64>().try_to_vec().unwrap();
        used.extend(idx);
    }
    (l1 / n, used.len() as f64 / cfg.model.codebook_size as f64)
}

fn weights<M: Module>(m: &M) -> BTreeMap<String, Vec<u8>> {
    m.collect(None, None, false)
        .into_iter()
        .map(|t| (t.name.clone(), t.to_bytes().unwrap().to_vec()))
        .collect()
}

fn assert_bit_identical(a: &GanState, b: &GanState) {
    let (wa, wb) = (weights(&a.model), weights(&b.model));
    assert_eq!(wa.len(), wb.len());
    for (k, v) in &wa {
        assert!(wb[k] == *v, "generator tensor {k} differs after resume");
    }
    let (da, db) = (weights(&a.disc), weights(&b.disc));
    for (k, v) in &da {
        assert!(db[k] == *v, "discriminator tensor {k} differs after resume");
    }
}

#[test]
fn learns_keeps_usage_and_resumes_bit_exactly() {
    let _serial = common::rng_lock();
    let device = Device::flex();
    let stop = AtomicBool::new(false);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(&[]);
    assert!(
        cfg.loss.disc_start < cfg.train.steps,
        "the GAN must be exercised"
    );

    // Untrained reference point, same seed as the run.
    let ad = device.clone().autodiff();
    ad.seed(cfg.train.seed);
    let init = VqModel::new(&cfg.model, &ad).valid();
    let (l1_before, _) = held_out(&init, &cfg, &device);

    // Uninterrupted 300 steps.
    let a_dir = tmp.path().join("a");
    let a = train_tokenizer(
        Start::New {
            config: Box::new(cfg.clone()),
            out: &a_dir,
        },
        &device,
        &stop,
    )
    .unwrap();
    assert_eq!(a.state.step, 300);
    let (l1_after, usage) = held_out(&a.model.valid(), &cfg, &device);
    eprintln!(
        "held-out L1 {l1_before:.4} -> {l1_after:.4}, codebook usage {:.0}%",
        usage * 100.0
    );
    assert!(
        l1_after <= 0.5 * l1_before,
        "L1 {l1_before} -> {l1_after}: not halved"
    );
    assert!(usage > 0.5, "codebook usage {usage} <= 50%");
    let logged = a.state.last_metrics["codebook_usage"].as_f64().unwrap();
    assert!(logged > 0.5, "logged window usage {logged}");
    for key in [
        "l1",
        "perceptual",
        "l_sem",
        "codebook",
        "commit",
        "g_adv",
        "d_loss",
        "perplexity",
        "img_per_s",
    ] {
        assert!(
            a.state.last_metrics.get(key).is_some(),
            "metrics lack {key}: {}",
            a.state.last_metrics
        );
    }

    // 150 steps, then resume to 300.
    let b_dir = tmp.path().join("b");
    let half = TokenizerRunConfig {
        train: seqgan::tokenizer::TrainConfig {
            steps: 150,
            ..cfg.train.clone()
        },
        ..cfg.clone()
    };
    let b1 = train_tokenizer(
        Start::New {
            config: Box::new(half),
            out: &b_dir,
        },
        &device,
        &stop,
    )
    .unwrap();
    assert_eq!(b1.state.step, 150);
    drop(b1);
    let sets = vec!["train.steps=300".to_string()];
    let b = train_tokenizer(
        Start::Resume {
            run: &b_dir,
            sets: &sets,
            kind: RunKind::Tokenizer,
        },
        &device,
        &stop,
    )
    .unwrap();
    assert_eq!(b.state.step, 300);
    assert_bit_identical(&a, &b);

    // The run folder is self-describing.
    for f in [
        "config.json",
        "latest.json",
        "metrics.jsonl",
        "samples/step-0000300.png",
    ] {
        assert!(a_dir.join(f).exists(), "{f} missing");
    }
    let lines = std::fs::read_to_string(b_dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        steps,
        (1..=12).map(|i| i * 25).collect::<Vec<_>>(),
        "one line per log step, no duplicates after resume"
    );
}

#[test]
fn paper256_counts_54_5m_parameters() {
    let _serial = common::rng_lock();
    let cfg: TokenizerRunConfig = config::from_preset("paper256", &[]).unwrap();
    let model = VqModel::new(&cfg.model, &Device::flex());
    let total: usize = model.param_counts().iter().map(|(_, n)| n).sum();
    let want = 54.5e6;
    assert!(
        ((total as f64) - want).abs() <= 0.01 * want,
        "paper256 has {total} parameters"
    );
    assert_eq!(cfg.model.latent_size(), 16);
}
