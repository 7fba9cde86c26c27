//! Token files: a dataset encoded once by a tokenizer (`seqgan encode`), read by
//! `seqgan train-transformer`.
//!
//! ```text
//! magic      8 bytes  "SQGTOKN\0"
//! version    u32 LE   1
//! json_len   u32 LE   length of the JSON header
//! count      u64 LE   number of entries (written last, when the file is complete)
//! header     json_len bytes of JSON (TokenHeader)
//! entries    count x (label u32 LE, h*w codes u16 LE, row-major)
//! ```
//! A file is written to `NAME.tmp` in a stream and renamed when complete, so a crash never
//! leaves a file that looks valid.

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SQGTOKN\0";
const VERSION: u32 = 1;
const PREFIX: usize = 8 + 4 + 4 + 8;

/// What a token file holds; everything a transformer run needs to know about its tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct TokenHeader {
    /// Codebook size K (codes are `0..K`).
    pub codebook_size: usize,
    /// Token map height.
    pub h: usize,
    /// Token map width.
    pub w: usize,
    /// Class names; labels index this list.
    pub class_names: Vec<String>,
    /// Hash of the tokenizer's encoder and codebook weights (see `VqModel::token_space_hash`).
    pub tokenizer_hash: String,
    /// The tokenizer run folder that made the file.
    pub tokenizer: PathBuf,
    /// Whether each image is followed by its horizontally mirrored copy.
    pub flip: bool,
    /// The image data that was encoded.
    pub data: String,
}

impl TokenHeader {
    /// Tokens per entry.
    pub fn tokens_per_entry(&self) -> usize {
        self.h * self.w
    }
    fn entry_bytes(&self) -> usize {
        4 + 2 * self.tokens_per_entry()
    }
    /// Entries per source image (2 with flips).
    pub fn group(&self) -> usize {
        if self.flip { 2 } else { 1 }
    }
}

/// Largest codebook a token file can hold (codes are u16).
pub const MAX_CODEBOOK: usize = 1 << 16;
/// Most classes a token file may name (the transformer embeds one token per class).
pub const MAX_CLASSES: usize = 1 << 16;
/// Most tokens per map (h x w; 256x256 tokens).
pub const MAX_TOKENS_PER_MAP: usize = 1 << 16;

impl TokenHeader {
    /// Checks every field against what the format holds; `what` names the file in errors.
    pub fn check(&self, what: &str) -> Result<()> {
        ensure!(
            (2..=MAX_CODEBOOK).contains(&self.codebook_size),
            "{what}: codebook_size {} is out of range (2..={MAX_CODEBOOK}: codes are u16)",
            self.codebook_size
        );
        let tokens = self.h.saturating_mul(self.w);
        ensure!(
            self.h > 0 && self.w > 0 && tokens <= MAX_TOKENS_PER_MAP,
            "{what}: token grid {}x{} is out of range (1..={MAX_TOKENS_PER_MAP} tokens per map)",
            self.h,
            self.w
        );
        ensure!(
            self.class_names.len() <= MAX_CLASSES,
            "{what}: {} classes, at most {MAX_CLASSES} are supported",
            self.class_names.len()
        );
        Ok(())
    }
}

/// Streaming writer of a token file. Dropped before [`TokenWriter::finish`] (an error, Ctrl-C),
/// it removes its temporary file.
pub struct TokenWriter {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    header: TokenHeader,
    count: u64,
}

