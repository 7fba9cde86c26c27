//! One writer per run folder: an exclusive lock file (`run.lock`, holding the owner's pid) taken
//! by every command that writes into a run. A lock whose process is gone is stale and taken
//! over; a live one is a clear error.

use anyhow::{Context, Result, bail};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the lock file inside a run folder.
pub const LOCK_FILE: &str = "run.lock";

/// Held while a command writes a run folder; removes the lock file when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

/// Whether a process with this pid is running (Linux and other `/proc` systems; elsewhere a
/// lock is taken as live, so a stale one must be removed by hand, as the error says).
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

impl RunLock {
    /// Takes the lock of run folder `root` (which must exist).
    pub fn acquire(root: &Path) -> Result<Self> {
        let path = root.join(LOCK_FILE);
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id())
                        .with_context(|| format!("writing {}", path.display()))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = fs::read_to_string(&path).unwrap_or_default();
                    match text.trim().parse::<u32>() {
                        Ok(pid) if alive(pid) => bail!(
                            "{} is in use by another seqgan process (pid {pid}): one writer per \
                             run folder. Wait for it to finish, or stop it (Ctrl-C saves); if no \
                             such process exists, remove {}",
                            root.display(),
                            path.display()
                        ),
                        // Stale (its process is gone) or unreadable: take it over.
                        _ => {
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
            }
        }
        bail!("could not take the lock {}", path.display())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_writer_and_stale_locks_are_taken_over() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(tmp.path()).unwrap();
        // A second writer (here: the same process, whose pid is alive) is refused.
        let err = RunLock::acquire(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another seqgan process"), "{err}");
        drop(lock);
        assert!(!tmp.path().join(LOCK_FILE).exists());
        // A lock left by a process that no longer exists is stale.
        fs::write(tmp.path().join(LOCK_FILE), format!("{}\n", u32::MAX - 1)).unwrap();
        let lock = RunLock::acquire(tmp.path()).unwrap();
        let held = fs::read_to_string(tmp.path().join(LOCK_FILE)).unwrap();
        assert_eq!(held.trim(), std::process::id().to_string());
        drop(lock);
    }
}
