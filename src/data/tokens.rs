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

/// Streaming writer of a token file.
pub struct TokenWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    header: TokenHeader,
    count: u64,
}

impl TokenWriter {
    pub fn create(path: &Path, header: TokenHeader) -> Result<Self> {
        ensure!(
            header.codebook_size <= 1 << 16,
            "codebook size {} does not fit u16 codes",
            header.codebook_size
        );
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
            out,
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
        self.out.write_all(&buf)?;
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the count, syncs and renames into place.
    pub fn finish(self) -> Result<u64> {
        let mut file = self
            .out
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
        ensure!(
            header.h > 0 && header.w > 0 && header.codebook_size > 0,
            "{}: header has an empty token grid or codebook",
            path.display()
        );
        let expected = PREFIX + json_len + count * header.entry_bytes();
        ensure!(
            size == expected,
            "{} is truncated or corrupt: {count} entries of {}x{} tokens need {expected} bytes, the file has {size}",
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
}
