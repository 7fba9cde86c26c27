//! The one training driver. A stage (phase 1, phase 2, a transformer) says how to build or
//! restore its state, how to take one optimiser step, what to log and what to save; the driver
//! owns the run protocol around it: exact resume, progress, the metrics log, sample and
//! checkpoint cadence, curves, and stopping on Ctrl-C with a resume command.

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::checkpoint::TrainState;
use super::dir::{RunDir, resume_command};
use super::metrics::MetricsLog;
use super::progress::Progress;

/// What a stage's state offers the driver: its training position and its checkpoint files.
pub trait Checkpointed {
    fn position(&self) -> &TrainState;
    fn position_mut(&mut self) -> &mut TrainState;
    /// The checkpoint files (`model.bpk`, optimiser state, ...) as bytes.
    fn files(&self) -> Result<Vec<(&'static str, Vec<u8>)>>;
    /// Whether every weight is finite (checked before each checkpoint is written).
    fn finite(&self) -> bool;
}

/// Implements [`Checkpointed::position`] and [`Checkpointed::position_mut`] for a state whose
/// training position is its `state` field.
#[macro_export]
macro_rules! position_in_state_field {
    () => {
        fn position(&self) -> &$crate::run::TrainState {
            &self.state
        }
        fn position_mut(&mut self) -> &mut $crate::run::TrainState {
            &mut self.state
        }
    };
}

/// The step counts the driver acts on.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Train until this step.
    pub steps: usize,
    pub log_every: usize,
    pub checkpoint_every: usize,
    /// Step checkpoints kept besides the newest.
    pub keep_last: usize,
    /// Consecutive steps with a non-finite loss that are skipped (no update) before the run
    /// stops; 0 stops at the first.
    pub patience: usize,
}

/// A training stage run by [`run`].
pub trait Stage {
    type State: Checkpointed;
    /// What one step returns (device scalars, read only at log steps).
    type Out;
    /// One line of `metrics.jsonl`.
    type Record: Serialize;

    /// The subcommand that continues a run (for the resume message).
    fn command(&self) -> &'static str;
    /// The autodiff device the stage trains on.
    fn device(&self) -> &Device;
    fn schedule(&self) -> Schedule;
    /// A fresh state (seeded by the config).
    fn init(&mut self) -> Result<Self::State>;
    /// The state saved in checkpoint folder `dir`, at `position`.
    fn restore(&mut self, dir: &Path, position: TrainState) -> Result<Self::State>;
    /// Start-up lines about the state (parameter counts).
    fn announce(&self, _st: &Self::State) {}
    /// One optimiser step; advances `position().step`. A step whose loss is not finite must
    /// not update the weights (see [`Stage::non_finite`]).
    fn step(&mut self, st: &mut Self::State) -> Result<Self::Out>;
    /// What was not finite in a step (`Some`: the step was skipped without an update).
    fn non_finite(&self, out: &Self::Out) -> Option<String>;
    /// Whether the step just finished is logged (default: every `log_every` and the last).
    fn log_due(&self, step: usize) -> bool {
        let s = self.schedule();
        step.is_multiple_of(s.log_every) || step == s.steps
    }
    /// The metrics record of a log step; `secs` of training over `steps` steps since the last.
    fn record(
        &mut self,
        st: &Self::State,
        out: Self::Out,
        secs: f64,
        steps: usize,
    ) -> Result<Self::Record>;
    /// The progress line of a record.
    fn summary(&self, rec: &Self::Record) -> String;
    /// Called after every step (sample grids at the stage's own cadence).
    fn samples(&mut self, _st: &Self::State, _run: &RunDir, _step: usize) -> Result<()> {
        Ok(())
    }
    /// Called when training ends (e.g. the data loader's skip report).
    fn finish(&mut self) {}
}

/// Opens (`resume`) or starts the state, checks there are steps left, trains until the
/// schedule's end or a stop request, and returns the final state.
pub fn run<S: Stage>(
    stage: &mut S,
    run: &RunDir,
    resume: bool,
    stop: &AtomicBool,
) -> Result<S::State> {
    let st = match (resume, run.latest()?) {
        (true, Some((dir, position))) => {
            eprintln!(
                "resuming {} at step {}",
                run.root().display(),
                position.step
            );
            stage.restore(&dir, position)?
        }
        (true, None) => bail!("{} has no checkpoint to resume", run.root().display()),
        (false, _) => stage.init()?,
    };
    stage.announce(&st);
    st.position()
        .ensure_steps_left(stage.schedule().steps, run.root())?;
    let st = train(stage, run, st, stop)?;
    let memory = super::progress::peak_rss_mib()
        .map(|m| format!(" (peak host memory {m:.0} MiB)"))
        .unwrap_or_default();
    eprintln!(
        "done: {} at step {}{memory}",
        run.root().display(),
        st.position().step
    );
    Ok(st)
}

