//! `seqgan sample` and `seqgan visualize` (CPU, tiny configs): MaskGIT's schedule, seeds, the
//! GPT KV cache, guidance checks, and an end-to-end check that samples are of the asked class.

mod common;

use burn::tensor::{Device, Int, Tensor};
use seqgan::commands::encode::encode;
use seqgan::commands::sample::{SampleOptions, parse_classes, sample};
use seqgan::config::{self, RunKind};
use seqgan::data::Layout;
use seqgan::data::{Dataset, Loader, LoaderSpec};
use seqgan::stages::tokenizer::{Start as TokStart, train_tokenizer};
use seqgan::stages::transformer::{Start, new_config, train_transformer};
use seqgan::tokenizer::TokenizerRunConfig;
use seqgan::tokenizer::{TrainedTokenizer, VqModel};
use seqgan::transformer::masking::{MaskSchedule, masked_after_step};
use seqgan::transformer::sampling::{GptOptions, MaskgitOptions, Sampler};
use seqgan::transformer::{Arch, TrainedTransformer, TransformerRunConfig};
use seqgan::transformer::{build, vocab};
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn tiny(arch: Arch) -> TransformerRunConfig {
    let mut cfg = new_config("tiny", &[]).unwrap();
    cfg.arch = arch;
    cfg.tokens.header.codebook_size = 64;
    cfg.tokens.header.h = 8;
    cfg.tokens.header.w = 8;
    cfg.tokens.header.class_names = (0..10).map(|c| format!("c{c}")).collect();
    cfg
}

fn ints(t: Tensor<2, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_to_vec().unwrap()
}

const MG: MaskgitOptions = MaskgitOptions {
    steps: 12,
    temperature: 1.0,
    choice_temperature: 4.5,
    schedule: MaskSchedule::Cosine,
};

#[test]
fn maskgit_follows_its_schedule_and_ends_unmasked() {
    let _serial = common::rng_lock();
    let device = Device::flex();
    let cfg = tiny(Arch::Maskgit);
    let model = build(&cfg, &device);
    let s = Sampler {
        model: &model,
        vocab: vocab(&cfg),
        n: 64,
        cfg_scale: 0.0,
        device: device.clone(),
    };
    for (schedule, steps) in [
        (MaskSchedule::Cosine, 12),
        (MaskSchedule::Linear, 8),
        (MaskSchedule::Square, 5),
        (MaskSchedule::Cosine, 100),
    ] {
        let opts = MaskgitOptions {
            steps,
            schedule,
            ..MG
        };
        let (tokens, left) = s.maskgit(&[0, 3, 9], &opts, 7, true);
        let mut unknown = 64;
        let want: Vec<usize> = (0..steps)
            .map(|t| {
                unknown = masked_after_step(schedule, t, steps, 64, unknown);
                unknown
            })
            .collect();
        assert_eq!(left, want, "{schedule:?} {steps} steps");
        assert_eq!(*left.last().unwrap(), 0);
        // MaskGIT's rule: at least one token fixed per step while more than one is masked,
        // and at least one masked until the last step (its mask_len floor of 1).
        assert!(
            left.windows(2).all(|w| w[1] < w[0] || w[0] == 1),
            "at least one token fixed per step: {left:?}"
        );
        assert!(
            left[..steps - 1].iter().all(|&m| m >= 1),
            "all tokens fixed before the last step: {left:?}"
        );
        let t = ints(tokens);
        assert_eq!(t.len(), 3 * 64);
        assert!(
            t.iter().all(|c| (0..64).contains(c)),
            "a mask token remains"
        );
    }
}

#[test]
fn samples_are_reproducible_and_the_kv_cache_is_exact() {
    let _serial = common::rng_lock();
    let device = Device::flex();
    for arch in [Arch::Maskgit, Arch::Gpt] {
        let cfg = tiny(arch);
        let model = build(&cfg, &device);
        for cfg_scale in [0.0, 2.0] {
            let s = Sampler {
                model: &model,
                vocab: vocab(&cfg),
                n: 64,
                cfg_scale,
                device: device.clone(),
            };
            let gpt = GptOptions {
                temperature: 1.0,
                top_k: Some(10),
                top_p: Some(0.9),
                use_cache: true,
            };
            let run = |seed| match arch {
                Arch::Maskgit => ints(s.maskgit(&[1, 2, 2], &MG, seed, false).0),
                Arch::Gpt => ints(s.gpt(&[1, 2, 2], &gpt, seed)),
            };
            let (a, b, c) = (run(5), run(5), run(6));
            assert_eq!(a, b, "{arch:?}: same seed, different samples");
            assert_ne!(a, c, "{arch:?}: the seed has no effect");
            if arch == Arch::Gpt {
                // The cache changes the cost, not the tokens: exact at argmax, and with the
                // same random draws also when sampling.
                for temperature in [0.0, 1.0] {
                    let opts = |use_cache| GptOptions {
                        temperature,
                        use_cache,
                        ..gpt
                    };
                    let cached = ints(s.gpt(&[0, 4], &opts(true), 9));
                    let full = ints(s.gpt(&[0, 4], &opts(false), 9));
                    assert_eq!(cached, full, "cfg {cfg_scale} temperature {temperature}");
                }
            }
        }
    }
}

