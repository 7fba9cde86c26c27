//! No input a user can type or put in a folder loses a run or panics: one test per class of
//! hostile-but-fair input (divergence, all-unreadable batches, non-finite checkpoints, sampling
//! flags, messy folders, oversized images, two writers and SIGTERM, and the small checks).
//! Every bad file is generated here from a few bytes.

mod common;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor};
use image::{ImageBuffer, Rgb};
use seqgan::run::checkpoint::module_bytes;
use seqgan::tokenizer::TrainedTokenizer;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn seqgan() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seqgan"));
    c.env("BURN_DEVICE", "flex");
    c
}

/// Runs `seqgan ARGS`; panics on failure. Returns stderr.
fn ok(args: &[&str]) -> String {
    let out = seqgan().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?} failed:\n{stderr}");
    stderr + &String::from_utf8_lossy(&out.stdout)
}

/// Runs `seqgan ARGS`, expecting a clean failure (exit 1 with `error:`, never a panic).
fn fails(args: &[&str]) -> String {
    let out = seqgan().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should fail cleanly:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
    stderr
}

fn weights_set() -> String {
    format!("perceptual.weights={}", common::vgg_weights().display())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny phase-1 run of `steps` steps (checkpoints every `every`) in `dir`.
fn tiny_tokenizer(dir: &Path, steps: usize, every: usize) {
    ok(&[
        "train-tokenizer",
        "--device",
        "cpu",
        "--out",
        s(dir),
        "--set",
        &weights_set(),
        "--set",
        &format!("train.steps={steps}"),
        "--set",
        &format!("train.checkpoint_every={every}"),
        "--set",
        "train.log_every=1",
        "--set",
        "train.sample_every=0",
    ]);
}

/// A 2-step tiny tokenizer in `dir/tok` and 20 of its token maps in `dir/t.bin`.
fn tiny_tokens(dir: &Path) -> (PathBuf, PathBuf) {
    let tok = dir.join("tok");
    tiny_tokenizer(&tok, 2, 2);
    let tokens = dir.join("t.bin");
    ok(&[
        "encode",
        "--device",
        "cpu",
        "--tokenizer",
        s(&tok),
        "--out",
        s(&tokens),
        "--limit",
        "20",
    ]);
    (tok, tokens)
}

/// `n` small RGB images `NNN.png` in `dir`.
fn write_images(dir: &Path, n: usize, side: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        ImageBuffer::from_fn(side, side, |x, y| {
            Rgb([(x * 7 + i as u32 * 30) as u8, (y * 5) as u8, 120])
        })
        .save(dir.join(format!("{i:03}.png")))
        .unwrap();
    }
}

fn checkpoints(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A diverging learning rate stops the run with an error naming the step and the last good
/// checkpoint; nothing is written or pruned after it (tokenizer and transformer alike), and a
/// configured patience skips that many non-finite steps first.
#[test]
fn divergence_stops_the_run_and_keeps_the_good_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tmp.path().join("tok");
    tiny_tokenizer(&tok, 4, 2);
    let before = checkpoints(&tok);
    assert_eq!(before, ["step-0000002", "step-0000004"]);
    let diverge = [
        "--set",
        "train.steps=12",
        "--set",
        "train.checkpoint_every=100",
        "--set",
        "train.lr=1e30",
    ];
    let mut args = vec!["train-tokenizer", "--resume", s(&tok)];
    args.extend(diverge);
    let err = fails(&args);
    assert!(
        err.contains("training diverged at step")
            && err.contains("last good checkpoint is step 4")
            && err.contains("--device cpu"),
        "{err}"
    );
    assert_eq!(checkpoints(&tok), before, "nothing written or pruned");
    let latest = std::fs::read_to_string(tok.join("latest.json")).unwrap();
    assert!(latest.contains("\"step\":4"), "{latest}");
    // With patience 2, two non-finite steps are skipped (no update) before it stops.
    args.extend(["--set", "train.nonfinite_patience=2"]);
    let err = fails(&args);
    assert!(
        err.contains("(1 in a row") && err.contains("(2 in a row") && err.contains("3 step(s)"),
        "{err}"
    );
    assert_eq!(checkpoints(&tok), before);

    // The transformer: same guard.
    let tokens = tmp.path().join("t.bin");
    ok(&[
        "encode",
        "--device",
        "cpu",
        "--tokenizer",
        s(&tok),
        "--out",
        s(&tokens),
        "--limit",
        "40",
    ]);
    let tr = tmp.path().join("tr");
    ok(&[
        "train-transformer",
        "--device",
        "cpu",
        "--tokens",
        s(&tokens),
        "--out",
        s(&tr),
        "--set",
        "train.steps=4",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.batch_size=8",
    ]);
    let before = checkpoints(&tr);
    let mut args = vec!["train-transformer", "--resume", s(&tr)];
    args.extend(diverge);
    let err = fails(&args);
    assert!(
        err.contains("training diverged") && err.contains("last good checkpoint is step 4"),
        "{err}"
    );
    assert_eq!(checkpoints(&tr), before);
}

