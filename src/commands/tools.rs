//! `import-idx` (IDX images + labels -> an ImageFolder) and `plot` (a run's curves).

use anyhow::Result;

use crate::cli::{ImportIdxArgs, PlotArgs};
use crate::data::idx::{self, FASHION_MNIST};

/// `seqgan import-idx`.
pub fn import_idx(a: &ImportIdxArgs) -> Result<()> {
    let names: Vec<String> = match a.classes.as_str() {
        "fashion-mnist" => FASHION_MNIST.iter().map(|s| s.to_string()).collect(),
        "digits" => Vec::new(),
        list => list.split(',').map(|s| s.trim().to_string()).collect(),
    };
    let n = idx::import(&a.images, &a.labels, &names, &a.out, a.limit)?;
    println!("wrote {n} images to {}", a.out.display());
    Ok(())
}

/// `seqgan plot`.
pub fn plot(a: &PlotArgs) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| a.run.join("curves.png"));
    let n = crate::run::curves::plot_run(&a.run, &out)?;
    println!("{n} curves -> {}", out.display());
    Ok(())
}
