//! Checkpoint files: the training position (`state.json`), atomic writes, and module /
//! optimiser state as bytes.

use anyhow::{Context, Result, anyhow, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Int, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::device::DeviceChoice;

/// Training position saved with every checkpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TrainState {
    /// Optimiser steps done.
    pub step: usize,
    /// Micro-batches drawn from the loader (its resume position).
    pub batches_drawn: usize,
    /// Images seen.
    pub images_seen: u64,
    /// Seed of the run (all randomness derives from it and the step).
    pub seed: u64,
    /// Wall-clock seconds of training so far.
    pub train_seconds: f64,
    /// Last logged metrics.
    pub last_metrics: Value,
    /// The device kind the run trains on (`--resume` without `--device` stays on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceChoice>,
}

impl TrainState {
    /// An error when a run in `out` has already reached `steps` (nothing left to train).
    pub fn ensure_steps_left(&self, steps: usize, out: &Path) -> Result<()> {
        if self.step >= steps {
            bail!(
                "{} is already at step {} of train.steps = {steps}; raise it with --set train.steps=N",
                out.display(),
                self.step
            );
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` via a synced temp file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Reads a checkpoint file with an error naming it.
pub fn read_file(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    fs::read(&path).with_context(|| format!("reading checkpoint file {}", path.display()))
}

/// Loads the weights in checkpoint file `dir/name` into `module` (built from the run's config),
/// with errors naming the file.
pub fn load_module<M: Module>(module: M, dir: &Path, name: &str) -> Result<M> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(read_file(dir, name)?))
        .map_err(|e| anyhow!("{}/{name} is corrupt: {e:?}", dir.display()))?;
    module
        .try_load_record(record)
        .map_err(|e| anyhow!("{}/{name} does not fit the config: {e:?}", dir.display()))
}

/// Loads optimizer state (moments, step counts) from checkpoint file `dir/name`.
pub fn load_optimizer(
    optim: burn::optim::ModuleOptimizer,
    dir: &Path,
    name: &str,
) -> Result<burn::optim::ModuleOptimizer> {
    optim
        .from_bytes(Bytes::from_bytes_vec(read_file(dir, name)?))
        .map_err(|e| anyhow!("{}/{name} is corrupt: {e:?}", dir.display()))
}

/// Optimizer state as checkpoint-file bytes.
pub fn optimizer_bytes(optim: &burn::optim::ModuleOptimizer) -> Result<Vec<u8>> {
    Ok(optim
        .into_bytes()
        .map_err(|e| anyhow!("serialising optimizer state: {e:?}"))?
        .to_vec())
}

/// The weights inference uses from a checkpoint: `ema.bpk` when the run kept an EMA, else
/// `model.bpk`.
pub fn inference_weights(checkpoint: &Path) -> &'static str {
    if checkpoint.join("ema.bpk").exists() {
        "ema.bpk"
    } else {
        "model.bpk"
    }
}

/// A module's weights as checkpoint-file bytes.
pub fn module_bytes<M: Module>(module: &M) -> Result<Vec<u8>> {
    Ok(module
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow!("serialising weights: {e:?}"))?
        .to_vec())
}

/// Checkpoint files: `files`, plus `ema.bpk` when the run keeps an EMA of its weights.
pub fn with_ema<M: Module>(
    mut files: Vec<(&'static str, Vec<u8>)>,
    ema: Option<&M>,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    if let Some(e) = ema {
        files.push(("ema.bpk", module_bytes(e)?));
    }
    Ok(files)
}

/// Counts the non-finite (NaN or infinite) values of every float parameter.
struct NonFinite {
    count: Option<Tensor<1, Int>>,
}

impl ModuleVisitor for NonFinite {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let bad = param.val().is_finite().bool_not().int().sum();
        self.count = Some(match self.count.take() {
            Some(c) => c + bad,
            None => bad,
        });
    }
}

/// Whether every weight of `module` is finite (one device read).
pub fn all_finite<M: Module>(module: &M) -> bool {
    let mut v = NonFinite { count: None };
    module.visit(&mut v);
    v.count.is_none_or(|c| c.into_scalar::<i64>() == 0)
}

/// An error for inference on a checkpoint whose weights are not finite (a diverged run).
pub fn refuse_non_finite(finite: bool, checkpoint: &Path, file: &str) -> Result<()> {
    if !finite {
        bail!(
            "{}/{file} holds non-finite weights (NaN or inf: the run diverged); use an earlier \
             checkpoint of that run, or retrain with a lower learning rate",
            checkpoint.display()
        );
    }
    Ok(())
}
