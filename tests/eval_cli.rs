//! `seqgan fid-stats`, `fid` and `eval-tokenizer` end to end on the CPU: fixture images through
//! the folder and .npz routes against inception_reference.json / frechet_reference.json, files
//! numpy can read, a tiny trained tokenizer's metrics, and clear errors.

mod common;

use common::*;
use seqgan::eval::npz::{NpzImageWriter, read_stats};
use std::path::Path;
use std::process::{Command, Output};

fn seqgan() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seqgan"));
    c.env("BURN_DEVICE", "flex")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn run_ok(args: &[&str]) -> String {
    let out: Output = seqgan().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn run_err(args: &[&str]) -> String {
    let out = seqgan().args(args).output().unwrap();
    assert!(!out.status.success(), "expected failure for {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The number after `label` on its line of `text`.
fn value_after(text: &str, label: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.contains(label))
        .unwrap_or_else(|| panic!("no `{label}` in:\n{text}"));
    line[line.find(label).unwrap() + label.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("`{line}`: {e}"))
}

const IMAGES: [&str; 3] = [
    "img0_astronaut_64.png",
    "img1_chelsea_64.png",
    "img2_coffee_64.png",
];

/// The fixture PNGs (optionally flipped) as an .npz of uint8 samples.
fn samples_npz(path: &Path, hflip: bool) {
    let mut w = NpzImageWriter::create(path, 3, 64, 64).unwrap();
    for name in IMAGES {
        let mut img = image::open(fixture(&format!("images/{name}")))
            .unwrap()
            .into_rgb8();
        if hflip {
            image::imageops::flip_horizontal_in_place(&mut img);
        }
        w.push(img.as_raw()).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn fid_stats_and_fid_match_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("sub/images.npz");
    let s = stats.to_str().unwrap();
    let folder = fixture("images");
    let out = run_ok(&[
        "fid-stats",
        folder.to_str().unwrap(),
        "--out",
        s,
        "--device",
        "cpu",
        "--batch",
        "2",
    ]);
    assert!(out.contains("over 3 images"), "{out}");
    // mu is the mean of the reference pool3 features of img0..2.
    let reference = fixture_json("inception_reference.json");
    let st = read_stats(&stats).unwrap();
    assert_eq!((st.n, st.mu.len(), st.sigma.rows), (3, 2048, 2048));
    for k in 0..2048 {
        let want: f64 = ["img0", "img1", "img2"]
            .iter()
            .map(|n| f(&reference["features"][*n]["values"][k]))
            .sum::<f64>()
            / 3.0;
        close(&format!("mu[{k}]"), st.mu[k], want, 0.0, 1e-4);
    }
    // numpy reads it as pytorch-fid does.
    let py = Command::new("python3")
        .args([
            "-c",
            "import sys, numpy as np; f = np.load(sys.argv[1]); \
             print(f['mu'].dtype, f['mu'].shape, f['sigma'].dtype, f['sigma'].shape, int(f['n']))",
            s,
        ])
        .output()
        .expect("python3 with numpy is needed (scripts/test.sh installs it)");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&py.stdout).trim(),
        "float64 (2048,) float64 (2048, 2048) 3"
    );

    // Flipped images as .npz samples vs the folder's statistics: the fixture's Fréchet case.
    let flipped = tmp.path().join("flipped.npz");
    samples_npz(&flipped, true);
    let out = run_ok(&["fid", flipped.to_str().unwrap(), s, "--device", "cpu"]);
    let frechet = fixture_json("frechet_reference.json");
    let want = f(&frechet["cases_from_samples"][3]["fid"]);
    let got = value_after(&out, "FID:");
    close("FID(flipped samples, folder stats)", got, want, 1e-3, 0.0);
    assert!(out.contains("Inception Score: not available"), "{out}");

    // The same images through numpy's compressed .npz and through our writer: FID 0.
    let ours = tmp.path().join("ours.npz");
    samples_npz(&ours, false);
    let theirs = tmp.path().join("numpy.npz");
    let py = Command::new("python3")
        .args([
            "-c",
            "import sys, numpy as np; f = np.load(sys.argv[1]); \
             np.savez_compressed(sys.argv[2], f['arr_0'])",
            ours.to_str().unwrap(),
            theirs.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(py.success());
    let out = run_ok(&["fid", theirs.to_str().unwrap(), s, "--device", "cpu"]);
    assert!(value_after(&out, "FID:").abs() < 1e-6, "{out}");
    // Two statistics files: no network, no device.
    let out = run_ok(&["fid", s, s, "--weights", "/nonexistent.safetensors"]);
    assert_eq!(value_after(&out, "FID:"), 0.0);
}

#[test]
fn clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s.npz");
    let o = out.to_str().unwrap();
    let folder = fixture("images");
    let f = folder.to_str().unwrap();
    let junk = tmp.path().join("junk.npz");
    std::fs::write(&junk, b"not a zip").unwrap();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec![
                "fid-stats",
                f,
                "--out",
                o,
                "--weights",
                "/no/inception.safetensors",
            ],
            vec!["/no/inception.safetensors", "scripts/fetch-inception.sh"],
        ),
        (
            vec!["fid-stats", "/no/such/dir", "--out", o],
            vec!["/no/such/dir", "does not exist"],
        ),
        (
            vec!["fid-stats", "builtin:shapes", "--out", o],
            vec!["--res"],
        ),
        (
            vec!["fid", junk.to_str().unwrap(), f],
            vec!["junk.npz", "zip"],
        ),
        (
            vec!["eval-tokenizer", "--tokenizer", "/no/run", "--data", f],
            vec!["/no/run", "does not exist"],
        ),
    ];
    for (args, needles) in cases {
        let err = run_err(&[args.as_slice(), &["--device", "cpu"]].concat());
        let missing: Vec<_> = needles.iter().filter(|n| !err.contains(**n)).collect();
        assert!(missing.is_empty(), "{args:?}: {missing:?} not in: {err}");
    }
}