/// A folder whose last batch holds nothing but unreadable files (a 0-byte PNG) works in every
/// command that reads images; a folder with nothing readable is an error, not a panic.
#[test]
fn every_image_command_survives_an_all_unreadable_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tmp.path().join("tok");
    tiny_tokenizer(&tok, 2, 2);
    let data = tmp.path().join("data");
    write_images(&data.join("a"), 3, 32);
    std::fs::write(data.join("a/003.png"), b"").unwrap(); // the whole second batch of 3
    let d = s(&data);
    let tokens = tmp.path().join("t.bin");
    let out = ok(&[
        "encode",
        "--device",
        "cpu",
        "--tokenizer",
        s(&tok),
        "--data",
        d,
        "--out",
        s(&tokens),
        "--batch",
        "3",
        "--flip",
    ]);
    assert!(
        out.contains("wrote 6 entries") && out.contains("003.png"),
        "{out}"
    );
    assert!(!tmp.path().join("t.tmp").exists());
    let out = ok(&[
        "reconstruct",
        "--device",
        "cpu",
        "--tokenizer",
        s(&tok),
        "--data",
        d,
        "--out",
        s(&tmp.path().join("rec")),
        "--batch",
        "3",
    ]);
    assert!(out.contains("over 3 images"), "{out}");
    let out = ok(&[
        "eval-tokenizer",
        "--device",
        "cpu",
        "--tokenizer",
        s(&tok),
        "--data",
        d,
        "--batch",
        "3",
        "--out",
        s(&tmp.path().join("eval.json")),
    ]);
    assert!(out.contains("rFID"), "{out}");
    let out = ok(&[
        "fid-stats",
        "--device",
        "cpu",
        d,
        "--res",
        "32",
        "--batch",
        "3",
        "--out",
        s(&tmp.path().join("stats.npz")),
    ]);
    assert!(out.contains("3 images"), "{out}");
    let gpt = tmp.path().join("gpt");
    ok(&[
        "train-transformer",
        "--device",
        "cpu",
        "--tokens",
        s(&tokens),
        "--arch",
        "gpt",
        "--out",
        s(&gpt),
        "--set",
        "train.steps=2",
        "--set",
        "train.batch_size=2",
    ]);
    let out = ok(&[
        "visualize",
        "--device",
        "cpu",
        "--transformer",
        s(&gpt),
        "--tokenizer",
        s(&tok),
        "--data",
        d,
        "--batch",
        "3",
        "--out",
        s(&tmp.path().join("vis")),
    ]);
    assert!(out.contains("over 3 images"), "{out}");

    // Nothing readable at all: an error naming the folder.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(bad.join("a")).unwrap();
    std::fs::write(bad.join("a/x.png"), b"").unwrap();
    let err = fails(&[
        "encode",
        "--device",
        "cpu",
        "--tokenizer",
        s(&tok),
        "--data",
        s(&bad),
        "--out",
        s(&tmp.path().join("t2.bin")),
    ]);
    assert!(err.contains("none of its images could be read"), "{err}");
    assert!(!tmp.path().join("t2.tmp").exists() && !tmp.path().join("t2.bin").exists());
    // An existing --out is not overwritten silently.
    let err = fails(&[
        "encode",
        "--device",
        "cpu",
        "--tokenizer",
        s(&tok),
        "--data",
        d,
        "--out",
        s(&tokens),
    ]);
    assert!(err.contains("--overwrite"), "{err}");
}

struct Poison;

