//! Phase 2 on the tiny config and `builtin:shapes` (CPU): identity start, frozen token space,
//! better held-out PSNR than phase 1, bit-exact resume, clear errors for bad phase-1 folders.

mod common;

use burn::module::Module;
use burn::store::ModuleSnapshot;
use burn::tensor::{Device, Int, Tensor};
use common::*;
use seqgan::config::{self, RunKind};
use seqgan::data::{Dataset, Loader, LoaderSpec};
use seqgan::eval::metrics::psnr_8bit;
use seqgan::perceptual::PerceptualLoss;
use seqgan::stages::gan::{GanPhase, GanState};
use seqgan::stages::phase2::phase2_config;
use seqgan::stages::tokenizer::{Start, train_tokenizer};
use seqgan::tokenizer::TokenizerRunConfig;
use seqgan::tokenizer::{TrainedTokenizer, VqModel};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

const PHASE1_STEPS: usize = 60;
const PHASE2_STEPS: usize = 60;

fn weights_set() -> String {
    format!("perceptual.weights={}", vgg_weights().display())
}

/// 64 held-out images (the same for every call).
fn held_out(device: &Device) -> Vec<Tensor<4>> {
    let ds = Dataset::open("builtin:shapes:val", 64).unwrap();
    Loader::new(ds, LoaderSpec::sequential(32, 16).workers(1, 1))
        .unwrap()
        .map(|b| b.to_tensor(device))
        .collect()
}

fn mean_psnr(model: &VqModel, xs: &[Tensor<4>]) -> f64 {
    let all: Vec<f64> = xs
        .iter()
        .flat_map(|x| psnr_8bit(x.clone(), model.forward(x.clone(), 1.0).0).unwrap())
        .collect();
    all.iter().sum::<f64>() / all.len() as f64
}

fn tokens(model: &VqModel, xs: &[Tensor<4>]) -> Vec<i64> {
    xs.iter()
        .flat_map(|x| {
            let t: Tensor<3, Int> = model.encode(x.clone());
            t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()
        })
        .collect()
}

fn weights<M: Module>(m: &M) -> BTreeMap<String, Vec<u8>> {
    m.collect(None, None, false)
        .into_iter()
        .map(|t| (t.name.clone(), t.to_bytes().unwrap().to_vec()))
        .collect()
}

fn phase2(phase1: &Path, steps: usize) -> TokenizerRunConfig {
    let sets = vec![format!("train.steps={steps}"), weights_set()];
    phase2_config(phase1, "phase2-tiny", &sets, None).unwrap()
}

fn run(cfg: &TokenizerRunConfig, out: &Path, device: &Device) -> GanState {
    let stop = AtomicBool::new(false);
    let start = Start::New {
        config: Box::new(cfg.clone()),
        out,
    };
    train_tokenizer(start, device, &stop).unwrap()
}

