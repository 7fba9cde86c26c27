//! Run folders: creation, kind checks, `config.json`, and the checkpoint store.
//!
//! ```text
//! runs/NAME/config.json                 full resolved config (self-describing folder)
//! runs/NAME/latest.json                 {"checkpoint": "checkpoints/step-000300", "step": 300}
//! runs/NAME/checkpoints/step-000300/    model.bpk, disc.bpk, optim_g.bpk, optim_d.bpk, state.json
//! runs/NAME/metrics.jsonl, samples/step-N.png
//! ```
//! A checkpoint is written into `checkpoints/.tmp-*`, synced, renamed into place, and only then
//! does `latest.json` (itself written to a temp file and renamed) point at it. A crash at any
//! point leaves the previous checkpoint as `latest`.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::checkpoint::{TrainState, write_atomic};
use crate::config::RunKind;
use crate::device::DeviceChoice;

#[derive(Serialize, Deserialize)]
struct Latest {
    checkpoint: String,
    step: usize,
}

/// A run folder.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

/// A checkpoint written but not yet made `latest` (see [`RunDir::stage`]).
pub struct Staged {
    dir: PathBuf,
    name: String,
    step: usize,
}

impl RunDir {
    /// Opens (creating) a run folder.
    pub fn create(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join("checkpoints"))
            .with_context(|| format!("creating run folder {}", root.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Creates the folder of a new run; an error when it already holds one.
    pub fn create_new(root: &Path) -> Result<Self> {
        let run = Self::create(root)?;
        if run.latest()?.is_some() {
            bail!(
                "{} already holds a run; continue it with `--resume {}` or choose another --out",
                root.display(),
                root.display()
            );
        }
        Ok(run)
    }

    /// Opens an existing run folder of the given kind, with a clear error otherwise.
    pub fn open(root: &Path, kind: RunKind) -> Result<Self> {
        Self::open_any(root, &[kind]).map(|(dir, _)| dir)
    }

    /// Opens an existing run folder of one of `kinds`; returns it with its kind.
    pub fn open_any(root: &Path, kinds: &[RunKind]) -> Result<(Self, RunKind)> {
        if !root.is_dir() {
            bail!("run folder {} does not exist", root.display());
        }
        let found = read_kind(root)?;
        if !kinds.contains(&found) {
            let want: Vec<String> = kinds.iter().map(|k| format!("{k:?}")).collect();
            bail!(
                "{} is a {found:?} run folder, expected a {} run",
                root.display(),
                want.join(" or ")
            );
        }
        let dir = Self {
            root: root.to_path_buf(),
        };
        Ok((dir, found))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Writes `config.json` atomically.
    pub fn write_config<T: Serialize>(&self, config: &T) -> Result<()> {
        write_atomic(
            &self.path("config.json"),
            serde_json::to_string_pretty(config)?.as_bytes(),
        )
    }

    /// Reads `config.json`.
    pub fn read_config<T: DeserializeOwned>(&self) -> Result<T> {
        let path = self.path("config.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid config", path.display()))
    }

    /// Writes the checkpoint files into a temp folder (step 1 of a save). On an error (a full
    /// disk) the temp folder is removed at once and the error names the file.
    pub fn stage(
        &self,
        step: usize,
        files: &[(&str, Vec<u8>)],
        state: &TrainState,
    ) -> Result<Staged> {
        let name = format!("step-{step:07}");
        let dir = self.root.join("checkpoints").join(format!(".tmp-{name}"));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        let state_json = serde_json::to_string_pretty(state)?.into_bytes();
        let write = || -> Result<()> {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let all = files
                .iter()
                .map(|(f, b)| (*f, b.as_slice()))
                .chain([("state.json", state_json.as_slice())]);
            for (file, bytes) in all {
                let path = dir.join(file);
                let mut f =
                    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                f.write_all(bytes)
                    .and_then(|_| f.sync_all())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(Staged { dir, name, step })
    }

    /// Moves a staged checkpoint into place, points `latest.json` at it, prunes old ones.
    pub fn commit(&self, staged: Staged, keep_last: usize) -> Result<PathBuf> {
        let final_dir = self.root.join("checkpoints").join(&staged.name);
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir)?;
        }
        fs::rename(&staged.dir, &final_dir)?;
        let latest = Latest {
            checkpoint: format!("checkpoints/{}", staged.name),
            step: staged.step,
        };
        write_atomic(
            &self.path("latest.json"),
            serde_json::to_string(&latest)?.as_bytes(),
        )?;
        self.prune(&staged.name, keep_last)?;
        Ok(final_dir)
    }

    /// Stages and commits in one go.
    pub fn save(
        &self,
        step: usize,
        files: &[(&str, Vec<u8>)],
        state: &TrainState,
        keep_last: usize,
    ) -> Result<PathBuf> {
        let staged = self.stage(step, files, state)?;
        self.commit(staged, keep_last)
    }

    fn prune(&self, latest: &str, keep_last: usize) -> Result<()> {
        let mut steps: Vec<String> = fs::read_dir(self.root.join("checkpoints"))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.starts_with("step-") || n.starts_with(".tmp-"))
            .collect();
        steps.sort();
        let complete: Vec<_> = steps
            .iter()
            .filter(|n| n.starts_with("step-") && *n != latest)
            .collect();
        let drop_n = complete.len().saturating_sub(keep_last);
        for name in complete.into_iter().take(drop_n) {
            fs::remove_dir_all(self.root.join("checkpoints").join(name))?;
        }
        // Leftovers of an interrupted save.
        for name in steps.iter().filter(|n| n.starts_with(".tmp-")) {
            let _ = fs::remove_dir_all(self.root.join("checkpoints").join(name));
        }
        Ok(())
    }

    /// The checkpoint `latest.json` points at, with its state; `None` for a fresh folder.
    pub fn latest(&self) -> Result<Option<(PathBuf, TrainState)>> {
        let path = self.path("latest.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = fs::read_to_string(&path)?;
        let latest: Latest = serde_json::from_str(&text)
            .with_context(|| format!("{} is corrupt", path.display()))?;
        let dir = self.root.join(&latest.checkpoint);
        let state_path = dir.join("state.json");
        let state_text = fs::read_to_string(&state_path).with_context(|| {
            format!("checkpoint {} is incomplete (no state.json)", dir.display())
        })?;
        let state: TrainState = serde_json::from_str(&state_text)
            .with_context(|| format!("{} is corrupt", state_path.display()))?;
        Ok(Some((dir, state)))
    }

    /// The latest checkpoint, or an error saying the folder has none.
    pub fn require_latest(&self) -> Result<(PathBuf, TrainState)> {
        self.latest()?.with_context(|| {
            format!(
                "{} has no checkpoint yet (no latest.json)",
                self.root.display()
            )
        })
    }
}

/// The device kind recorded in a run folder's latest checkpoint (`None` when the folder or its
/// checkpoint cannot be read, or predates the record: the caller's own errors say why later).
pub fn recorded_device(root: &Path) -> Option<DeviceChoice> {
    let run = RunDir {
        root: root.to_path_buf(),
    };
    run.latest()
        .ok()
        .flatten()
        .and_then(|(_, state)| state.device)
}

/// The command that continues a run: `seqgan COMMAND --resume ROOT --device KIND`.
pub fn resume_command(command: &str, root: &Path, device: Option<DeviceChoice>) -> String {
    let device = device
        .map(|d| format!(" --device {}", d.flag()))
        .unwrap_or_default();
    format!("seqgan {command} --resume {}{device}", root.display())
}

/// Reads the `kind` field of a run folder's `config.json`.
pub fn read_kind(root: &Path) -> Result<RunKind> {
    let path = root.join("config.json");
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not a seqgan run folder (no readable config.json)",
            root.display()
        )
    })?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let kind = v
        .get("kind")
        .cloned()
        .with_context(|| format!("{} has no `kind`", path.display()))?;
    serde_json::from_value(kind).with_context(|| format!("{}: unknown run kind", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkpoint::read_file;

    fn state(step: usize) -> TrainState {
        TrainState {
            step,
            ..Default::default()
        }
    }

    #[test]
    fn interrupted_save_keeps_previous_latest() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path()).unwrap();
        run.save(10, &[("model.bpk", vec![1, 2, 3])], &state(10), 2)
            .unwrap();
        // A save killed after writing its files but before the commit.
        let staged = run
            .stage(20, &[("model.bpk", vec![9; 10])], &state(20))
            .unwrap();
        drop(staged);
        let (dir, st) = run.latest().unwrap().unwrap();
        assert_eq!(st.step, 10);
        assert_eq!(read_file(&dir, "model.bpk").unwrap(), vec![1, 2, 3]);
        // The next successful save cleans the leftover.
        run.save(30, &[("model.bpk", vec![4])], &state(30), 2)
            .unwrap();
        let names: Vec<_> = fs::read_dir(tmp.path().join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.starts_with(".tmp")), "{names:?}");
    }

    #[test]
    fn keeps_last_k() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path()).unwrap();
        for s in 1..=5 {
            run.save(s, &[("m", vec![s as u8])], &state(s), 2).unwrap();
        }
        let mut names: Vec<_> = fs::read_dir(tmp.path().join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["step-0000003", "step-0000004", "step-0000005"]);
    }

    #[test]
    fn wrong_kind_and_missing_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let err = RunDir::open(&tmp.path().join("nope"), RunKind::Tokenizer).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
        fs::write(tmp.path().join("config.json"), r#"{"kind": "transformer"}"#).unwrap();
        let err = RunDir::open(tmp.path(), RunKind::Tokenizer).unwrap_err();
        assert!(
            err.to_string().contains("expected a Tokenizer run"),
            "{err}"
        );
        fs::write(tmp.path().join("config.json"), "{garbage").unwrap();
        assert!(RunDir::open(tmp.path(), RunKind::Tokenizer).is_err());
    }
}