impl TokenWriter {
    pub fn create(path: &Path, header: TokenHeader) -> Result<Self> {
        header.check(&path.display().to_string())?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = BufWriter::new(file);
        let json = serde_json::to_vec(&header)?;
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&(json.len() as u32).to_le_bytes())?;
        out.write_all(&0u64.to_le_bytes())?;
        out.write_all(&json)?;
        Ok(Self {
            out: Some(out),
            tmp,
            path: path.to_path_buf(),
            header,
            count: 0,
        })
    }

    /// Appends one entry: a label and `h * w` codes.
    pub fn push(&mut self, label: usize, codes: &[u16]) -> Result<()> {
        ensure!(
            codes.len() == self.header.tokens_per_entry(),
            "expected {} codes, got {}",
            self.header.tokens_per_entry(),
            codes.len()
        );
        let mut buf = Vec::with_capacity(self.header.entry_bytes());
        buf.extend_from_slice(&(label as u32).to_le_bytes());
        for c in codes {
            buf.extend_from_slice(&c.to_le_bytes());
        }
        self.out
            .as_mut()
            .expect("open until finish")
            .write_all(&buf)
            .with_context(|| format!("writing {}", self.tmp.display()))?;
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the count, syncs and renames into place.
    pub fn finish(mut self) -> Result<u64> {
        let mut file = self
            .out
            .take()
            .expect("open until finish")
            .into_inner()
            .map_err(|e| anyhow::anyhow!("writing {}: {}", self.tmp.display(), e.error()))?;
        file.seek(SeekFrom::Start(16))?;
        file.write_all(&self.count.to_le_bytes())?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming to {}", self.path.display()))?;
        Ok(self.count)
    }
}

impl Drop for TokenWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A token file read into memory.
#[derive(Clone, Debug)]
pub struct TokenFile {
    pub header: TokenHeader,
    /// Label per entry.
    pub labels: Vec<u32>,
    /// Codes, `count * h * w`, entry-major.
    pub codes: Vec<u16>,
}

impl TokenFile {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Codes of entry `i`.
    pub fn entry(&self, i: usize) -> &[u16] {
        let n = self.header.tokens_per_entry();
        &self.codes[i * n..(i + 1) * n]
    }