#[test]
fn phase2_starts_as_phase1_keeps_tokens_improves_and_resumes_bit_exactly() {
    let _serial = common::rng_lock();
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let p1_dir = tmp.path().join("p1");
    let p1_cfg: TokenizerRunConfig = config::from_preset(
        "tiny",
        &[format!("train.steps={PHASE1_STEPS}"), weights_set()],
    )
    .unwrap();
    run(&p1_cfg, &p1_dir, &device);
    let p1 = TrainedTokenizer::load(&p1_dir, &device).unwrap();
    assert_eq!(p1.kind, RunKind::Tokenizer);
    let xs = held_out(&device);

    // Identity start: before any phase-2 step the enhanced decoder reproduces phase 1 exactly.
    let cfg = phase2(&p1_dir, PHASE2_STEPS);
    assert_eq!(cfg.kind, RunKind::Decoder);
    assert!(cfg.model.attention.enabled && cfg.perceptual.alpha == 0.0);
    let ad = device.clone().autodiff();
    let perceptual = PerceptualLoss::new(&cfg.perceptual, &ad).unwrap();
    let lp = GanPhase::new(&cfg, ad.clone(), &perceptual);
    let p1_ad = TrainedTokenizer::load(&p1_dir, &ad).unwrap();
    let st0 = lp.init_from_phase1(p1_ad.model.clone(), p1_ad.load_discriminator(&ad).unwrap());
    assert!(st0.model.decoder.attention_params() > 0);
    let start_model = st0.model.valid();
    for x in &xs {
        let a: Vec<f32> = p1
            .model
            .forward(x.clone(), 1.0)
            .0
            .into_data()
            .try_to_vec()
            .unwrap();
        let b: Vec<f32> = start_model
            .forward(x.clone(), 1.0)
            .0
            .into_data()
            .try_to_vec()
            .unwrap();
        assert!(a == b, "phase-2 decoder at step 0 differs from phase 1's");
    }
    drop((st0, start_model, lp, p1_ad));

    // Finetune; the token space is untouched, the decoder changed, PSNR went up.
    let a_dir = tmp.path().join("a");
    let a = run(&cfg, &a_dir, &device);
    assert_eq!(a.state.step, PHASE2_STEPS);
    let p2 = TrainedTokenizer::load(&a_dir, &device).unwrap();
    assert_eq!(p2.kind, RunKind::Decoder);
    for (part, w1, w2) in [
        (
            "encoder",
            weights(&p1.model.encoder),
            weights(&p2.model.encoder),
        ),
        (
            "codebook",
            weights(&p1.model.quantizer),
            weights(&p2.model.quantizer),
        ),
    ] {
        assert_eq!(w1.len(), w2.len());
        for (k, v) in &w1 {
            assert!(w2[k] == *v, "{part} tensor {k} changed in phase 2");
        }
    }
    assert_eq!(tokens(&p1.model, &xs), tokens(&p2.model, &xs));
    let (psnr1, psnr2) = (mean_psnr(&p1.model, &xs), mean_psnr(&p2.model, &xs));
    eprintln!("held-out PSNR: phase 1 {psnr1:.2} dB -> phase 2 {psnr2:.2} dB");
    assert!(
        psnr2 >= psnr1 + 0.5,
        "phase 2 did not improve held-out PSNR by 0.5 dB: {psnr1:.2} -> {psnr2:.2}"
    );
    let grid = image::open(a_dir.join(format!("samples/step-{PHASE2_STEPS:07}.png"))).unwrap();
    assert_eq!(
        grid.height(),
        2 + 3 * (32 + 2),
        "rows: input, phase 1, phase 2"
    );

    // Half, then resume: bit-identical to the uninterrupted run.
    let b_dir = tmp.path().join("b");
    run(&phase2(&p1_dir, PHASE2_STEPS / 2), &b_dir, &device);
    let stop = AtomicBool::new(false);
    let sets = vec![format!("train.steps={PHASE2_STEPS}")];
    let resume = Start::Resume {
        run: &b_dir,
        sets: &sets,
        kind: RunKind::Decoder,
    };
    let b = train_tokenizer(resume, &device, &stop).unwrap();
    assert_eq!(b.state.step, PHASE2_STEPS);
    for (name, wa, wb) in [
        ("generator", weights(&a.model), weights(&b.model)),
        ("discriminator", weights(&a.disc), weights(&b.disc)),
    ] {
        assert_eq!(wa.len(), wb.len());
        for (k, v) in &wa {
            assert!(wb[k] == *v, "{name} tensor {k} differs after resume");
        }
    }

    // Bad phase-1 folders are clear errors.
    let missing = tmp.path().join("missing");
    let err = phase2_config(&missing, "phase2-tiny", &[], None).unwrap_err();
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
    let err = phase2_config(&a_dir, "phase2-tiny", &[], None).unwrap_err();
    assert!(
        format!("{err:#}").contains("expected a Tokenizer run"),
        "a phase-2 folder is not a phase-1 run: {err:#}"
    );
    let transformer = tmp.path().join("transformer");
    std::fs::create_dir_all(&transformer).unwrap();
    std::fs::write(
        transformer.join("config.json"),
        r#"{"kind": "transformer"}"#,
    )
    .unwrap();
    let err = phase2_config(&transformer, "phase2-tiny", &[], None).unwrap_err();
    assert!(format!("{err:#}").contains("Transformer"), "{err:#}");
    let err = phase2_config(
        &p1_dir,
        "phase2-tiny",
        &["model.codebook_size=128".into()],
        None,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("model.attention"), "{err:#}");
    // A corrupt phase-1 checkpoint: the new run fails naming the file.
    let corrupt = tmp.path().join("corrupt");
    copy_dir(&p1_dir, &corrupt);
    let (ckpt, _) = seqgan::run::RunDir::open(&corrupt, RunKind::Tokenizer)
        .unwrap()
        .require_latest()
        .unwrap();
    std::fs::write(ckpt.join("model.bpk"), b"not a checkpoint").unwrap();
    let stop = AtomicBool::new(false);
    let start = Start::New {
        config: Box::new(phase2(&corrupt, 2)),
        out: &tmp.path().join("c"),
    };
    let err = train_tokenizer(start, &device, &stop).err().unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("model.bpk") && msg.contains("corrupt"),
        "{msg}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn paper256_phase2_counts_57_9m_parameters() {
    let _serial = common::rng_lock();
    let base: TokenizerRunConfig = config::from_preset("paper256", &[]).unwrap();
    let cfg = seqgan::stages::phase2::as_phase2(&base, "phase2", &[]).unwrap();
    let model = VqModel::new(&cfg.model, &Device::flex());
    let counts = model.param_counts();
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    eprintln!("paper256 phase 2: {total} parameters {counts:?}");
    let want = 57.9e6;
    assert!(
        ((total as f64) - want).abs() <= 0.01 * want,
        "paper256 phase 2 has {total} parameters: {counts:?}"
    );
    assert!(counts.iter().any(|(name, _)| *name == "decoder attention"));
}
