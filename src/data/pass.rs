//! One sequential pass over a dataset in device-sized batches: what `encode`, `reconstruct`,
//! `visualize` and `eval-tokenizer` share.

use anyhow::{Result, ensure};
use std::time::Instant;

use super::{Batch, Dataset, Loader, LoaderSpec};
use crate::run::Progress;

/// Passes `dataset` in index order (centre crops at `res`) in batches of up to `batch` images,
/// stopping after `limit` loadable images (all when `None`). `f` gets every non-empty batch,
/// truncated to what is left of the limit; unreadable files are skipped (a batch of nothing but
/// unreadable files is no batch) and reported at the end. A progress bar counts images.
/// Returns how many images were passed; an error when none could be read.
pub fn for_each_batch(
    dataset: &Dataset,
    res: usize,
    batch: usize,
    limit: Option<usize>,
    workers: usize,
    mut f: impl FnMut(Batch) -> Result<()>,
) -> Result<usize> {
    ensure!(batch > 0, "--batch must be > 0");
    let total = limit.unwrap_or(usize::MAX).min(dataset.len());
    let spec = LoaderSpec::sequential(res, batch).workers(workers, 2);
    let loader = Loader::new(dataset.clone(), spec)?;
    let progress = Progress::new(0, total);
    let t0 = Instant::now();
    let mut done = 0usize;
    for (k, mut b) in loader.enumerate() {
        if done >= total {
            break;
        }
        if b.is_empty() {
            continue;
        }
        b.truncate(total - done);
        done += b.len();
        f(b)?;
        progress.set(done);
        if k % 50 == 49 || done >= total {
            let rate = done as f64 / t0.elapsed().as_secs_f64();
            progress.message(done, total, &format!("{rate:.1} img/s"));
        }
    }
    progress.finish();
    dataset.report_skipped();
    ensure!(
        done > 0,
        "{}: none of its images could be read",
        dataset.describe()
    );
    Ok(done)
}
