//! Stop requests: Ctrl-C (SIGINT) or SIGTERM (what Slurm, Kubernetes and `docker stop` send)
//! asks a training run to finish its step, save and exit 0; a second one exits at once without
//! saving.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// The process-wide stop flag the training driver polls after every step.
pub fn stop_flag() -> &'static AtomicBool {
    &STOP
}

/// Installs the handler (once per process; later calls are no-ops).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("second stop request: exiting without saving");
            std::process::exit(130);
        }
        eprintln!(
            "stop requested (Ctrl-C / SIGTERM): finishing the current step and saving (again to \
             abort)"
        );
    });
}