impl ModuleMapper for Poison {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.clone() * f64::NAN)
    }
}

/// A checkpoint with non-finite weights is refused by inference commands, and a metric of a
/// non-finite image is an error, never a perfect score.
#[test]
fn non_finite_weights_and_images_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tmp.path().join("tok");
    tiny_tokenizer(&tok, 2, 2);
    let device = Device::flex();
    let t = TrainedTokenizer::load(&tok, &device).unwrap();
    let poisoned = t.model.clone().map(&mut Poison);
    let x = Tensor::<4>::zeros([1, 3, 32, 32], &device);
    let nan = poisoned.forward(x.clone(), 1.0).0;
    let err = seqgan::eval::metrics::psnr_8bit(x, nan)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not finite"), "{err}");
    std::fs::write(
        t.checkpoint.join(t.weights_file),
        module_bytes(&poisoned).unwrap(),
    )
    .unwrap();
    for cmd in ["reconstruct", "encode"] {
        let err = fails(&[
            cmd,
            "--device",
            "cpu",
            "--tokenizer",
            s(&tok),
            "--out",
            s(&tmp.path().join(format!("{cmd}.out"))),
        ]);
        assert!(err.contains("non-finite weights"), "{cmd}: {err}");
    }
}

/// Every sampling flag is checked against its range and its architecture.
#[test]
fn sampling_flags_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let (tok, tokens) = tiny_tokens(tmp.path());
    let run = |arch: &str| {
        let out = tmp.path().join(arch);
        ok(&[
            "train-transformer",
            "--device",
            "cpu",
            "--tokens",
            s(&tokens),
            "--arch",
            arch,
            "--out",
            s(&out),
            "--set",
            "train.steps=1",
            "--set",
            "train.batch_size=4",
        ]);
        out
    };
    let cases: [(&str, &[&str], &str); 10] = [
        ("maskgit", &["--steps", "0"], "--steps must be in 1..=64"),
        ("maskgit", &["--steps", "65"], "--steps must be in 1..=64"),
        (
            "maskgit",
            &["--cfg", "NaN"],
            "--cfg must be a finite number >= 0",
        ),
        ("maskgit", &["--temperature=-1"], "--temperature must be"),
        (
            "maskgit",
            &["--choice-temperature", "inf"],
            "--choice-temperature must be",
        ),
        (
            "maskgit",
            &["--top-k", "5"],
            "--top-k applies to Gpt transformers only",
        ),
        ("gpt", &["--top-k", "0"], "--top-k must be in 1..=64"),
        ("gpt", &["--top-p", "0"], "--top-p must be in (0, 1]"),
        ("gpt", &["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (
            "gpt",
            &["--steps", "3"],
            "--steps applies to Maskgit transformers only",
        ),
    ];
    let (mg, gpt) = (run("maskgit"), run("gpt"));
    for (arch, flags, needle) in cases {
        let tr = if arch == "maskgit" { &mg } else { &gpt };
        let mut args = vec![
            "sample",
            "--device",
            "cpu",
            "--transformer",
            s(tr),
            "--decoder",
            s(&tok),
            "--num",
            "1",
            "--out",
        ];
        let out = tmp.path().join("samples");
        args.push(s(&out));
        args.extend(flags);
        let err = fails(&args);
        assert!(err.contains(needle), "{arch} {flags:?}: {err}");
    }
}

