//! Every stage at the paper's configs (`paper256`, `phase2`, `base`), as the README writes the
//! commands, for one step each on the CPU: model sizes are never cut, only steps, batch and
//! image counts (`--set`). The VGG-16 is a torchvision-layout `.pth` with the classifier
//! (random weights, generated here), so the class-logit path of `L_sem` runs at 256x256
//! through the adaptive pool, and phase 2 takes its LPIPS heads from their own file, as a user
//! with torchvision's `vgg16-397923af.pth` has it.

mod common;

use common::weights::{Spec, lpips_head_specs, vgg16_specs, write_pth, write_safetensors};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Runs `seqgan ARGS` in `dir`; panics with its output on failure. Returns stderr.
fn seqgan(dir: &Path, args: &[&str]) -> String {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_seqgan"))
        .current_dir(dir)
        .env("BURN_DEVICE", "flex")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "seqgan {} failed:\n{stderr}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!(
        "[{:6.1} s] seqgan {}",
        start.elapsed().as_secs_f64(),
        args.join(" ")
    );
    stderr
}

fn inception_weights() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/inception-fid.safetensors");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-inception.sh first (the README's test command does)",
        p.display()
    );
    p
}

#[test]
fn every_stage_runs_at_the_paper_configs() {
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    // SEQGAN_KEEP_TEST_DIR=1 keeps the folder (weights, runs) for a look afterwards.
    let tmp_keep = std::env::var("SEQGAN_KEEP_TEST_DIR").is_ok_and(|v| v == "1");
    let dir = tmp.path();
    if tmp_keep {
        eprintln!("keeping {}", dir.display());
    }
    std::fs::create_dir_all(dir.join("weights")).unwrap();
    // The files configs/paper256.json names: torchvision's VGG-16 (with classifier, no LPIPS
    // heads) and the fetch script's safetensors (conv weights + LPIPS heads).
    write_pth(&dir.join("weights/vgg16-397923af.pth"), &vgg16_specs(true));
    let mut lpips: Vec<Spec> = vgg16_specs(false);
    lpips.extend(lpips_head_specs());
    write_safetensors(&dir.join("weights/vgg16.safetensors"), &lpips);
    eprintln!(
        "[{:6.1} s] random VGG-16 weights written",
        start.elapsed().as_secs_f64()
    );

    // Phase 1: one step at batch 1 with the GAN and R1 on.
    let log = seqgan(
        dir,
        &[
            "train-tokenizer",
            "--config",
            "paper256",
            "--data",
            "builtin:shapes",
            "--out",
            "runs/tok256",
            "--set",
            "train.steps=1",
            "--set",
            "train.batch_size=1",
            "--set",
            "train.grad_accum=1",
            "--set",
            "loss.disc_start=0",
            "--set",
            "data.builtin_len=8",
            // No sample grids: 8 images (16 in phase 2) through the tokenizer at 256x256 would
            // double the test's time; the tiny tests cover the grids.
            "--set",
            "train.sample_every=0",
        ],
    );
    assert!(log.contains("relu5_3 + logits"), "{log}");
    assert!(log.contains("(54.43M)"), "paper tokenizer size: {log}");
    let metrics = std::fs::read_to_string(dir.join("runs/tok256/metrics.jsonl")).unwrap();
    for key in ["\"l_sem\"", "\"d_loss\"", "\"r1\"", "\"g_adv\""] {
        assert!(metrics.contains(key), "{key} missing: {metrics}");
    }

    // Phase 2 with the README's command and the default `phase2` patch (the paper's L_low:
    // per-layer feature MSE), then with the LPIPS form, whose heads come from their own file
    // (torchvision's .pth has none).
    for (out, extra, expected) in [
        ("runs/dec256", None, "L_low = 5 taps"),
        (
            "runs/dec256-lpips",
            Some("perceptual.lpips_low=true"),
            "L_low = LPIPS (weights weights/vgg16-397923af.pth + weights/vgg16.safetensors)",
        ),
    ] {
        let mut args = vec![
            "finetune-decoder",
            "--tokenizer",
            "runs/tok256",
            "--out",
            out,
            "--set",
            "train.steps=1",
        ];
        args.extend(extra.iter().flat_map(|set| ["--set", set]));
        let log = seqgan(dir, &args);
        assert!(log.contains(expected), "{expected}: {log}");
        let metrics = std::fs::read_to_string(dir.join(out).join("metrics.jsonl")).unwrap();
        assert!(metrics.contains("\"l_low\""), "{metrics}");
    }

    seqgan(
        dir,
        &[
            "encode",
            "--tokenizer",
            "runs/tok256",
            "--limit",
            "4",
            "--out",
            "tokens.bin",
        ],
    );
    for arch in ["maskgit", "gpt"] {
        let out = format!("runs/{arch}");
        let log = seqgan(
            dir,
            &[
                "train-transformer",
                "--tokens",
                "tokens.bin",
                "--config",
                "base",
                "--arch",
                arch,
                "--out",
                &out,
                "--set",
                "train.steps=1",
                "--set",
                "train.batch_size=2",
            ],
        );
        assert!(log.contains("transformer: 17"), "base size: {log}");
    }
    seqgan(
        dir,
        &[
            "sample",
            "--transformer",
            "runs/maskgit",
            "--decoder",
            "runs/dec256",
            "--class",
            "0",
            "--num",
            "1",
            "--batch",
            "1",
            "--steps",
            "2",
            "--out",
            "samples",
        ],
    );
    assert!(dir.join("samples/grid.png").exists());
    seqgan(
        dir,
        &[
            "reconstruct",
            "--tokenizer",
            "runs/dec256",
            "--limit",
            "1",
            "--out",
            "reconstructions",
        ],
    );
    let inception = inception_weights();
    seqgan(
        dir,
        &[
            "eval-tokenizer",
            "--tokenizer",
            "runs/dec256",
            "--data",
            "builtin:shapes:val",
            "--limit",
            "2",
            "--batch",
            "2",
            "--weights",
            inception.to_str().unwrap(),
            "--out",
            "eval.json",
        ],
    );
    let eval = std::fs::read_to_string(dir.join("eval.json")).unwrap();
    assert!(eval.contains("lpips") && eval.contains("psnr"), "{eval}");
    eprintln!(
        "paper-scale smoke test: {:.0} s in all",
        start.elapsed().as_secs_f64()
    );
    if tmp_keep {
        let _ = tmp.keep();
    }
}