#[test]
fn class_arguments_name_the_valid_choices() {
    let names: Vec<String> = ["n01440764", "n02099601", "n09999999"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(parse_classes("all", &names).unwrap(), vec![0, 1, 2]);
    assert_eq!(
        parse_classes("2, n02099601,0", &names).unwrap(),
        vec![2, 1, 0]
    );
    let err = parse_classes("3", &names).unwrap_err().to_string();
    assert!(
        err.contains("out of range") && err.contains("n01440764"),
        "{err}"
    );
    let err = parse_classes("goldfish", &names).unwrap_err().to_string();
    assert!(err.contains("goldfish") && err.contains("0..2"), "{err}");
}

/// A fixed feature space for nearest-class-mean assignment: two chroma maps (R - B and
/// G - (R + B) / 2, which ignore the grey backgrounds) average-pooled to 8x8.
fn features(x: Tensor<4>) -> Vec<Vec<f32>> {
    let b = x.dims()[0];
    let ch = |i: usize| x.clone().narrow(1, i, 1);
    let chroma = Tensor::cat(vec![ch(0) - ch(2), ch(1) - (ch(0) + ch(2)) * 0.5], 1);
    let pooled = burn::tensor::module::adaptive_avg_pool2d(chroma, [8, 8]);
    let v: Vec<f32> = pooled.into_data().try_to_vec().unwrap();
    v.chunks(v.len() / b).map(|c| c.to_vec()).collect()
}

fn nearest(f: &[f32], means: &[Vec<f32>]) -> usize {
    let d = |m: &Vec<f32>| f.iter().zip(m).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
    (0..means.len())
        .min_by(|a, b| d(&means[*a]).total_cmp(&d(&means[*b])))
        .unwrap()
}

fn image_tensor(dir: &Path, device: &Device) -> Tensor<4> {
    let ds = Dataset::open_images(dir.to_str().unwrap(), 0).unwrap();
    let mut loader = Loader::new(ds, LoaderSpec::sequential(32, 1000).workers(1, 1)).unwrap();
    loader.next_batch().unwrap().to_tensor(device)
}

#[test]
fn end_to_end_samples_are_of_the_asked_class() {
    let _serial = common::rng_lock();
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    // A short phase 1, tokens, a tiny MaskGIT.
    let tok_dir = tmp.path().join("tok");
    let tok_cfg: TokenizerRunConfig = config::from_preset(
        "tiny",
        &[
            "train.steps=150".into(),
            format!("perceptual.weights={}", common::vgg_weights().display()),
        ],
    )
    .unwrap();
    train_tokenizer(
        TokStart::New {
            config: Box::new(tok_cfg),
            out: &tok_dir,
        },
        &device,
        &stop,
    )
    .unwrap();
    let tok = TrainedTokenizer::load(&tok_dir, &device).unwrap();
    let tokens = tmp.path().join("t.bin");
    encode(
        &tok,
        "builtin:shapes",
        Layout::Classes,
        &tokens,
        true,
        64,
        Some(2000),
        &device,
    )
    .unwrap();
    let tr_dir = tmp.path().join("mg");
    train_transformer(
        Start::New {
            config: Box::new(new_config("tiny", &["train.steps=400".into()]).unwrap()),
            tokens: &tokens,
            out: &tr_dir,
        },
        &device,
        &stop,
    )
    .unwrap();
    let tr = TrainedTransformer::load(&tr_dir, &device).unwrap();

    // Class means of held-out images in the fixed feature space: of the real images, and of
    // their reconstructions by this tokenizer (the domain the samples are decoded into).
    let val = Dataset::open("builtin:shapes:val", 400).unwrap();
    let mut sums = [vec![vec![0f32; 128]; 10], vec![vec![0f32; 128]; 10]];
    let mut counts = vec![0f32; 10];
    for batch in Loader::new(val, LoaderSpec::sequential(32, 100).workers(1, 1)).unwrap() {
        let x = batch.to_tensor(&device);
        let recon = tok
            .model
            .decode_indices(tok.model.encode(x.clone()))
            .clamp(-1.0, 1.0);
        for (which, x) in [x, recon].into_iter().enumerate() {
            for (f, &label) in features(x).iter().zip(&batch.labels) {
                for (s, v) in sums[which][label].iter_mut().zip(f) {
                    *s += v;
                }
            }
        }
        for &label in &batch.labels {
            counts[label] += 1.0;
        }
    }
    let means = sums.map(|sums| {
        sums.iter()
            .zip(&counts)
            .map(|(s, c)| s.iter().map(|v| v / c).collect::<Vec<f32>>())
            .collect::<Vec<_>>()
    });
    // Samples without and with classifier-free guidance (the tiny preset trains with class
    // dropout 0.1), classified by the nearest class mean.
    let out = tmp.path().join("samples");
    let per_class = 30;
    let opts = SampleOptions {
        classes: (0..10).collect(),
        num: per_class,
        batch: 40,
        seed: 1,
        cfg_scale: 0.0,
        maskgit: MG,
        gpt: GptOptions {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            use_cache: true,
        },
    };
    let mut scores = Vec::new();
    for cfg_scale in [0.0, 3.0] {
        let dir = tmp.path().join(format!("samples-cfg{cfg_scale}"));
        let run = SampleOptions {
            cfg_scale,
            ..opts.clone()
        };
        assert_eq!(
            sample(&tr, &tok, &run, &dir, None, &device).unwrap(),
            10 * per_class
        );
        assert!(dir.join("grid.png").exists() && dir.join("class-9/029.png").exists());
        let (mut hits, mut colour_hits) = ([0; 2], [0; 2]);
        for c in 0..10 {
            let x = image_tensor(&dir.join(format!("class-{c}")), &device);
            for f in features(x) {
                for (which, means) in means.iter().enumerate() {
                    let got = nearest(&f, means);
                    hits[which] += usize::from(got == c);
                    colour_hits[which] += usize::from(got % 2 == c % 2);
                }
            }
        }
        let n = (10 * per_class) as f64;
        for (which, name) in ["real images", "reconstructions"].iter().enumerate() {
            eprintln!(
                "guidance {cfg_scale}, class means of {name}: samples assigned to the asked \
                 class: {:.2} (chance 0.10); to its colour group (warm/cool): {:.2} (chance 0.50)",
                hits[which] as f64 / n,
                colour_hits[which] as f64 / n
            );
        }
        scores.push((hits[1] as f64 / n, colour_hits[1] as f64 / n));
    }
    // What this budget (150 tokenizer + 400 MaskGIT steps) reliably teaches is the colour
    // family of a class (warm/cool), not yet its shape: the 10-class accuracy measured 0.11-0.18
    // unguided and 0.16 guided, depending on the CPU's float paths (two machines, same code,
    // different trajectories), so it is printed, not asserted. The colour group is asserted:
    // measured 0.78 unguided and 0.92 guided here (0.93 unguided by the real-image means on
    // another machine); with 300 samples, P(>= 0.65 | chance 0.5) is 1e-7 and P(>= 0.8 | 0.5)
    // is below 1e-20. A model that ignores the class token scores 0.5.
    let [(_, colour), (_, colour_guided)] = scores[..] else {
        unreachable!()
    };
    assert!(colour >= 0.65, "unguided colour-group accuracy {colour}");
    assert!(
        colour_guided >= 0.8,
        "guided colour-group accuracy {colour_guided}"
    );

    // Guidance needs class dropout; a decoder from another tokenizer is refused.
    let mut no_dropout = TrainedTransformer::load(&tr_dir, &device).unwrap();
    no_dropout.cfg.train.class_dropout = 0.0;
    let guided = SampleOptions {
        cfg_scale: 1.5,
        num: 1,
        ..opts
    };
    let err = sample(&no_dropout, &tok, &guided, &out, None, &device).unwrap_err();
    assert!(err.to_string().contains("class dropout"), "{err}");
    assert_eq!(sample(&tr, &tok, &guided, &out, None, &device).unwrap(), 10);
    let other = TrainedTokenizer {
        model: VqModel::new(&tok.cfg.model, &device),
        cfg: tok.cfg.clone(),
        kind: RunKind::Tokenizer,
        step: 0,
        weights_file: "model.bpk",
        checkpoint: "x".into(),
        root: "other-run".into(),
    };
    let err = sample(&tr, &other, &guided, &out, None, &device).unwrap_err();
    assert!(
        err.to_string().contains("other-run") && err.to_string().contains("hash"),
        "{err}"
    );
}
