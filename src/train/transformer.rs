//! `seqgan train-transformer`: MaskGIT or GPT on a token file. AdamW with warm-up and a
//! constant or cosine schedule, global gradient-norm clipping, gradient accumulation, optional
//! EMA, a held-out validation split, atomic checkpoints, exact resume and Ctrl-C.

use anyhow::{Context, Result, bail, ensure};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::checkpoint::{
    RunDir, TrainState, load_module, load_optimizer, module_bytes, optimizer_bytes, resume_command,
};
use super::ema;
use super::metrics::MetricsLog;
use super::progress::Progress;
use crate::config::{self, RunKind};
use crate::data::loader::keyed_rng;
use crate::data::tokens::TokenFile;
use crate::transformer::batch::{self, Order, Split};
use crate::transformer::config::{LrSchedule, PRESETS, TokensConfig};
use crate::transformer::{Transformer, TransformerRunConfig, Vocab};

/// Where a transformer run comes from.
pub enum Start<'a> {
    /// A new run on a token file.
    New {
        config: Box<TransformerRunConfig>,
        tokens: &'a Path,
        out: &'a Path,
    },
    /// Continue the run in this folder, with `--set` overrides (e.g. more steps).
    Resume { run: &'a Path, sets: &'a [String] },
}

/// The config of a new run: preset or JSON file, then `--set` overrides.
pub fn new_config(spec: &str, sets: &[String]) -> Result<TransformerRunConfig> {
    let defaults = serde_json::to_value(TransformerRunConfig::default())?;
    let root = config::load_json_from(spec, PRESETS)?;
    let value = config::apply_overrides(root, sets, &defaults)?;
    serde_json::from_value(value).with_context(|| format!("invalid config ({spec} + --set)"))
}

/// Everything a transformer run trains.
pub struct TransformerState {
    pub model: Transformer,
    pub ema: Option<Transformer>,
    pub optim: ModuleOptimizer,
    pub state: TrainState,
}

/// A start with its config validated and its tokens read.
pub struct Resolved {
    pub cfg: TransformerRunConfig,
    pub out: PathBuf,
    pub resume: bool,
    pub tokens: TokenFile,
}

/// Validates a start and reads its token file (checking it still matches a resumed run).
pub fn resolve(start: &Start) -> Result<Resolved> {
    let (mut cfg, out, resume, tokens) = match start {
        Start::New {
            config,
            tokens,
            out,
        } => {
            RunDir::create_new(out)?;
            let file = TokenFile::read(tokens)?;
            let mut cfg = (**config).clone();
            cfg.tokens = TokensConfig {
                path: tokens.to_path_buf(),
                header: file.header.clone(),
            };
            (cfg, out.to_path_buf(), false, file)
        }
        Start::Resume { run, sets } => {
            let dir = RunDir::open(run, RunKind::Transformer)?;
            let cfg: TransformerRunConfig = dir.read_config()?;
            let defaults = serde_json::to_value(TransformerRunConfig::default())?;
            let value = config::apply_overrides(serde_json::to_value(&cfg)?, sets, &defaults)?;
            let cfg: TransformerRunConfig = serde_json::from_value(value)?;
            let file = TokenFile::read(&cfg.tokens.path)?;
            ensure!(
                file.header == cfg.tokens.header,
                "{} changed since this run started (its header differs from config.json)",
                cfg.tokens.path.display()
            );
            (cfg, run.to_path_buf(), true, file)
        }
    };
    cfg.kind = RunKind::Transformer;
    // Record the label smoothing in effect, so config.json says what the run trains with.
    cfg.train.label_smoothing = Some(cfg.label_smoothing());
    cfg.validate()?;
    ensure!(
        tokens.len() >= 2,
        "{}: {} entries; a transformer needs more",
        cfg.tokens.path.display(),
        tokens.len()
    );
    Ok(Resolved {
        cfg,
        out,
        resume,
        tokens,
    })
}

/// The vocabulary of a run.
pub fn vocab(cfg: &TransformerRunConfig) -> Vocab {
    Vocab {
        codes: cfg.tokens.header.codebook_size,
        classes: cfg.tokens.header.class_names.len().max(1),
        arch: cfg.arch,
    }
}

