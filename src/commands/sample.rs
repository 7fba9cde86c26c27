//! `seqgan sample` (class-conditional images from a transformer and a decoder) and
//! `seqgan visualize` (the paper's teacher-forced GPT analysis).

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;
use std::path::Path;
use std::time::Instant;

use super::encode::codes_u16;
use crate::cli::{SampleArgs, VisualizeArgs};
use crate::data::{Dataset, for_each_batch, image_io};
use crate::eval::npz::NpzImageWriter;
use crate::run::Progress;
use crate::tokenizer::TrainedTokenizer;
use crate::transformer::masking::MaskSchedule;
use crate::transformer::sampling::{GptOptions, MaskgitOptions, Sampler};
use crate::transformer::{Arch, TrainedTransformer};

/// Parses `--class`: `all`, or a comma list of indices and/or class names.
pub fn parse_classes(spec: &str, names: &[String]) -> Result<Vec<usize>> {
    let n = names.len().max(1);
    if spec.trim() == "all" {
        return Ok((0..n).collect());
    }
    let valid = || {
        let shown: Vec<&str> = names.iter().take(12).map(String::as_str).collect();
        format!(
            "valid: 0..{} or a class name ({}{})",
            n - 1,
            shown.join(", "),
            if names.len() > 12 { ", ..." } else { "" }
        )
    };
    spec.split(',')
        .map(str::trim)
        .map(|item| {
            if let Ok(i) = item.parse::<usize>() {
                ensure!(i < n, "--class {i} is out of range ({})", valid());
                Ok(i)
            } else if let Some(i) = names.iter().position(|c| c == item) {
                Ok(i)
            } else {
                bail!("--class {item}: no such class ({})", valid())
            }
        })
        .collect()
}

/// What `sample` draws.
#[derive(Clone)]
pub struct SampleOptions {
    pub classes: Vec<usize>,
    /// Images per class.
    pub num: usize,
    /// Images per device batch.
    pub batch: usize,
    pub seed: u64,
    /// Classifier-free guidance scale (0 = off).
    pub cfg_scale: f64,
    pub maskgit: MaskgitOptions,
    pub gpt: GptOptions,
}

impl SampleOptions {
    /// Checks every setting against its valid range for a transformer of `arch` with `tokens`
    /// tokens per map and `codes` codes; errors name the flag and the range.
    pub fn validate(&self, arch: Arch, tokens: usize, codes: usize) -> Result<()> {
        let finite_nonneg = |v: f64, flag: &str| {
            ensure!(
                v.is_finite() && v >= 0.0,
                "{flag} must be a finite number >= 0, got {v}"
            );
            Ok(())
        };
        ensure!(
            self.num > 0 && self.batch > 0,
            "--num and --batch must be > 0"
        );
        finite_nonneg(self.cfg_scale, "--cfg")?;
        finite_nonneg(self.maskgit.temperature, "--temperature")?;
        finite_nonneg(self.gpt.temperature, "--temperature")?;
        match arch {
            Arch::Maskgit => {
                let steps = self.maskgit.steps;
                ensure!(
                    (1..=tokens).contains(&steps),
                    "--steps must be in 1..={tokens} (the tokens per map), got {steps}"
                );
                finite_nonneg(self.maskgit.choice_temperature, "--choice-temperature")?;
            }
            Arch::Gpt => {
                if let Some(k) = self.gpt.top_k {
                    ensure!(
                        (1..=codes).contains(&k),
                        "--top-k must be in 1..={codes} (the codebook size), got {k}"
                    );
                }
                if let Some(p) = self.gpt.top_p {
                    ensure!(p > 0.0 && p <= 1.0, "--top-p must be in (0, 1], got {p}");
                }
            }
        }
        Ok(())
    }
}

/// Receives each decoded batch (e.g. an `.npz` writer).
pub type BatchSink<'a> = &'a mut dyn FnMut(&[RgbImage]) -> Result<()>;

