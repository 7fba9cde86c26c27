//! `seqgan encode` and `seqgan train-transformer` (CPU, tiny configs): token files, flips,
//! learning below the unigram baseline, the causal mask, exact resume, the paper's sizes.

mod common;

use burn::module::Module;
use burn::store::ModuleSnapshot;
use burn::tensor::{Device, Int, Tensor, TensorData};
use seqgan::commands::encode::encode;
use seqgan::config::{self, RunKind};
use seqgan::data::Dataset;
use seqgan::data::Layout;
use seqgan::data::tokens::TokenFile;
use seqgan::stages::transformer::{Start, new_config, train_transformer};
use seqgan::tokenizer::TokenizerRunConfig;
use seqgan::tokenizer::{TrainedTokenizer, VqModel};
use seqgan::transformer::build;
use seqgan::transformer::{Arch, TransformerRunConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// An untrained tiny tokenizer (deterministic): its token maps are a fixed function of the
/// images, which is all these tests need.
fn tokenizer(device: &Device) -> TrainedTokenizer {
    let cfg: TokenizerRunConfig = config::from_preset("tiny", &[]).unwrap();
    device.seed(11);
    TrainedTokenizer {
        model: VqModel::new(&cfg.model, device),
        cfg,
        kind: RunKind::Tokenizer,
        step: 0,
        weights_file: "model.bpk",
        checkpoint: "none".into(),
        root: "untrained".into(),
    }
}

/// Writes `n` built-in images as PNGs into class folders, mirrored or not.
fn write_folder(root: &Path, n: usize, mirrored: bool) {
    let ds = Dataset::open("builtin:shapes", n).unwrap();
    let names = ds.class_names();
    for i in 0..n {
        let img = ds.load(i, 32).unwrap();
        let img = if mirrored {
            image::imageops::flip_horizontal(&img)
        } else {
            img
        };
        let dir = root.join(&names[ds.label(i)]);
        std::fs::create_dir_all(&dir).unwrap();
        img.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

#[test]
fn encode_writes_flips_equal_to_encoding_mirrored_images() {
    let _serial = common::rng_lock();
    let device = Device::flex();
    let tok = tokenizer(&device);
    let tmp = tempfile::tempdir().unwrap();
    let (plain, mirror) = (tmp.path().join("plain"), tmp.path().join("mirror"));
    write_folder(&plain, 12, false);
    write_folder(&mirror, 12, true);
    let file = |data: &Path, flip: bool, name: &str| {
        let out = tmp.path().join(name);
        let data = data.to_str().unwrap();
        encode(&tok, data, Layout::Classes, &out, flip, 5, None, &device).unwrap();
        TokenFile::read(&out).unwrap()
    };
    let a = file(&plain, false, "a.bin");
    let f = file(&plain, true, "f.bin");
    let m = file(&mirror, false, "m.bin");
    assert_eq!(a.len(), 12);
    assert_eq!(f.len(), 24, "flips double the entries");
    assert!(f.header.flip && !a.header.flip);
    assert_eq!(a.header.tokenizer_hash, tok.model.token_space_hash());
    assert_eq!((a.header.h, a.header.w, a.header.codebook_size), (8, 8, 64));
    assert_eq!(a.header.class_names, m.header.class_names);
    for i in 0..12 {
        assert_eq!(f.entry(2 * i), a.entry(i), "entry {i}");
        assert_eq!(f.entry(2 * i + 1), m.entry(i), "mirrored entry {i}");
        assert_eq!(f.labels[2 * i], a.labels[i]);
        assert_eq!(f.labels[2 * i + 1], a.labels[i]);
    }
    let distinct: std::collections::HashSet<_> = (0..12).map(|i| a.entry(i).to_vec()).collect();
    assert!(
        distinct.len() > 6,
        "token maps should differ between images"
    );
}

fn shapes_tokens(dir: &Path, device: &Device) -> std::path::PathBuf {
    let out = dir.join("shapes.bin");
    encode(
        &tokenizer(device),
        "builtin:shapes",
        Layout::Classes,
        &out,
        false,
        64,
        Some(1200),
        device,
    )
    .unwrap();
    out
}

fn unigram_entropy(file: &TokenFile) -> f64 {
    let mut counts = vec![0f64; file.header.codebook_size];
    for &c in &file.codes {
        counts[c as usize] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    counts
        .iter()
        .filter(|c| **c > 0.0)
        .map(|c| -(c / total) * (c / total).ln())
        .sum()
}

fn tiny(arch: Arch, sets: &[&str]) -> TransformerRunConfig {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let mut cfg = new_config("tiny", &sets).unwrap();
    cfg.arch = arch;
    cfg
}

#[test]
fn both_architectures_learn_well_below_the_unigram_baseline() {
    let _serial = common::rng_lock();
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let tokens = shapes_tokens(tmp.path(), &device);
    let file = TokenFile::read(&tokens).unwrap();
    let baseline = unigram_entropy(&file);
    let ln_k = (file.header.codebook_size as f64).ln();
    eprintln!("unigram entropy {baseline:.3}, ln K {ln_k:.3}");
    assert!(
        baseline > 1.5,
        "tokens too uniform for a real check: {baseline}"
    );
    for arch in [Arch::Maskgit, Arch::Gpt] {
        let stop = AtomicBool::new(false);
        let out = tmp.path().join(format!("{arch:?}"));
        let st = train_transformer(
            Start::New {
                config: Box::new(tiny(arch, &[])),
                tokens: &tokens,
                out: &out,
            },
            &device,
            &stop,
        )
        .unwrap();
        let m = &st.state.last_metrics;
        let val = m["val_loss"].as_f64().unwrap();
        let acc = m["val_accuracy"].as_f64().unwrap();
        let first: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(out.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        eprintln!(
            "{arch:?}: first logged loss {:.3}, final val loss {val:.3}, val accuracy {acc:.3}",
            first["loss"].as_f64().unwrap()
        );
        assert!(val < 0.75 * ln_k, "{arch:?} val loss {val} vs ln K {ln_k}");
        assert!(
            val < baseline - 0.3,
            "{arch:?} val loss {val} not clearly below the unigram entropy {baseline}"
        );
        assert!(m["tokens_per_s"].as_f64().unwrap() > 0.0);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["kind"], "transformer");
        assert_eq!(
            cfg["tokens"]["header"]["tokenizer_hash"],
            file.header.tokenizer_hash
        );
    }
}

#[test]
fn gpt_is_causal_and_maskgit_is_not() {
    let _serial = common::rng_lock();
    let device = Device::flex();
    for arch in [Arch::Gpt, Arch::Maskgit] {
        let mut cfg = tiny(arch, &["model.dropout=0.0"]);
        cfg.tokens.header.codebook_size = 64;
        cfg.tokens.header.h = 4;
        cfg.tokens.header.w = 4;
        cfg.tokens.header.class_names = vec!["a".into(), "b".into()];
        let model = build(&cfg, &device);
        let l = if arch == Arch::Gpt { 16 } else { 17 };
        let seq: Vec<i64> = (0..l as i64).map(|i| (i * 7) % 64).collect();
        let logits = |s: &[i64]| -> Vec<f32> {
            let t = Tensor::<2, Int>::from_data(TensorData::new(s.to_vec(), [1, l]), &device);
            model.forward(t).into_data().try_to_vec().unwrap()
        };
        let base = logits(&seq);
        let j = 9;
        let mut changed = seq.clone();
        changed[j] = (changed[j] + 5) % 64;
        let after = logits(&changed);
        let row = |v: &[f32], i: usize| v[i * 64..(i + 1) * 64].to_vec();
        let diff = |i: usize| {
            row(&base, i)
                .iter()
                .zip(row(&after, i))
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        match arch {
            Arch::Gpt => {
                for i in 0..j {
                    assert!(diff(i) <= 1e-6, "position {i} saw the later token {j}");
                }
                for i in j..l {
                    assert!(diff(i) > 1e-6, "position {i} ignores token {j}");
                }
            }
            Arch::Maskgit => assert!(diff(0) > 1e-6, "MaskGIT is bidirectional"),
        }
    }
}

fn weights<M: Module>(m: &M) -> BTreeMap<String, Vec<u8>> {
    m.collect(None, None, false)
        .into_iter()
        .map(|t| (t.name.clone(), t.to_bytes().unwrap().to_vec()))
        .collect()
}

#[test]
fn resume_is_bit_exact_with_dropout_and_accumulation() {
    let _serial = common::rng_lock();
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let tokens = shapes_tokens(tmp.path(), &device);
    let sets = [
        "train.steps=30",
        "train.grad_accum=2",
        "train.ema_decay=0.9",
        "train.batch_size=8",
        "train.checkpoint_every=10",
        "train.eval_every=15",
    ];
    let stop = AtomicBool::new(false);
    let run = |cfg: TransformerRunConfig, out: &Path| {
        train_transformer(
            Start::New {
                config: Box::new(cfg),
                tokens: &tokens,
                out,
            },
            &device,
            &stop,
        )
        .unwrap()
    };
    let a = run(tiny(Arch::Maskgit, &sets), &tmp.path().join("a"));
    let mut half = tiny(Arch::Maskgit, &sets);
    half.train.steps = 15;
    let b_dir = tmp.path().join("b");
    run(half, &b_dir);
    let more = vec!["train.steps=30".to_string()];
    let b = train_transformer(
        Start::Resume {
            run: &b_dir,
            sets: &more,
        },
        &device,
        &stop,
    )
    .unwrap();
    assert_eq!((a.state.step, b.state.step), (30, 30));
    let (wa, wb) = (weights(&a.model), weights(&b.model));
    assert_eq!(wa.len(), wb.len());
    for (k, v) in &wa {
        assert!(wb[k] == *v, "tensor {k} differs after resume");
    }
    let (ea, eb) = (
        weights(a.ema.as_ref().unwrap()),
        weights(b.ema.as_ref().unwrap()),
    );
    for (k, v) in &ea {
        assert!(eb[k] == *v, "EMA tensor {k} differs after resume");
    }

    // Bad token files and folders are clear errors.
    let bytes = std::fs::read(&tokens).unwrap();
    let cut = tmp.path().join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let err = TokenFile::read(&cut).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    let err = train_transformer(
        Start::Resume {
            run: &tmp.path().join("nope"),
            sets: &[],
        },
        &device,
        &stop,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn paper_sizes_count_171m_and_306m() {
    let _serial = common::rng_lock();
    for (preset, want) in [("base", 171e6), ("large", 306e6)] {
        let mut cfg = new_config(preset, &[]).unwrap();
        cfg.tokens.header.codebook_size = 1024;
        cfg.tokens.header.h = 16;
        cfg.tokens.header.w = 16;
        cfg.tokens.header.class_names = (0..1000).map(|c| c.to_string()).collect();
        // Parameter shapes only: no need to materialise the weights.
        let n = build(&cfg, &Device::flex()).num_params() as f64;
        assert!(
            (n - want).abs() <= 0.02 * want,
            "{preset}: {n} parameters, want {want} +-2%"
        );
    }
}