/// Forces every lazily-initialised parameter to draw its initial value now.
struct Materialise;

impl ModuleVisitor for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// A freshly initialised transformer for a run config (seeded by `train.seed`). Parameters
/// are materialised here, so the initial weights depend on the seed alone and later random
/// draws (dropout, sampling noise) do not shift them.
pub fn build(cfg: &TransformerRunConfig, device: &Device) -> Transformer {
    device.seed(cfg.train.seed);
    let v = vocab(cfg);
    let n = cfg.tokens.header.tokens_per_entry();
    let model = Transformer::new(&cfg.model, v, v.seq_len(n), device);
    model.visit(&mut Materialise);
    model
}

fn adamw(cfg: &TransformerRunConfig) -> ModuleOptimizer {
    let t = &cfg.train;
    AdamWConfig::new()
        .with_beta_1(t.beta1 as f32)
        .with_beta_2(t.beta2 as f32)
        .with_epsilon(t.adam_eps as f32)
        .with_weight_decay(t.weight_decay as f32)
        .init()
}

/// Learning rate at `step`: linear warm-up, then constant or cosine to `min_lr_ratio * lr`.
pub fn lr_at(cfg: &TransformerRunConfig, step: usize) -> f64 {
    let t = &cfg.train;
    if step < t.warmup_steps {
        return t.lr * (step + 1) as f64 / t.warmup_steps as f64;
    }
    match t.schedule {
        LrSchedule::Constant => t.lr,
        LrSchedule::Cosine => {
            let span = (t.steps - t.warmup_steps).max(1) as f64;
            let p = ((step - t.warmup_steps) as f64 / span).min(1.0);
            let floor = t.min_lr_ratio * t.lr;
            floor + (t.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    }
}

/// Sum of squared gradients over all parameters (a device scalar).
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

/// Multiplies every gradient by a factor.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// Clips the global L2 norm of `grads` to `max_norm` (0 disables); returns the norm before.
pub fn clip_global_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut sq = SquaredNorm { grads, total: None };
    module.visit(&mut sq);
    let norm = sq
        .total
        .map(|t| (t.into_scalar::<f32>() as f64).sqrt())
        .unwrap_or(0.0);
    if max_norm > 0.0 && norm > max_norm {
        module.visit(&mut Scale {
            grads,
            factor: max_norm / norm,
        });
    }
    norm
}

/// A transformer training run in progress.
pub struct TransformerLoop<'a> {
    pub cfg: &'a TransformerRunConfig,
    /// An autodiff device.
    pub device: Device,
    pub tokens: &'a TokenFile,
    pub split: Split,
}

/// Metrics of one optimiser step (device scalars).
pub struct StepOut {
    pub loss: Tensor<1>,
    pub accuracy: Tensor<1>,
    pub grad_norm: f64,
}

impl<'a> TransformerLoop<'a> {
    pub fn new(cfg: &'a TransformerRunConfig, device: Device, tokens: &'a TokenFile) -> Self {
        let split = batch::split(tokens, cfg.train.val_fraction, cfg.train.seed);
        Self {
            cfg,
            device,
            tokens,
            split,
        }
    }

    pub fn init_state(&self) -> TransformerState {
        let model = build(self.cfg, &self.device);
        let ema = (self.cfg.train.ema_decay > 0.0).then(|| ema::init(&model));
        TransformerState {
            model,
            ema,
            optim: adamw(self.cfg),
            state: TrainState {
                seed: self.cfg.train.seed,
                ..Default::default()
            },
        }
    }

    pub fn load_state(&self, dir: &Path, state: TrainState) -> Result<TransformerState> {
        let fresh = self.init_state();
        let ema = fresh
            .ema
            .map(|e| load_module(e, dir, "ema.bpk"))
            .transpose()?;
        let optim = load_optimizer(fresh.optim, dir, "optim.bpk")?;
        Ok(TransformerState {
            model: load_module(fresh.model, dir, "model.bpk")?,
            ema,
            optim,
            state,
        })
    }