/// Hidden entries never become classes; a flat root is an error unless declared single-class;
/// empty class folders, unsupported files, nested folders and looping links are reported.
#[test]
fn messy_folders_keep_their_labels_and_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    write_images(&root.join(".ipynb_checkpoints"), 1, 32);
    write_images(&root.join("a"), 4, 32);
    write_images(&root.join("a/sub"), 1, 32);
    write_images(&root.join("b"), 4, 32);
    std::fs::create_dir_all(root.join("c")).unwrap();
    std::fs::write(root.join("a/._000.png"), b"AppleDouble").unwrap();
    std::fs::write(root.join("a/scan.tif"), b"II*\0").unwrap();
    std::fs::write(root.join("b/anim.gif"), b"GIF89a").unwrap();
    std::os::unix::fs::symlink(&root, root.join("b/loop")).unwrap();
    std::os::unix::fs::symlink(&root, root.join("self")).unwrap();
    let ds = seqgan::data::Dataset::open(s(&root), 0).unwrap();
    assert_eq!(
        ds.class_names(),
        ["a", "b", "c"],
        "hidden folders are no class"
    );
    assert_eq!(ds.len(), 8);
    assert_eq!(
        (0..8).map(|i| ds.label(i)).collect::<Vec<_>>(),
        [0, 0, 0, 0, 1, 1, 1, 1]
    );
    let run = tmp.path().join("run");
    let log = ok(&[
        "train-tokenizer",
        "--device",
        "cpu",
        "--out",
        s(&run),
        "--data",
        s(&root),
        "--set",
        &weights_set(),
        "--set",
        "train.steps=1",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.sample_every=0",
    ]);
    // One warning line per kind, with the count and the first paths.
    let line = |kind: &str| {
        log.lines()
            .find(|l| l.contains(kind))
            .unwrap_or_else(|| panic!("no `{kind}` line: {log}"))
            .to_string()
    };
    assert!(line("hidden entries").contains("ignored 2 hidden"), "{log}");
    let empty = line("empty class folders");
    assert!(
        empty.starts_with("WARNING: 1 (") && empty.contains("root/c"),
        "{empty}"
    );
    let unsupported = line("not png/jpg");
    assert!(
        unsupported.starts_with("WARNING: 2 (")
            && unsupported.contains("scan.tif")
            && unsupported.contains("anim.gif"),
        "{unsupported}"
    );
    let nested = line("nested inside class folders");
    assert!(
        nested.starts_with("WARNING: 1 (") && nested.contains("a/sub"),
        "{nested}"
    );
    let loops = line("links that point back");
    assert!(loops.starts_with("WARNING: 2 ("), "{loops}");
    // Images directly in the root: an error, unless single-class is asked for.
    let flat = tmp.path().join("flat");
    write_images(&flat, 4, 32);
    let args = |out: &str, extra: &'static str| {
        let mut v = vec![
            "train-tokenizer".to_string(),
            "--device".into(),
            "cpu".into(),
            "--out".into(),
            s(&tmp.path().join(out)).into(),
            "--data".into(),
            s(&flat).into(),
            "--set".into(),
            weights_set(),
            "--set".into(),
            "train.steps=1".into(),
            "--set".into(),
            "train.batch_size=4".into(),
            "--set".into(),
            "train.sample_every=0".into(),
        ];
        if !extra.is_empty() {
            v.extend(["--set".to_string(), extra.to_string()]);
        }
        v
    };
    let a = args("f1", "");
    let err = fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("data.single_class=true"), "{err}");
    let a = args("f2", "data.single_class=true");
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
}

/// Peak host memory printed at the end of a run (`done: ... (peak host memory N MiB)`).
fn peak_mib(log: &str) -> f64 {
    let at = log.find("peak host memory ").expect("peak memory line") + 17;
    log[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// An 8000x8000 PNG (64 Mpx, over the pixel limit) is refused from its header, and a
/// 1x200000 one is cropped before it is resized: training on a folder holding both peaks at
/// the same memory as without them.
#[test]
fn huge_and_extreme_images_stay_within_the_memory_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    write_images(&base.join("a"), 8, 32);
    let messy = tmp.path().join("messy");
    write_images(&messy.join("a"), 8, 32);
    // Names sort first, so the pre-training probe meets them.
    let big = std::fs::File::create(messy.join("a/0big.png")).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(big), 8000, 8000);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut w = enc.write_header().unwrap().into_stream_writer().unwrap();
    let row = vec![0u8; 8000];
    for _ in 0..8000 {
        std::io::Write::write_all(&mut w, &row).unwrap();
    }
    w.finish().unwrap();
    ImageBuffer::from_fn(1, 200_000, |_, y| Rgb([(y % 251) as u8, 9, 9]))
        .save(messy.join("a/0wide.png"))
        .unwrap();
    let on_disk = std::fs::metadata(messy.join("a/0big.png")).unwrap().len();
    assert!(on_disk < 1 << 20, "the big PNG is {on_disk} bytes on disk");
    let train = |data: &Path, out: &str| {
        ok(&[
            "train-tokenizer",
            "--device",
            "cpu",
            "--out",
            s(&tmp.path().join(out)),
            "--data",
            s(data),
            "--set",
            &weights_set(),
            "--set",
            "train.steps=2",
            "--set",
            "train.sample_every=0",
            "--set",
            "train.num_workers=1",
        ])
    };
    let (plain, messy_log) = (train(&base, "r1"), train(&messy, "r2"));
    assert!(
        messy_log.contains("0big.png") && messy_log.contains("over the limit data.max_pixels"),
        "{messy_log}"
    );
    let (p0, p1) = (peak_mib(&plain), peak_mib(&messy_log));
    eprintln!("peak host memory: {p0:.0} MiB without, {p1:.0} MiB with the huge images");
    // Measured: 204 MiB without, 205 MiB with them.
    assert!(p1 <= p0 + 64.0, "{p1} MiB vs {p0} MiB");
}