/// Samples `num` images of each class, writing `out/class-C/NNN.png` and `out/grid.png` (a row
/// per class, at most 8 images per row and 64 rows). Returns the number of images.
pub fn sample(
    tr: &TrainedTransformer,
    dec: &TrainedTokenizer,
    opts: &SampleOptions,
    out: &Path,
    mut sink: Option<BatchSink>,
    device: &Device,
) -> Result<usize> {
    tr.check_tokenizer(dec)?;
    let h = &tr.cfg.tokens.header;
    opts.validate(tr.cfg.arch, h.tokens_per_entry(), h.codebook_size)?;
    if opts.cfg_scale > 0.0 {
        ensure!(
            tr.cfg.train.class_dropout > 0.0,
            "--cfg needs a transformer trained with class dropout (train.class_dropout > 0); {} \
             has 0",
            tr.root.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let sampler = Sampler {
        model: &tr.model,
        vocab: tr.vocab(),
        n: h.tokens_per_entry(),
        cfg_scale: opts.cfg_scale,
        device: device.clone(),
    };
    let jobs: Vec<(usize, usize)> = opts
        .classes
        .iter()
        .flat_map(|&c| (0..opts.num).map(move |i| (c, i)))
        .collect();
    let mut grid_rows: Vec<(usize, Vec<RgbImage>)> = Vec::new();
    let progress = Progress::new(0, jobs.len());
    let t0 = Instant::now();
    let mut done = 0;
    for (k, chunk) in jobs.chunks(opts.batch).enumerate() {
        let classes: Vec<usize> = chunk.iter().map(|(c, _)| *c).collect();
        let seed = opts.seed ^ (k as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
        let tokens = match tr.cfg.arch {
            Arch::Maskgit => sampler.maskgit(&classes, &opts.maskgit, seed, false).0,
            Arch::Gpt => sampler.gpt(&classes, &opts.gpt, seed),
        };
        let b = classes.len();
        let images = image_io::to_images(dec.model.decode_indices(tokens.reshape([b, h.h, h.w])));
        for (&(c, i), img) in chunk.iter().zip(&images) {
            image_io::save_png(img, &out.join(format!("class-{c}/{i:03}.png")))?;
            match grid_rows.iter().position(|(rc, _)| *rc == c) {
                Some(r) if grid_rows[r].1.len() < 8 => grid_rows[r].1.push(img.clone()),
                None if grid_rows.len() < 64 => grid_rows.push((c, vec![img.clone()])),
                _ => {}
            }
        }
        if let Some(s) = sink.as_mut() {
            s(&images)?;
        }
        done += b;
        progress.set(done);
        let rate = done as f64 / t0.elapsed().as_secs_f64();
        if k % 10 == 9 || done == jobs.len() {
            progress.message(done, jobs.len(), &format!("{rate:.2} img/s"));
        }
    }
    progress.finish();
    let rows: Vec<Vec<RgbImage>> = grid_rows.into_iter().map(|(_, r)| r).collect();
    image_io::save_png(&image_io::grid(&rows), &out.join("grid.png"))?;
    eprintln!(
        "{} images in {:.1} s ({:.2} img/s) -> {}",
        jobs.len(),
        t0.elapsed().as_secs_f64(),
        jobs.len() as f64 / t0.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(jobs.len())
}

/// Teacher-forced GPT analysis: encode images, predict every token from the true prefix
/// (argmax), decode both token maps, write input | reconstruction | prediction per image.
/// Returns the token accuracy per image.
pub fn visualize(
    tr: &TrainedTransformer,
    tok: &TrainedTokenizer,
    data: &str,
    out: &Path,
    limit: Option<usize>,
    batch: usize,
    device: &Device,
) -> Result<Vec<(String, f64)>> {
    ensure!(
        tr.cfg.arch == Arch::Gpt,
        "visualize runs a GPT teacher-forced; {} is a {:?} run",
        tr.root.display(),
        tr.cfg.arch
    );
    tr.check_tokenizer(tok)?;
    let dataset = Dataset::open_images(data, limit.unwrap_or(64))?;
    let names = dataset.class_names();
    let same_classes = names == tr.class_names();
    if !same_classes {
        eprintln!(
            "WARNING: the classes of {data} differ from the transformer's; conditioning on the \
             null class"
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let h = &tr.cfg.tokens.header;
    let (n, v) = (h.tokens_per_entry(), tr.vocab());
    let mut acc = Vec::new();
    for_each_batch(&dataset, tok.cfg.model.resolution, batch, limit, 2, |bt| {
        let b = bt.len();
        let x = bt.to_tensor(device);
        let codes = tok.model.encode(x.clone());
        let flat = codes_u16(codes.clone());
        let mut input = Vec::with_capacity(b * n);
        for (i, &label) in bt.labels.iter().enumerate() {
            let class = if same_classes {
                v.class_token(label)
            } else {
                v.null_class()
            };
            input.push(class as i64);
            input.extend(flat[i * n..(i + 1) * n - 1].iter().map(|&c| c as i64));
        }
        let input = Tensor::<2, Int>::from_data(TensorData::new(input, [b, n]), device);
        let pred = tr.model.forward(input).argmax(2).reshape([b, h.h, h.w]);
        let hits: Vec<f32> = pred
            .clone()
            .equal(codes.clone())
            .float()
            .reshape([b, n])
            .mean_dim(1)
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .expect("f32 data");
        let rec = image_io::to_images(tok.model.decode_indices(codes));
        let prd = image_io::to_images(tok.model.decode_indices(pred));
        let inp = image_io::to_images(x);
        for i in 0..b {
            let name = dataset.item_name(bt.indices[i]);
            let row = vec![inp[i].clone(), rec[i].clone(), prd[i].clone()];
            image_io::save_png(
                &image_io::grid(&[row]),
                &out.join(format!("{:05}-{name}.png", acc.len())),
            )?;
            println!("{name}\ttoken accuracy {:.3}", hits[i]);
            acc.push((name, hits[i] as f64));
        }
        Ok(())
    })?;
    Ok(acc)
}

/// `seqgan sample`.
pub fn run(a: &SampleArgs) -> Result<()> {
    let device = crate::device::open(a.device.choice())?;
    let tr = TrainedTransformer::load(&a.transformer, &device)?;
    let dec = TrainedTokenizer::load(&a.decoder, &device)?;
    eprintln!(
        "transformer: {}\ndecoder: {}",
        tr.describe(),
        dec.describe()
    );
    check_arch_flags(a, tr.cfg.arch)?;
    let opts = SampleOptions {
        classes: parse_classes(&a.class, tr.class_names())?,
        num: a.num,
        batch: a.batch,
        seed: a.seed,
        cfg_scale: a.cfg_scale,
        maskgit: MaskgitOptions {
            steps: a.steps.unwrap_or(12),
            temperature: a.temperature,
            choice_temperature: a.choice_temperature.unwrap_or(4.5),
            schedule: a.schedule.unwrap_or(MaskSchedule::Cosine),
        },
        gpt: GptOptions {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            use_cache: true,
        },
    };
    let Some(path) = &a.npz else {
        sample(&tr, &dec, &opts, &a.out, None, &device)?;
        return Ok(());
    };
    let side = dec.cfg.model.resolution;
    let total = opts.classes.len() * opts.num;
    let mut npz = NpzImageWriter::create(path, total, side, side)?;
    let mut push = |images: &[RgbImage]| -> Result<()> {
        for img in images {
            npz.push(img.as_raw())?;
        }
        Ok(())
    };
    sample(&tr, &dec, &opts, &a.out, Some(&mut push), &device)?;
    npz.finish()?;
    eprintln!(
        "wrote {total} images to {} (uint8 NHWC arr_0)",
        path.display()
    );
    Ok(())
}

/// Flags of one architecture given for the other are errors, not silently ignored.
fn check_arch_flags(a: &SampleArgs, arch: Arch) -> Result<()> {
    let (given, other): (Vec<&str>, Arch) = match arch {
        Arch::Maskgit => (
            [
                ("--top-k", a.top_k.is_some()),
                ("--top-p", a.top_p.is_some()),
            ]
            .into_iter()
            .filter_map(|(f, on)| on.then_some(f))
            .collect(),
            Arch::Gpt,
        ),
        Arch::Gpt => (
            [
                ("--steps", a.steps.is_some()),
                ("--choice-temperature", a.choice_temperature.is_some()),
                ("--schedule", a.schedule.is_some()),
            ]
            .into_iter()
            .filter_map(|(f, on)| on.then_some(f))
            .collect(),
            Arch::Maskgit,
        ),
    };
    ensure!(
        given.is_empty(),
        "{} applies to {other:?} transformers only; {} is {arch:?}",
        given.join(", "),
        a.transformer.display()
    );
    Ok(())
}

/// `seqgan visualize`.
pub fn run_visualize(a: &VisualizeArgs) -> Result<()> {
    let device = crate::device::open(a.device.choice())?;
    let tr = TrainedTransformer::load(&a.transformer, &device)?;
    let tok = TrainedTokenizer::load(&a.tokenizer, &device)?;
    let acc = visualize(&tr, &tok, &a.data, &a.out, Some(a.limit), a.batch, &device)?;
    let mean = acc.iter().map(|(_, a)| a).sum::<f64>() / acc.len().max(1) as f64;
    println!(
        "token accuracy {mean:.3} over {} images ({} -> {})",
        acc.len(),
        a.data,
        a.out.display()
    );
    Ok(())
}
