//! `metrics.jsonl`: one JSON object per log step.

use anyhow::{Context, Result};
use serde_json::Value;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens for appending; when resuming at `resume_step`, drops lines logged after it so the
    /// log matches the restored state.
    pub fn open(path: &Path, resume_step: Option<usize>) -> Result<Self> {
        if let (Some(step), true) = (resume_step, path.exists()) {
            let kept: Vec<String> = BufReader::new(File::open(path)?)
                .lines()
                .map_while(|l| l.ok())
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|s| s as usize <= step)
                })
                .collect();
            let mut text = kept.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            super::checkpoint::write_atomic(path, text.as_bytes())?;
        } else if resume_step.is_none() && path.exists() {
            fs::remove_file(path)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record (any serialisable type: a stage's typed metrics) as a JSON line.
    pub fn write<R: serde::Serialize>(&mut self, record: &R) -> Result<()> {
        let record = serde_json::to_string(record)?;
        writeln!(self.file, "{record}")
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.file.flush()?;
        Ok(())
    }
}

/// Reads every record of a metrics file.
pub fn read(path: &Path) -> Result<Vec<Value>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad line in {}", path.display())))
        .collect()
}
