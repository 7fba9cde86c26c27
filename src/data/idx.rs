//! IDX files (the MNIST / Fashion-MNIST format, optionally gzipped) and `seqgan import-idx`,
//! which writes them out as an ImageFolder every command can read.
//!
//! IDX: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then each
//! dimension as a big-endian u32, then the data in row-major order.

use anyhow::{Context, Result, bail, ensure};
use image::GrayImage;
use std::io::Read;
use std::path::Path;

/// Fashion-MNIST's class names in label order.
pub const FASHION_MNIST: [&str; 10] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
];

/// An unsigned-byte IDX array.
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file (gzip is detected by its magic bytes); every malformation is an error
/// naming the file.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{} is a corrupt gzip file", path.display()))?;
        out
    } else {
        raw
    };
    let name = path.display();
    ensure!(
        bytes.len() >= 4 && bytes[0] == 0 && bytes[1] == 0,
        "{name} is not an IDX file (it must start with two zero bytes)"
    );
    ensure!(
        bytes[2] == 0x08,
        "{name}: IDX element type 0x{:02x}; only unsigned bytes (0x08) are supported",
        bytes[2]
    );
    let nd = bytes[3] as usize;
    ensure!(
        (1..=4).contains(&nd),
        "{name}: {nd} dimensions (expected 1 to 4)"
    );
    let header = 4 + 4 * nd;
    ensure!(
        bytes.len() >= header,
        "{name} is truncated (header cut off)"
    );
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let want = dims
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .context("IDX dimensions overflow")?;
    let have = bytes.len() - header;
    if have != want {
        bail!(
            "{name}: dimensions {dims:?} need {want} data bytes, the file has {have} ({})",
            if have < want {
                "truncated"
            } else {
                "trailing bytes"
            }
        );
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Class folder names for `classes` labels: `NN-name`, so that sorting the folders (which is
/// how ImageFolder numbers classes) keeps the dataset's label order.
pub fn folder_names(names: &[String], classes: usize) -> Result<Vec<String>> {
    ensure!(
        names.is_empty() || names.len() >= classes,
        "{} class names given, but the labels go up to {}",
        names.len(),
        classes - 1
    );
    let width = classes.saturating_sub(1).to_string().len();
    Ok((0..classes)
        .map(|c| match names.get(c) {
            Some(n) => format!("{c:0width$}-{n}"),
            None => format!("{c:0width$}"),
        })
        .collect())
}

/// Writes IDX images + labels as `out/NN-class/NNNNN.png` (grey PNGs); returns the count.
pub fn import(
    images: &Path,
    labels: &Path,
    names: &[String],
    out: &Path,
    limit: Option<usize>,
) -> Result<usize> {
    let img = read_idx(images)?;
    let lab = read_idx(labels)?;
    ensure!(
        img.dims.len() == 3,
        "{}: expected images [N, rows, cols], found dimensions {:?}",
        images.display(),
        img.dims
    );
    ensure!(
        lab.dims.len() == 1,
        "{}: expected labels [N], found dimensions {:?}",
        labels.display(),
        lab.dims
    );
    let (n, rows, cols) = (img.dims[0], img.dims[1], img.dims[2]);
    ensure!(
        lab.dims[0] == n,
        "{} has {n} images but {} has {} labels",
        images.display(),
        labels.display(),
        lab.dims[0]
    );
    ensure!(
        rows > 0 && cols > 0,
        "{}: images are {rows}x{cols}; nothing to write",
        images.display()
    );
    // Without names, labels are digits 0..=9 (MNIST); with names, indices into them.
    let allowed = if names.is_empty() { 10 } else { names.len() };
    if let Some(bad) = lab.data.iter().find(|l| **l as usize >= allowed) {
        let given = if names.is_empty() {
            "--classes digits (10 classes)".to_string()
        } else {
            format!("the {} class names given", names.len())
        };
        bail!(
            "{}: label {bad} is out of range for {given} (0..{allowed}); pass the class names \
             in label order with --classes",
            labels.display()
        );
    }
    let classes = lab.data.iter().map(|l| *l as usize + 1).max().unwrap_or(1);
    let folders = folder_names(names, classes)?;
    let n = limit.unwrap_or(n).min(n);
    for f in &folders {
        std::fs::create_dir_all(out.join(f))
            .with_context(|| format!("creating {}", out.join(f).display()))?;
    }
    let px = rows * cols;
    for i in 0..n {
        let image = GrayImage::from_raw(
            cols as u32,
            rows as u32,
            img.data[i * px..(i + 1) * px].to_vec(),
        )
        .expect("buffer size checked");
        let path = out
            .join(&folders[lab.data[i] as usize])
            .join(format!("{i:05}.png"));
        image
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    }

    #[test]
    fn imports_and_rejects_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let pixels: Vec<u8> = (0..3 * 2 * 2).map(|i| i as u8 * 20).collect();
        std::fs::write(p("img"), idx(&[3, 2, 2], &pixels)).unwrap();
        std::fs::write(p("lab"), idx(&[3], &[2, 0, 2])).unwrap();
        // gzipped labels work the same
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &idx(&[3], &[2, 0, 2])).unwrap();
        std::fs::write(p("lab.gz"), gz.finish().unwrap()).unwrap();
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let out = p("out");
        assert_eq!(
            import(&p("img"), &p("lab.gz"), &names, &out, None).unwrap(),
            3
        );
        let png = image::open(out.join("2-c/00002.png")).unwrap().into_luma8();
        assert_eq!(png.into_raw(), pixels[8..12].to_vec());
        assert!(out.join("0-a/00001.png").exists() && out.join("1-b").is_dir());
        let ds = crate::data::Dataset::open(out.to_str().unwrap(), 0).unwrap();
        assert_eq!(ds.class_names(), vec!["0-a", "1-b", "2-c"]);

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (idx(&[3, 2, 2], &pixels[..11]), "truncated"),
            (
                idx(&[3, 2, 2], &[pixels.clone(), vec![0]].concat()),
                "trailing",
            ),
            (vec![1, 2, 3, 4, 5], "not an IDX file"),
            ([&[0u8, 0, 0x0d, 3][..], &[0; 12]].concat(), "0x0d"),
            (vec![0, 0, 8, 3, 0, 0], "header"),
        ];
        for (bytes, needle) in cases {
            std::fs::write(p("bad"), &bytes).unwrap();
            let err = import(&p("bad"), &p("lab"), &names, &p("o2"), None).unwrap_err();
            let msg = format!("{err:#}");
            assert!(
                msg.contains(needle) && msg.contains("bad"),
                "{needle}: {msg}"
            );
        }
        std::fs::write(p("lab2"), idx(&[2], &[0, 1])).unwrap();
        let err = import(&p("img"), &p("lab2"), &names, &p("o3"), None).unwrap_err();
        assert!(err.to_string().contains("2 labels"), "{err}");
        let err = import(&p("lab"), &p("lab"), &names, &p("o4"), None).unwrap_err();
        assert!(err.to_string().contains("[N, rows, cols]"), "{err}");
        let err = import(&p("img"), &p("lab"), &names[..2], &p("o5"), None).unwrap_err();
        assert!(err.to_string().contains("2 class names"), "{err}");
    }
}
