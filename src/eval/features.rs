//! Streaming Inception features of an image set: a folder (or built-in dataset), or an `.npz` of
//! uint8 samples, decoded on worker threads, run through the network in batches on the device,
//! and reduced on the host to float64 moments (and Inception Score parts) as they arrive.

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use rand::{SeedableRng, rngs::StdRng};
use std::path::Path;

use super::fid::{InceptionScore, Moments, Stats};
use super::host_f32;
use super::npz::{self, NpzImages};
use crate::data::Dataset;
use crate::data::pool::OrderedPool;
use crate::data::transform::{Crop, resize_crop};
use crate::pretrained::inception::{FEATURE_DIM, FidInception};
use crate::run::Progress;

/// Splits of the Inception Score (the standard 10).
pub const IS_SPLITS: usize = 10;

/// Images to compute features of.
pub enum ImageSource {
    /// An ImageFolder (or `builtin:shapes[:val]`); `res`: resize the shorter side and centre-crop
    /// (the evaluation transform of our data pipeline); `None`: each image at its own size.
    Data {
        dataset: Dataset,
        res: Option<usize>,
    },
    /// `arr_0` of an `.npz` (uint8 NHWC), as the ADM evaluator reads it.
    Samples(NpzImages),
}

/// What `fid` compares: images to run through the network, or precomputed statistics.
pub enum FidInput {
    Images(ImageSource),
    Stats(Stats),
}

fn is_npz(spec: &str) -> bool {
    spec.to_ascii_lowercase().ends_with(".npz")
}

impl FidInput {
    /// A folder / `builtin:*` spec, a samples `.npz`, or a statistics `.npz` (`mu`, `sigma`).
    pub fn open(spec: &str, res: Option<usize>, builtin_len: usize) -> Result<Self> {
        if is_npz(spec) && npz::has_stats(Path::new(spec))? {
            return Ok(Self::Stats(npz::read_stats(Path::new(spec))?));
        }
        Ok(Self::Images(ImageSource::open(spec, res, builtin_len)?))
    }
}

impl ImageSource {
    pub fn open(spec: &str, res: Option<usize>, builtin_len: usize) -> Result<Self> {
        if is_npz(spec) {
            if res.is_some() {
                bail!("--res applies to image folders; the samples in {spec} are used as stored");
            }
            return Ok(Self::Samples(NpzImages::open(Path::new(spec))?));
        }
        let dataset = Dataset::open_images(spec, builtin_len)?;
        if matches!(dataset, Dataset::Shapes(_)) && res.is_none() {
            bail!("{spec} is drawn at a chosen size: pass --res");
        }
        Ok(Self::Data { dataset, res })
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Data { dataset, .. } => dataset.len(),
            Self::Samples(s) => s.n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Data { dataset, res } => match res {
                Some(r) => format!("{}, centre-cropped to {r}x{r}", dataset.describe()),
                None => format!("{}, each image at its own size", dataset.describe()),
            },
            Self::Samples(s) => s.describe(),
        }
    }

    /// Batches of decoded images in order (unreadable files are skipped and reported at the
    /// end by the caller through [`ImageSource::report`]).
    fn batches(
        &self,
        batch: usize,
        workers: usize,
    ) -> Box<dyn Iterator<Item = Result<Vec<RgbImage>>>> {
        match self {
            Self::Samples(s) => {
                let (h, w) = (s.height as u32, s.width as u32);
                Box::new(s.batches(batch).into_iter().map(move |bytes| {
                    bytes.map(|b| {
                        b.chunks_exact((h * w * 3) as usize)
                            .map(|px| RgbImage::from_raw(w, h, px.to_vec()).expect("size"))
                            .collect()
                    })
                }))
            }
            Self::Data { dataset, res } => {
                Box::new(data_batches(dataset.clone(), *res, batch, workers).map(Ok))
            }
        }
    }

    /// Prints the unreadable files met, if any.
    pub fn report(&self) {
        if let Self::Data { dataset, .. } = self {
            dataset.report_skipped();
        }
    }
}

