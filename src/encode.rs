//! `seqgan encode`: a dataset's token maps (and labels) written once to a token file, in
//! batches on the device and streamed to disk.

use anyhow::{Result, ensure};
use burn::tensor::{Device, Int, Tensor};
use std::path::Path;
use std::time::Instant;

use crate::data::tokens::{TokenHeader, TokenWriter};
use crate::data::{Dataset, Loader, Order};
use crate::tokenizer::TrainedTokenizer;
use crate::train::gan::batch_tensor;
use crate::train::progress::Progress;

/// Token maps `[B, h, w]` on the host as u16 codes, entry-major.
pub fn codes_u16(t: Tensor<3, Int>) -> Vec<u16> {
    t.into_data()
        .convert::<i32>()
        .try_to_vec::<i32>()
        .expect("int data")
        .into_iter()
        .map(|c| c as u16)
        .collect()
}

/// Encodes up to `limit` images of `data` (centre crop at the tokenizer's resolution) into
/// `out`; with `flip`, each image is followed by its mirrored copy. Returns the entry count.
pub fn encode(
    tok: &TrainedTokenizer,
    data: &str,
    out: &Path,
    flip: bool,
    batch: usize,
    limit: Option<usize>,
    device: &Device,
) -> Result<u64> {
    ensure!(batch > 0, "--batch must be > 0");
    let m = &tok.cfg.model;
    let dataset = Dataset::open(data, limit.unwrap_or(tok.cfg.data.builtin_len))?;
    let total = limit.unwrap_or(usize::MAX).min(dataset.len());
    ensure!(total > 0, "--data {data}: no images");
    let header = TokenHeader {
        codebook_size: m.codebook_size,
        h: m.latent_size(),
        w: m.latent_size(),
        class_names: dataset.class_names(),
        tokenizer_hash: tok.model.token_space_hash(),
        tokenizer: tok.root.clone(),
        flip,
        data: data.to_string(),
    };
    eprintln!(
        "encoding {} -> {} ({}x{} tokens, {} codes, tokenizer hash {}{})",
        dataset.describe(),
        out.display(),
        header.h,
        header.w,
        header.codebook_size,
        header.tokenizer_hash,
        if flip { ", + mirrored copies" } else { "" }
    );
    let n_tok = header.tokens_per_entry();
    let mut writer = TokenWriter::create(out, header)?;
    let loader = Loader::new(
        dataset.clone(),
        m.resolution,
        batch,
        Order::Sequential,
        0,
        2,
        2,
    )?;
    let progress = Progress::new(0, total);
    let t0 = Instant::now();
    let mut done = 0usize;
    for (k, b) in loader.enumerate() {
        if done >= total {
            break;
        }
        let x = batch_tensor(&b, device);
        let codes = codes_u16(tok.model.encode(x.clone()));
        let mirrored = flip.then(|| codes_u16(tok.model.encode(x.flip([3]))));
        for (i, &label) in b.labels.iter().enumerate().take(total - done) {
            writer.push(label, &codes[i * n_tok..(i + 1) * n_tok])?;
            if let Some(m) = &mirrored {
                writer.push(label, &m[i * n_tok..(i + 1) * n_tok])?;
            }
            done += 1;
        }
        progress.set(done);
        if k % 50 == 49 || done >= total {
            let rate = done as f64 / t0.elapsed().as_secs_f64();
            progress.message(done, total, &format!("{rate:.1} img/s"));
        }
    }
    progress.finish();
    dataset.report_skipped();
    let count = writer.finish()?;
    eprintln!(
        "wrote {count} entries to {} in {:.1} s",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(count)
}
