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
        log.contains(&format!(
            "Resume with: seqgan train-tokenizer --resume {} --device cpu",
            out2.display()
        )),
        "{log}"
    );
    let latest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("latest.json")).unwrap()).unwrap();
    assert!(latest["step"].as_u64().unwrap() >= 2, "{latest}");
}

#[test]
fn finetune_decoder_and_reconstruct_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p1 = tmp.path().join("p1");
    let p2 = tmp.path().join("p2");
    let rec = tmp.path().join("rec");
    let (p1s, p2s) = (p1.to_str().unwrap(), p2.to_str().unwrap());
    let ok = |args: &[&str]| {
        let out = seqgan().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let w = weights_set();
    let short = ["--set", "train.steps=2", "--set", "train.log_every=1"];
    let mut args = vec![
        "train-tokenizer",
        "--device",
        "cpu",
        "--out",
        p1s,
        "--set",
        &w,
    ];
    args.extend(short);
    ok(&args);
    let mut args = vec![
        "finetune-decoder",
        "--device",
        "cpu",
        "--tokenizer",
        p1s,
        "--out",
        p2s,
        "--config",
        "phase2-tiny",
        "--set",
        &w,
    ];
    args.extend(short);
    let (_, stderr) = ok(&args);
    assert!(
        stderr.contains("decoder attention") && stderr.contains("phase 1: "),
        "{stderr}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p2.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["kind"], "decoder");
    assert_eq!(cfg["finetune"]["tokenizer_step"], 2);
    assert_eq!(cfg["model"]["attention"]["enabled"], true);
    assert_eq!(cfg["perceptual"]["alpha"], 0.0);

    let (stdout, _) = ok(&[
        "reconstruct",
        "--device",
        "cpu",
        "--tokenizer",
        p2s,
        "--out",
        rec.to_str().unwrap(),
        "--limit",
        "3",
        "--batch",
        "2",
    ]);
    assert!(
        stdout.contains("mean PSNR") && stdout.contains("3 images"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(rec.join("psnr.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let pngs = std::fs::read_dir(&rec)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "png")
        .count();
    assert_eq!(pngs, 3);

    // Wrong inputs name what is wrong.
    let err = run_err(&["finetune-decoder", "--device", "cpu", "--tokenizer", p2s]);
    assert!(err.contains("expected a Tokenizer run"), "{err}");
    let err = run_err(&["finetune-decoder", "--device", "cpu"]);
    assert!(err.contains("--tokenizer"), "{err}");
    let err = run_err(&["reconstruct", "--device", "cpu", "--tokenizer", "/no/run"]);
    assert!(
        err.contains("/no/run") && err.contains("does not exist"),
        "{err}"
    );
    let err = run_err(&[
        "finetune-decoder",
        "--device",
        "cpu",
        "--tokenizer",
        p1s,
        "--out",
        tmp.path().join("p3").to_str().unwrap(),
        "--config",
        "phase3",
    ]);
    assert!(
        err.contains("phase3") && err.contains("phase2-tiny"),
        "{err}"
    );

    // Tokens from the phase-2 run, a short GPT run on them, and the errors around them.
    let tokens = tmp.path().join("tok.bin");
    let t = tmp.path().join("gpt");
    let (ts, tks) = (t.to_str().unwrap(), tokens.to_str().unwrap());
    let (_, stderr) = ok(&[
        "encode",
        "--device",
        "cpu",
        "--tokenizer",
        p2s,
        "--out",
        tks,
        "--limit",
        "40",
        "--flip",
    ]);
    assert!(stderr.contains("wrote 80 entries"), "{stderr}");
    let (_, stderr) = ok(&[
        "train-transformer",
        "--device",
        "cpu",
        "--tokens",
        tks,
        "--arch",
        "gpt",
        "--out",
        ts,
        "--set",
        "train.steps=3",
        "--set",
        "train.log_every=1",
        "--set",
        "train.batch_size=4",
    ]);
    assert!(
        stderr.contains("Gpt transformer") && stderr.contains("done"),
        "{stderr}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["kind"], "transformer");
    assert_eq!(cfg["arch"], "gpt");
    // Samples of every class as PNGs, a grid and an .npz; the teacher-forced visualisation.
    let smp = tmp.path().join("smp");
    let npz = tmp.path().join("smp.npz");
    let (_, stderr) = ok(&[
        "sample",
        "--device",
        "cpu",
        "--transformer",
        ts,
        "--decoder",
        p2s,
        "--class",
        "all",
        "--num",
        "2",
        "--batch",
        "8",
        "--top-k",
        "8",
        "--out",
        smp.to_str().unwrap(),
        "--npz",
        npz.to_str().unwrap(),
    ]);
    assert!(stderr.contains("20 images"), "{stderr}");
    assert!(smp.join("grid.png").exists() && smp.join("class-9/001.png").exists());
    let arr = seqgan::eval::npz::NpzImages::open(&npz).unwrap();
    assert_eq!((arr.n, arr.height, arr.width), (20, 32, 32));
    let first = arr.batches(1).recv().unwrap().unwrap();
    let png0 = image::open(smp.join("class-0/000.png"))
        .unwrap()
        .into_rgb8();
    assert_eq!(first, png0.into_raw(), "npz image 0 is class-0/000.png");
    let (stdout, _) = ok(&[
        "visualize",
        "--device",
        "cpu",
        "--transformer",
        ts,
        "--tokenizer",
        p1s,
        "--limit",
        "3",
        "--out",
        tmp.path().join("vis").to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("token accuracy") && stdout.contains("3 images"),
        "{stdout}"
    );
    let err = run_err(&[
        "sample",
        "--device",
        "cpu",
        "--transformer",
        ts,
        "--decoder",
        p2s,
        "--class",
        "12",
    ]);
    assert!(
        err.contains("out of range") && err.contains("circle-warm"),
        "{err}"
    );
    let err = run_err(&[
        "sample",
        "--device",
        "cpu",
        "--transformer",
        p1s,
        "--decoder",
        p2s,
    ]);
    assert!(err.contains("expected a Transformer run"), "{err}");

    let png = rec.join("psnr.csv");
    let err = run_err(&[
        "train-transformer",
        "--device",
        "cpu",
        "--tokens",
        png.to_str().unwrap(),
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert!(err.contains("not a seqgan token file"), "{err}");
    let err = run_err(&["train-transformer", "--device", "cpu", "--resume", p1s]);
    assert!(err.contains("expected a Transformer run"), "{err}");
    let err = run_err(&["encode", "--device", "cpu", "--tokenizer", ts]);
    assert!(err.contains("expected a Tokenizer or Decoder run"), "{err}");
}

/// Without `--device`, a machine without a GPU runs on the CPU device with a notice (never on a
/// software wgpu adapter), and `--resume` without `--device` stays on the run's device kind.
#[test]
fn default_device_is_real_hardware_and_resume_keeps_the_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    let w = weights_set();
    let run = |args: &[&str]| {
        let res = seqgan().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr).into_owned();
        assert!(res.status.success(), "{args:?}: {stderr}");
        stderr
    };
    let log = run(&[
        "train-tokenizer",
        "--out",
        o,
        "--set",
        &w,
        "--set",
        "train.steps=1",
    ]);
    let device_line = log
        .lines()
        .find(|l| l.starts_with("device: "))
        .unwrap_or_else(|| panic!("no device line: {log}"))
        .to_string();
    assert!(
        !device_line.contains("software"),
        "auto picked a software adapter: {log}"
    );
    let hardware_gpu =
        device_line.starts_with("device: wgpu") || device_line.starts_with("device: cuda");
    if !hardware_gpu {
        assert_eq!(device_line, "device: cpu (burn flex, pure Rust)", "{log}");
        assert!(
            log.contains("notice: ") && log.contains("CPU device"),
            "{log}"
        );
    }
    let state = std::fs::read_to_string(out.join("checkpoints/step-0000001/state.json")).unwrap();
    let kind = if hardware_gpu { "wgpu" } else { "cpu" };
    assert!(
        state.contains(&format!("\"device\": \"{kind}\"")),
        "{state}"
    );
    // The resumed run (two more steps) stays on the recorded kind without --device.
    let log = run(&["train-tokenizer", "--resume", o, "--set", "train.steps=3"]);
    assert!(log.lines().any(|l| l == device_line), "{log}");
    assert!(
        !log.contains("notice: "),
        "resume re-probed the device: {log}"
    );
}
