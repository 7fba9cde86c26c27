//! `seqgan sample` (class-conditional images from a transformer and a decoder) and
//! `seqgan visualize` (the paper's teacher-forced GPT analysis).

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;
use std::path::Path;
use std::time::Instant;

use crate::data::{Dataset, Loader, Order};
use crate::encode::codes_u16;
use crate::image_io;
use crate::tokenizer::TrainedTokenizer;
use crate::train::gan::batch_tensor;
use crate::train::progress::Progress;
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
    ensure!(
        opts.num > 0 && opts.batch > 0,
        "--num and --batch must be > 0"
    );
    if opts.cfg_scale > 0.0 {
        ensure!(
            tr.cfg.train.class_dropout > 0.0,
            "--cfg needs a transformer trained with class dropout (train.class_dropout > 0); {} \
             has 0",
            tr.root.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let h = &tr.cfg.tokens.header;
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
    let dataset = Dataset::open(data, limit.unwrap_or(64))?;
    let names = dataset.class_names();
    let same_classes = names == tr.class_names();
    if !same_classes {
        eprintln!(
            "WARNING: the classes of {data} differ from the transformer's; conditioning on the \
             null class"
        );
    }
    let total = limit.unwrap_or(usize::MAX).min(dataset.len());
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let h = &tr.cfg.tokens.header;
    let (n, v) = (h.tokens_per_entry(), tr.vocab());
    let loader = Loader::new(
        dataset.clone(),
        tok.cfg.model.resolution,
        batch.max(1),
        Order::Sequential,
        0,
        2,
        2,
    )?;
    let mut acc = Vec::new();
    for bt in loader {
        if acc.len() >= total {
            break;
        }
        let b = bt.len();
        let x = batch_tensor(&bt, device);
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
            if acc.len() >= total {
                break;
            }
            let name = dataset.item_name(bt.indices[i]);
            let row = vec![inp[i].clone(), rec[i].clone(), prd[i].clone()];
            image_io::save_png(
                &image_io::grid(&[row]),
                &out.join(format!("{:05}-{name}.png", acc.len())),
            )?;
            println!("{name}\ttoken accuracy {:.3}", hits[i]);
            acc.push((name, hits[i] as f64));
        }
    }
    dataset.report_skipped();
    Ok(acc)
}