/// A second writer of a run folder is refused while the first runs; SIGTERM saves and exits 0
/// with a resume command that names the device.
#[test]
fn one_writer_per_run_and_sigterm_saves() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut child = seqgan()
        .args([
            "train-tokenizer",
            "--device",
            "cpu",
            "--out",
            s(&run),
            "--set",
            &weights_set(),
            "--set",
            "train.steps=100000",
            "--set",
            "train.log_every=1",
            "--set",
            "train.sample_every=0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (t0, mut log) = (Instant::now(), String::new());
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
    let err = fails(&[
        "train-tokenizer",
        "--resume",
        s(&run),
        "--set",
        "train.steps=200000",
    ]);
    assert!(err.contains("in use by another seqgan process"), "{err}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    for line in lines {
        log.push_str(&line.unwrap());
        log.push('\n');
    }
    assert!(child.wait().unwrap().success(), "{log}");
    let resume = format!(
        "Resume with: seqgan train-tokenizer --resume {} --device cpu",
        run.display()
    );
    assert!(log.contains(&resume), "{log}");
    assert!(!run.join("run.lock").exists(), "the lock is released");
    // The saved run continues.
    let latest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("latest.json")).unwrap()).unwrap();
    let next = format!("train.steps={}", latest["step"].as_u64().unwrap() + 1);
    ok(&["train-tokenizer", "--resume", s(&run), "--set", &next]);
}

/// The small checks: a transformer batch larger than its data, IDX labels beyond the class
/// names and 0x0 IDX images, a root where nothing is readable (caught before any model is
/// built).
#[test]
fn small_checks_come_before_the_work() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, tokens) = tiny_tokens(tmp.path());
    let err = fails(&[
        "train-transformer",
        "--device",
        "cpu",
        "--tokens",
        s(&tokens),
        "--out",
        s(&tmp.path().join("tr")),
        "--set",
        "train.batch_size=100000",
    ]);
    assert!(err.contains("larger than the 19 training entries"), "{err}");

    // IDX: labels of 255 with `digits`; images of 0x0.
    let idx = |dims: &[u32], data: &[u8], name: &str| -> PathBuf {
        let mut b = vec![0u8, 0, 0x08, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        let p = tmp.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let images = idx(&[2, 2, 2], &[0; 8], "img");
    let labels = idx(&[2], &[1, 255], "lab");
    let out = tmp.path().join("idx");
    let err = fails(&["import-idx", s(&images), s(&labels), "--out", s(&out)]);
    assert!(err.contains("label 255 is out of range"), "{err}");
    let empty = idx(&[2, 0, 0], &[], "img0");
    let labels = idx(&[2], &[1, 2], "lab0");
    let err = fails(&["import-idx", s(&empty), s(&labels), "--out", s(&out)]);
    assert!(err.contains("0x0"), "{err}");
    assert!(!out.exists(), "no folders before the error");

    // A root whose every file is unreadable: the real count, before a model is built.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(bad.join("a")).unwrap();
    for i in 0..10 {
        std::fs::write(bad.join(format!("a/{i}.png")), b"not a png").unwrap();
    }
    let err = fails(&[
        "train-tokenizer",
        "--device",
        "cpu",
        "--out",
        s(&tmp.path().join("r")),
        "--data",
        s(&bad),
        "--set",
        &weights_set(),
    ]);
    assert!(err.contains("only 0 of 10 images could be read"), "{err}");
    assert!(!err.contains("params"), "checked before the model: {err}");
}