/// Decodes batch `k` on worker `k % workers`, in index order.
fn data_batches(
    dataset: Dataset,
    res: Option<usize>,
    batch: usize,
    workers: usize,
) -> OrderedPool<Vec<RgbImage>> {
    let batch = batch.max(1);
    let n = dataset.len();
    OrderedPool::new(workers, 2, 0, move |k, _: &mut ()| {
        if k * batch >= n {
            return None;
        }
        let mut rng = StdRng::seed_from_u64(0); // unused by centre crops
        // Folders ignore the draw size; built-in sets always have `res` (checked in `open`).
        let draw = res.unwrap_or(1);
        let images = (k * batch..((k + 1) * batch).min(n))
            .filter_map(|i| dataset.load(i, draw))
            .map(|img| match res {
                Some(r) => resize_crop(&img, r, Crop::Centre, &mut rng),
                None => img,
            })
            .collect();
        Some(images)
    })
}

/// Images `[N, 3, H, W]` in [0, 1] (`v / 255`) from same-sized RGB8 images.
pub fn images_01(images: &[RgbImage], device: &Device) -> Tensor<4> {
    let (w, h) = images[0].dimensions();
    let plane = (w * h) as usize;
    let mut v = vec![0.0f32; images.len() * 3 * plane];
    for (k, img) in images.iter().enumerate() {
        assert_eq!(img.dimensions(), (w, h), "images of one group share a size");
        let base = k * 3 * plane;
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                v[base + c * plane + i] = px.0[c] as f32 / 255.0;
            }
        }
    }
    Tensor::from_data(
        TensorData::new(v, [images.len(), 3, h as usize, w as usize]),
        device,
    )
}

/// Accumulates Inception features (and IS parts) of batches of images.
pub struct FeatureSink {
    pub moments: Moments,
    pub score: Option<InceptionScore>,
}

impl FeatureSink {
    /// `expected` images will arrive (sizes the IS splits); IS only with the fc layer.
    pub fn new(net: &FidInception, expected: usize, with_is: bool) -> Self {
        Self {
            moments: Moments::new(FEATURE_DIM),
            score: match (with_is, net.classes()) {
                (true, Some(c)) => Some(InceptionScore::new(c, expected, IS_SPLITS)),
                _ => None,
            },
        }
    }

    /// Runs the network on `[N, 3, H, W]` images in [0, 1] (already prepared when `prepared`).
    pub fn add(&mut self, net: &FidInception, x: Tensor<4>, prepared: bool) {
        let x = if prepared { x } else { net.prepare(x) };
        let out = net.forward_prepared(x, self.score.is_some());
        self.moments.add(&host_f32(out.pool3));
        if let (Some(score), Some(logits)) = (&mut self.score, out.logits) {
            score.add_logits(&host_f32(logits));
        }
    }
}

/// Features of every image of `source`: statistics and, with the fc layer, `(IS mean, std)`.
pub fn extract(
    source: &ImageSource,
    net: &FidInception,
    batch: usize,
    workers: usize,
    device: &Device,
    with_is: bool,
) -> Result<(Stats, Option<(f64, f64)>)> {
    let total = source.len();
    let mut sink = FeatureSink::new(net, total, with_is);
    let progress = Progress::new(0, total);
    let mut reported = 0;
    for images in source.batches(batch, workers) {
        let images = images?;
        if images.is_empty() {
            continue;
        }
        // Runs of equal size are uploaded together; each is resized to 299 on the device.
        let mut prepared = Vec::new();
        let mut start = 0;
        while start < images.len() {
            let dims = images[start].dimensions();
            let end = images[start..]
                .iter()
                .position(|i| i.dimensions() != dims)
                .map_or(images.len(), |p| start + p);
            prepared.push(net.prepare(images_01(&images[start..end], device)));
            start = end;
        }
        sink.add(net, Tensor::cat(prepared, 0), true);
        let done = sink.moments.count() as usize;
        progress.set(done);
        if done >= reported + total.div_ceil(10) || done == total {
            progress.message(done, total, "images");
            reported = done;
        }
    }
    progress.finish();
    source.report();
    let stats = sink.moments.stats()?;
    let score = match &sink.score {
        Some(s) => Some(s.score()?),
        None => None,
    };
    Ok((stats, score))
}
