//! `seqgan encode`: a dataset's token maps (and labels) written once to a token file, in
//! batches on the device and streamed to disk.

use anyhow::{Result, bail, ensure};
use burn::tensor::{Device, Int, Tensor};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::cli::EncodeArgs;
use crate::data::tokens::{TokenHeader, TokenWriter};
use crate::data::{Dataset, Layout, for_each_batch};
use crate::run::signals;
use crate::tokenizer::TrainedTokenizer;

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

/// Encodes up to `limit` images of `data` (class folders, or a flat folder as one class with
/// [`Layout::AllowFlat`]; centre crop at the tokenizer's resolution) into `out`; with `flip`,
/// each image is followed by its mirrored copy. Returns the entry count. A stop request (Ctrl-C)
/// ends it with an error, and no partial file is left.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    tok: &TrainedTokenizer,
    data: &str,
    layout: Layout,
    out: &Path,
    flip: bool,
    batch: usize,
    limit: Option<usize>,
    device: &Device,
) -> Result<u64> {
    let m = &tok.cfg.model;
    let dataset = Dataset::open_with(data, limit.unwrap_or(tok.cfg.data.builtin_len), layout)?;
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
    let t0 = Instant::now();
    for_each_batch(&dataset, m.resolution, batch, limit, 2, |b| {
        ensure!(
            !signals::stop_flag().load(Ordering::SeqCst),
            "interrupted: {} not written",
            out.display()
        );
        let x = b.to_tensor(device);
        let codes = codes_u16(tok.model.encode(x.clone()));
        let mirrored = flip.then(|| codes_u16(tok.model.encode(x.flip([3]))));
        for (i, &label) in b.labels.iter().enumerate() {
            writer.push(label, &codes[i * n_tok..(i + 1) * n_tok])?;
            if let Some(m) = &mirrored {
                writer.push(label, &m[i * n_tok..(i + 1) * n_tok])?;
            }
        }
        Ok(())
    })?;
    let count = writer.finish()?;
    eprintln!(
        "wrote {count} entries to {} in {:.1} s",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(count)
}

/// `seqgan encode`.
pub fn run(a: &EncodeArgs) -> Result<()> {
    if a.out.exists() && !a.overwrite {
        bail!(
            "{} exists; pass --overwrite to replace it, or choose another --out",
            a.out.display()
        );
    }
    let device = crate::device::open(a.device.choice())?;
    let tok = TrainedTokenizer::load(&a.tokenizer, &device)?;
    eprintln!("tokenizer: {}", tok.describe());
    let data = a.data.clone().unwrap_or_else(|| tok.cfg.data.path.clone());
    let layout = if a.single_class {
        Layout::AllowFlat
    } else {
        Layout::Classes
    };
    signals::install();
    encode(
        &tok, &data, layout, &a.out, a.flip, a.batch, a.limit, &device,
    )?;
    Ok(())
}