/// The training loop: step, log, samples, checkpoint (at the cadence, at the end, and on a stop
/// request, after which it returns).
pub fn train<S: Stage>(
    stage: &mut S,
    run: &RunDir,
    mut st: S::State,
    stop: &AtomicBool,
) -> Result<S::State> {
    let schedule = stage.schedule();
    let end = schedule.steps;
    let mut metrics = MetricsLog::open(&run.path("metrics.jsonl"), Some(st.position().step))?;
    let progress = Progress::new(st.position().step, end);
    let mut window = (Instant::now(), 0usize);
    let mut interrupted = false;
    let mut bad_steps = 0;
    st.position_mut().device = Some(crate::device::kind_of(stage.device()));
    while st.position().step < end {
        let out = stage.step(&mut st)?;
        window.1 += 1;
        let step = st.position().step;
        progress.set(step);
        if let Some(what) = stage.non_finite(&out) {
            bad_steps += 1;
            if bad_steps > schedule.patience {
                progress.finish();
                return Err(diverged(stage, run, step, &what, bad_steps));
            }
            progress.println(&format!(
                "WARNING: step {step}: {what}; the step was skipped ({bad_steps} in a row, \
                 train.nonfinite_patience = {})",
                schedule.patience
            ));
        } else {
            bad_steps = 0;
        }
        if stage.log_due(step) {
            let secs = window.0.elapsed().as_secs_f64();
            st.position_mut().train_seconds += secs;
            let rec = stage.record(&st, out, secs, window.1)?;
            metrics.write(&rec)?;
            progress.message(step, end, &stage.summary(&rec));
            st.position_mut().last_metrics = serde_json::to_value(&rec)?;
            window = (Instant::now(), 0);
        }
        stage.samples(&st, run, step)?;
        interrupted = stop.load(Ordering::SeqCst);
        if step.is_multiple_of(schedule.checkpoint_every) || step == end || interrupted {
            if !st.finite() {
                progress.finish();
                let what = "the weights are not finite";
                return Err(diverged(stage, run, step, what, bad_steps));
            }
            run.save(step, &st.files()?, st.position(), schedule.keep_last)
                .with_context(|| format!("saving the checkpoint of step {step}"))?;
            if let Err(e) = super::curves::plot_run(run.root(), &run.path("curves.png")) {
                progress.println(&format!("WARNING: curves.png not written: {e:#}"));
            }
        }
        if interrupted {
            break;
        }
    }
    progress.finish();
    stage.finish();
    if interrupted {
        eprintln!(
            "interrupted: saved step {} to {}. Resume with: {}",
            st.position().step,
            run.root().display(),
            resume_command(stage.command(), run.root(), st.position().device)
        );
    }
    Ok(st)
}

/// The error that ends a diverged run: what, when, and where the last good checkpoint is. Nothing
/// is written or pruned after a divergence, so every checkpoint on disk predates it.
fn diverged<S: Stage>(
    stage: &S,
    run: &RunDir,
    step: usize,
    what: &str,
    bad: usize,
) -> anyhow::Error {
    let last = match run.latest() {
        Ok(Some((dir, state))) => format!(
            "the last good checkpoint is step {} ({}); continue from it with a lower learning \
             rate: {} --set train.lr=...",
            state.step,
            dir.display(),
            resume_command(stage.command(), run.root(), state.device)
        ),
        _ => format!("{} has no checkpoint yet", run.root().display()),
    };
    anyhow::anyhow!(
        "training diverged at step {step}: {what} ({bad} step(s) in a row); stopped without \
         saving. {last}"
    )
}

/// The progress-line note of a data-parallel run (throughput is then global).
pub fn devices_note(devices: usize) -> String {
    if devices > 1 {
        format!(" on {devices} devices")
    } else {
        String::new()
    }
}