    pub fn state_files(st: &TransformerState) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let mut files = vec![
            ("model.bpk", module_bytes(&st.model)?),
            ("optim.bpk", optimizer_bytes(&st.optim)?),
        ];
        if let Some(e) = &st.ema {
            files.push(("ema.bpk", module_bytes(e)?));
        }
        Ok(files)
    }

    /// One optimiser step over `grad_accum` micro-batches.
    pub fn step(&self, st: &mut TransformerState, order: &mut Order) -> StepOut {
        let t = &self.cfg.train;
        let step = st.state.step;
        // Dropout draws from the device generator: reseeding per step makes a resumed run
        // draw exactly what the uninterrupted one drew.
        self.device
            .seed(t.seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let v = vocab(self.cfg);
        let mut acc = GradientsAccumulator::new();
        let mut last = None;
        for _ in 0..t.grad_accum {
            let k = st.state.batches_drawn;
            let entries = order.batch(k);
            let mut rng = keyed_rng(t.seed ^ 0x6d61_736b, k as u64);
            let hb = batch::make_batch(self.tokens, &entries, v, &mut rng, t.class_dropout);
            let (inputs, targets, weights) = hb.to_device(&self.device);
            let out = batch::loss(
                st.model.forward(inputs),
                targets,
                weights,
                self.cfg.arch,
                self.cfg.label_smoothing(),
            );
            let grads = (out.loss.clone() / t.grad_accum as f64).backward();
            acc.accumulate(&st.model, GradientsParams::from_grads(grads, &st.model));
            st.state.batches_drawn += 1;
            st.state.images_seen += entries.len() as u64;
            last = Some(out);
        }
        let mut grads = acc.grads();
        let grad_norm = clip_global_norm(&st.model, &mut grads, t.grad_clip);
        st.model = st
            .optim
            .step(lr_at(self.cfg, step), st.model.clone(), grads);
        if let Some(e) = st.ema.take() {
            st.ema = Some(ema::update(e, &st.model, t.ema_decay));
        }
        st.state.step += 1;
        let out = last.expect("grad_accum >= 1");
        StepOut {
            loss: out.loss,
            accuracy: out.accuracy,
            grad_norm,
        }
    }

    /// Validation cross-entropy and accuracy with fixed masks and no class dropout (so values
    /// are comparable across steps); EMA weights when kept.
    pub fn validate(&self, st: &TransformerState) -> Option<(f64, f64)> {
        if self.split.val.is_empty() {
            return None;
        }
        let model = st.ema.as_ref().unwrap_or(&st.model).valid();
        let inner = self.device.clone().inner();
        let t = &self.cfg.train;
        let v = vocab(self.cfg);
        let (mut ce, mut acc, mut n) = (0.0, 0.0, 0.0);
        for (j, entries) in self
            .split
            .val
            .chunks(t.batch_size)
            .take(t.val_batches)
            .enumerate()
        {
            let mut rng = keyed_rng(t.seed ^ 0x0076_616c, j as u64);
            let hb = batch::make_batch(self.tokens, entries, v, &mut rng, 0.0);
            let (inputs, targets, weights) = hb.to_device(&inner);
            let out = batch::loss(model.forward(inputs), targets, weights, self.cfg.arch, 0.0);
            let w = entries.len() as f64;
            ce += out.ce.into_scalar::<f32>() as f64 * w;
            acc += out.accuracy.into_scalar::<f32>() as f64 * w;
            n += w;
        }
        Some((ce / n, acc / n))
    }

    /// Trains until `train.steps` or Ctrl-C, saving into `run`.
    pub fn train(
        &self,
        run: &RunDir,
        mut st: TransformerState,
        stop: &AtomicBool,
    ) -> Result<TransformerState> {
        let t = &self.cfg.train;
        let end = t.steps;
        let mut order = Order::new(self.split.train.clone(), t.batch_size, t.seed);
        let mut metrics = MetricsLog::open(&run.path("metrics.jsonl"), Some(st.state.step))?;
        let progress = Progress::new(st.state.step, end);
        let n_tok = self.tokens.header.tokens_per_entry();
        let mut window = Instant::now();
        let mut window_tokens = 0usize;
        let mut interrupted = false;
        st.state.device = Some(crate::device::kind_of(&self.device));
        while st.state.step < end {
            let out = self.step(&mut st, &mut order);
            window_tokens += t.batch_size * t.grad_accum * n_tok;
            let step = st.state.step;
            progress.set(step);
            let log = step.is_multiple_of(t.log_every) || step == end;
            let eval = step.is_multiple_of(t.eval_every) || step == end;
            if log || eval {
                let secs = window.elapsed().as_secs_f64();
                st.state.train_seconds += secs;
                let mut rec = json!({
                    "step": step,
                    "loss": out.loss.into_scalar::<f32>() as f64,
                    "accuracy": out.accuracy.into_scalar::<f32>() as f64,
                    "grad_norm": out.grad_norm,
                    "lr": lr_at(self.cfg, step - 1),
                    "tokens_per_s": window_tokens as f64 / secs.max(1e-9),
                    "entries_seen": st.state.images_seen,
                });
                if eval && let Some((ce, acc)) = self.validate(&st) {
                    let obj = rec.as_object_mut().expect("object");
                    obj.insert("val_loss".into(), json!(ce));
                    obj.insert("val_accuracy".into(), json!(acc));
                }
                metrics.write(&rec)?;
                let val = rec
                    .get("val_loss")
                    .and_then(|v| v.as_f64())
                    .map(|v| format!(" val {v:.3}"))
                    .unwrap_or_default();
                progress.message(
                    step,
                    end,
                    &format!(
                        "loss {:.3}{val} acc {:.3} {:.0} tok/s",
                        rec["loss"].as_f64().unwrap_or(f64::NAN),
                        rec["accuracy"].as_f64().unwrap_or(f64::NAN),
                        rec["tokens_per_s"].as_f64().unwrap_or(0.0)
                    ),
                );
                st.state.last_metrics = rec;
                window = Instant::now();
                window_tokens = 0;
            }
            interrupted = stop.load(Ordering::SeqCst);
            if step.is_multiple_of(t.checkpoint_every) || step == end || interrupted {
                run.save(step, &Self::state_files(&st)?, &st.state, t.keep_last)?;
                if let Err(e) = crate::plot::plot_run(run.root(), &run.path("curves.png")) {
                    progress.println(&format!("WARNING: curves.png not written: {e:#}"));
                }
            }
            if interrupted {
                break;
            }
        }
        progress.finish();
        if interrupted {
            eprintln!(
                "interrupted: saved step {} to {}. Resume with: {}",
                st.state.step,
                run.root().display(),
                resume_command("train-transformer", run.root(), st.state.device)
            );
        }
        Ok(st)
    }
}

