//! The `seqgan` binary: clear errors for bad input, a short end-to-end run, Ctrl-C saves.

mod common;

use common::vgg_weights;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn seqgan() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seqgan"));
    c.env("BURN_DEVICE", "flex");
    c
}

fn weights_set() -> String {
    format!("perceptual.weights={}", vgg_weights().display())
}

fn run_err(args: &[&str]) -> String {
    let out = seqgan().args(args).output().unwrap();
    assert!(!out.status.success(), "expected failure for {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let missing = tmp.path().join("missing");
    let weights = weights_set();
    // (extra arguments after `train-tokenizer --device cpu`, substrings the error must contain)
    let o = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--out", o, "--set", "train.lrr=1"],
            vec!["unknown key `lrr`", "valid here"],
        ),
        (
            vec!["--out", o, "--set", "perceptual.alpha=2"],
            vec!["perceptual.alpha"],
        ),
        (
            vec!["--out", o, "--config", "nope.json"],
            vec!["nope.json", "presets"],
        ),
        (
            vec!["--out", o, "--data", "/no/such/dir"],
            vec!["/no/such/dir", "does not exist"],
        ),
        (
            vec!["--resume", missing.to_str().unwrap()],
            vec!["does not exist"],
        ),
        (
            vec![
                "--out",
                o,
                "--set",
                "perceptual.weights=/no/vgg.safetensors",
            ],
            vec!["fetch-vgg16.sh"],
        ),
        (
            vec![
                "--out",
                o,
                "--set",
                &weights,
                "--set",
                "perceptual.logits=require",
            ],
            vec!["classifier", "relu5-only"],
        ),
    ];
    for (extra, needles) in cases {
        let mut args = vec!["train-tokenizer", "--device", "cpu"];
        args.extend(extra.iter().copied());
        let err = run_err(&args);
        for needle in needles {
            assert!(err.contains(needle), "{args:?}: `{needle}` not in: {err}");
        }
    }
}

#[test]
fn short_run_writes_a_self_describing_folder_and_ctrl_c_saves() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    let st = seqgan()
        .args([
            "train-tokenizer",
            "--device",
            "cpu",
            "--out",
            o,
            "--set",
            &weights_set(),
        ])
        .args([
            "--set",
            "train.steps=4",
            "--set",
            "train.grad_accum=2",
            "--set",
            "train.ema_decay=0.9",
            "--set",
            "train.log_every=2",
            "--set",
            "train.sample_every=2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert!(st.status.success(), "{stderr}");
    assert!(
        stderr.contains("params") && stderr.contains("encoder") && stderr.contains("relu5_3 only"),
        "{stderr}"
    );
    assert!(stderr.contains("device: cpu"), "{stderr}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["kind"], "tokenizer");
    assert_eq!(cfg["perceptual"]["logits"], "relu5-only");
    assert_eq!(cfg["class_names"].as_array().unwrap().len(), 10);
    assert!(out.join("samples/step-0000004.png").exists());
    // Gradient accumulation draws two micro-batches per step; the EMA is checkpointed.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("checkpoints/step-0000004/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["batches_drawn"], 8);
    assert_eq!(state["images_seen"], 64);
    assert!(out.join("checkpoints/step-0000004/ema.bpk").exists());
    // A second run into the same folder is refused.
    let err = run_err(&[
        "train-tokenizer",
        "--device",
        "cpu",
        "--out",
        o,
        "--set",
        &weights_set(),
    ]);
    assert!(err.contains("--resume"), "{err}");

    // Ctrl-C: finishes the step, saves, exits 0 and says how to resume.
    let out2 = tmp.path().join("run2");
    let mut child = seqgan()
        .args([
            "train-tokenizer",
            "--device",
            "cpu",
            "--out",
            out2.to_str().unwrap(),
            "--set",
            &weights_set(),
        ])
        .args(["--set", "train.steps=100000", "--set", "train.log_every=1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let t0 = Instant::now();
    let mut log = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.starts_with("step 2/") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no progress: {log}"
        );
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    for line in lines {
        log.push_str(&line.unwrap());
        log.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("Resume with: seqgan train-tokenizer --resume"),
        "{log}"
    );
    let latest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("latest.json")).unwrap()).unwrap();
    assert!(latest["step"].as_u64().unwrap() >= 2, "{latest}");
}