    /// Reads and checks a token file; truncated, foreign or inconsistent files are errors.
    pub fn read(path: &Path) -> Result<Self> {
        let mut file = File::open(path).with_context(|| {
            format!(
                "opening token file {} (make one with `seqgan encode`)",
                path.display()
            )
        })?;
        let size = file.metadata()?.len() as usize;
        let mut prefix = [0u8; PREFIX];
        if size < PREFIX || file.read_exact(&mut prefix).is_err() || &prefix[..8] != MAGIC {
            bail!(
                "{} is not a seqgan token file (bad magic; make one with `seqgan encode`)",
                path.display()
            );
        }
        let version = u32::from_le_bytes(prefix[8..12].try_into().expect("4 bytes"));
        ensure!(
            version == VERSION,
            "{}: token file version {version}, this seqgan reads version {VERSION}",
            path.display()
        );
        let json_len = u32::from_le_bytes(prefix[12..16].try_into().expect("4 bytes")) as usize;
        let count = u64::from_le_bytes(prefix[16..24].try_into().expect("8 bytes")) as usize;
        ensure!(
            PREFIX + json_len <= size,
            "{} is truncated (header cut off)",
            path.display()
        );
        let mut json = vec![0u8; json_len];
        file.read_exact(&mut json)?;
        let header: TokenHeader = serde_json::from_slice(&json)
            .with_context(|| format!("{}: corrupt header", path.display()))?;
        header.check(&path.display().to_string())?;
        // Checked against the file's length before anything the count sizes is allocated.
        let expected = count
            .checked_mul(header.entry_bytes())
            .and_then(|b| b.checked_add(PREFIX + json_len))
            .unwrap_or(usize::MAX);
        ensure!(
            size == expected,
            "{} is truncated or corrupt: {count} entries of {}x{} tokens do not fit the file's {size} bytes",
            path.display(),
            header.h,
            header.w
        );
        let mut body = Vec::with_capacity(size - PREFIX - json_len);
        file.read_to_end(&mut body)?;
        let n = header.tokens_per_entry();
        let mut labels = Vec::with_capacity(count);
        let mut codes = Vec::with_capacity(count * n);
        for entry in body.chunks_exact(header.entry_bytes()) {
            labels.push(u32::from_le_bytes(entry[..4].try_into().expect("4 bytes")));
            codes.extend(
                entry[4..]
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]])),
            );
        }
        let classes = header.class_names.len().max(1) as u32;
        if let Some(bad) = labels.iter().find(|l| **l >= classes) {
            bail!("{}: label {bad} >= {classes} classes", path.display());
        }
        if let Some(bad) = codes.iter().find(|c| **c as usize >= header.codebook_size) {
            bail!(
                "{}: code {bad} >= codebook size {}",
                path.display(),
                header.codebook_size
            );
        }
        Ok(Self {
            header,
            labels,
            codes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> TokenHeader {
        TokenHeader {
            codebook_size: 300,
            h: 2,
            w: 3,
            class_names: vec!["a".into(), "b".into()],
            tokenizer_hash: "abc".into(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bin");
        let mut w = TokenWriter::create(&path, header()).unwrap();
        w.push(1, &[0, 1, 2, 299, 4, 5]).unwrap();
        w.push(0, &[6, 7, 8, 9, 10, 11]).unwrap();
        assert!(w.push(0, &[1, 2]).is_err());
        assert!(
            !path.exists(),
            "only complete files appear under the final name"
        );
        assert_eq!(w.finish().unwrap(), 2);
        let f = TokenFile::read(&path).unwrap();
        assert_eq!(f.header, header());
        assert_eq!(f.labels, vec![1, 0]);
        assert_eq!(f.entry(0), &[0, 1, 2, 299, 4, 5]);
        assert_eq!(f.entry(1), &[6, 7, 8, 9, 10, 11]);

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = TokenFile::read(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        std::fs::write(&path, b"PNG and other things, not tokens at all").unwrap();
        let err = TokenFile::read(&path).unwrap_err().to_string();
        assert!(err.contains("not a seqgan token file"), "{err}");
        let err = TokenFile::read(&dir.path().join("none.bin")).unwrap_err();
        assert!(format!("{err:#}").contains("seqgan encode"), "{err:#}");
        // An out-of-range code is caught.
        let mut bad = bytes.clone();
        let at = bad.len() - 2;
        bad[at..].copy_from_slice(&1000u16.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let err = TokenFile::read(&path).unwrap_err().to_string();
        assert!(err.contains("codebook size"), "{err}");
    }

    /// A file made of a prefix and a JSON header (no entries) with the given count.
    fn crafted(path: &Path, header_json: &str, count: u64) {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(header_json.len() as u32).to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(header_json.as_bytes());
        std::fs::write(path, b).unwrap();
    }

    /// Every header field is bounded by what the format holds and by the file's length, before
    /// anything is allocated; crafted counts and grids are errors, never overflows.
    #[test]
    fn crafted_headers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bin");
        let cases = [
            (
                r#"{"codebook_size": 1000000, "h": 2, "w": 2}"#,
                0,
                "codebook_size 1000000",
            ),
            (
                r#"{"codebook_size": 1, "h": 2, "w": 2}"#,
                0,
                "codebook_size 1",
            ),
            (
                r#"{"codebook_size": 64, "h": 0, "w": 2}"#,
                0,
                "token grid 0x2",
            ),
            (
                r#"{"codebook_size": 64, "h": 4294967296, "w": 4294967296}"#,
                0,
                "token grid",
            ),
            (
                r#"{"codebook_size": 64, "h": 8, "w": 8}"#,
                u64::MAX,
                "do not fit",
            ),
            (
                r#"{"codebook_size": 64, "h": 8, "w": 8}"#,
                1 << 40,
                "do not fit",
            ),
        ];
        for (json, count, needle) in cases {
            crafted(&path, json, count);
            let err = format!("{:#}", TokenFile::read(&path).unwrap_err());
            assert!(err.contains(needle), "{json} x {count}: {err}");
        }
        let names: Vec<String> = (0..=MAX_CLASSES).map(|i| i.to_string()).collect();
        let json = serde_json::json!({"codebook_size": 64, "h": 8, "w": 8, "class_names": names});
        crafted(&path, &json.to_string(), 0);
        let err = format!("{:#}", TokenFile::read(&path).unwrap_err());
        assert!(err.contains("classes"), "{err}");
    }

    #[test]
    fn an_unfinished_writer_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bin");
        let mut w = TokenWriter::create(&path, header()).unwrap();
        w.push(1, &[0, 1, 2, 3, 4, 5]).unwrap();
        drop(w); // an error or Ctrl-C before finish
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