/// Runs a transformer start on `device` (a plain device; autodiff is added here).
pub fn train_transformer(
    start: Start,
    device: &Device,
    stop: &AtomicBool,
) -> Result<TransformerState> {
    train_resolved(resolve(&start)?, device, stop)
}

/// Runs an already resolved start.
pub fn train_resolved(
    resolved: Resolved,
    device: &Device,
    stop: &AtomicBool,
) -> Result<TransformerState> {
    let Resolved {
        cfg,
        out,
        resume,
        tokens,
    } = resolved;
    let h = &cfg.tokens.header;
    eprintln!(
        "tokens: {} ({} entries, {}x{} tokens, {} codes, {} classes, tokenizer {})",
        cfg.tokens.path.display(),
        tokens.len(),
        h.h,
        h.w,
        h.codebook_size,
        h.class_names.len(),
        h.tokenizer_hash
    );
    let run = RunDir::create(&out)?;
    run.write_config(&cfg)?;
    let ad = device.clone().autodiff();
    let lp = TransformerLoop::new(&cfg, ad, &tokens);
    eprintln!(
        "split: {} train / {} validation entries",
        lp.split.train.len(),
        lp.split.val.len()
    );
    let st = match (resume, run.latest()?) {
        (true, Some((dir, state))) => {
            eprintln!("resuming {} at step {}", out.display(), state.step);
            lp.load_state(&dir, state)?
        }
        (true, None) => bail!("{} has no checkpoint to resume", out.display()),
        (false, _) => lp.init_state(),
    };
    let params = st.model.num_params();
    eprintln!(
        "params {:?} transformer: {params} ({:.2}M)",
        cfg.arch,
        params as f64 / 1e6
    );
    st.state.ensure_steps_left(cfg.train.steps, &out)?;
    let st = lp.train(&run, st, stop)?;
    eprintln!("done: {} at step {}", out.display(), st.state.step);
    Ok(st)
}