#[test]
fn eval_tokenizer_reports_every_metric() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("tok");
    let r = run.to_str().unwrap();
    let weights = format!("perceptual.weights={}", vgg_weights().display());
    run_ok(&[
        "train-tokenizer",
        "--device",
        "cpu",
        "--out",
        r,
        "--set",
        &weights,
        "--set",
        "train.steps=2",
        "--set",
        "train.sample_every=0",
    ]);
    let json = tmp.path().join("metrics.json");
    let out = run_ok(&[
        "eval-tokenizer",
        "--tokenizer",
        r,
        "--data",
        "builtin:shapes:val",
        "--limit",
        "6",
        "--batch",
        "4",
        "--device",
        "cpu",
        "--vgg-weights",
        vgg_weights().to_str().unwrap(),
        "--out",
        json.to_str().unwrap(),
    ]);
    for label in [
        "PSNR (dB)",
        "SSIM",
        "LPIPS (VGG)",
        "rFID",
        "codebook usage",
        "perplexity",
    ] {
        assert!(out.contains(label), "`{label}` missing:\n{out}");
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(m["images"], 6);
    assert_eq!(m["step"], 2);
    assert_eq!(m["resolution"], 32);
    let num = |k: &str| m[k].as_f64().unwrap_or_else(|| panic!("{k}: {}", m[k]));
    // An untrained-ish tokenizer: poor but finite reconstructions.
    assert!(num("psnr") > 3.0 && num("psnr") < 40.0, "{m}");
    assert!(num("ssim") > -1.0 && num("ssim") < 1.0, "{m}");
    assert!(num("lpips") > 0.0 && num("lpips") < 2.0, "{m}");
    assert!(num("rfid") > 0.0, "{m}");
    let (usage, used, k) = (
        num("codebook_usage"),
        num("codes_used"),
        num("codebook_size"),
    );
    assert_eq!(k, 64.0);
    assert_eq!(used, (usage * k).round());
    assert!((1.0..=k).contains(&used), "{m}");
    assert!(
        num("perplexity") >= 1.0 && num("perplexity") <= used + 1e-9,
        "{m}"
    );
    // The printed table shows the same numbers.
    close(
        "printed PSNR",
        value_after(&out, "PSNR (dB)"),
        num("psnr"),
        1e-4,
        1e-4,
    );
    close(
        "printed rFID",
        value_after(&out, "rFID"),
        num("rfid"),
        1e-4,
        1e-4,
    );
}
