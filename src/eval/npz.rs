//! numpy's `.npy` / `.npz` formats, for FID statistics (`mu`, `sigma`: float64, as pytorch-fid
//! and the ADM evaluator read them) and sample sets (`arr_0`: uint8 `[N, H, W, 3]`, what the ADM
//! evaluator scores). An `.npz` is a zip of `.npy` members (stored or deflated); sample arrays
//! are streamed, never read whole.

use anyhow::{Context, Result, bail, ensure};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use super::fid::Stats;
use super::linalg::Mat;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Element types we read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    U8,
    I64,
    F32,
    F64,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Self::U8 => "|u1",
            Self::I64 => "<i8",
            Self::F32 => "<f4",
            Self::F64 => "<f8",
        }
    }

    fn parse(descr: &str) -> Result<Self> {
        Ok(match descr {
            "|u1" | "<u1" | "u1" => Self::U8,
            "<i8" => Self::I64,
            "<f4" => Self::F32,
            "<f8" => Self::F64,
            other => {
                bail!("unsupported .npy element type `{other}` (expected |u1, <i8, <f4 or <f8)")
            }
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::F32 => 4,
            Self::I64 | Self::F64 => 8,
        }
    }
}

/// The header of one `.npy` array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl Header {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Value of `'key': ...` in a header dict, up to the next top-level comma or brace.
fn dict_value<'a>(dict: &'a str, key: &str) -> Result<&'a str> {
    let pat = format!("'{key}':");
    let start = dict
        .find(&pat)
        .with_context(|| format!(".npy header has no `{key}`: {dict}"))?
        + pat.len();
    let rest = dict[start..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else {
        rest.find([',', '}'])
    }
    .with_context(|| format!("malformed .npy header: {dict}"))?;
    Ok(rest[..end].trim())
}

/// Reads the magic, version and header dict of a `.npy` stream.
pub fn read_header(r: &mut impl Read) -> Result<Header> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre).context("reading .npy magic")?;
    ensure!(&pre[..6] == MAGIC, "not a .npy array (bad magic)");
    let len = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)?;
            u32::from_le_bytes(b) as usize
        }
        v => bail!("unsupported .npy version {v}"),
    };
    let mut dict = vec![0u8; len];
    r.read_exact(&mut dict).context("reading .npy header")?;
    let dict = String::from_utf8_lossy(&dict);
    let descr = dict_value(&dict, "descr")?.trim_matches(['\'', '"']);
    let dtype = Dtype::parse(descr)?;
    if dict_value(&dict, "fortran_order")? != "False" {
        bail!(".npy array in Fortran order is not supported (save it C-contiguous)");
    }
    let shape_text = dict_value(&dict, "shape")?;
    let shape = shape_text
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("bad .npy shape {shape_text}"))?;
    Ok(Header { dtype, shape })
}

/// Writes a version 1.0 header (padded so the data starts at a multiple of 64 bytes).
pub fn write_header(w: &mut impl Write, header: &Header) -> Result<()> {
    let shape = match header.shape.len() {
        1 => format!("({},)", header.shape[0]),
        _ => format!(
            "({})",
            header
                .shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        header.dtype.descr()
    );
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    w.write_all(MAGIC)?;
    w.write_all(&[1, 0])?;
    w.write_all(&(dict.len() as u16).to_le_bytes())?;
    w.write_all(dict.as_bytes())?;
    Ok(())
}

fn open_archive(path: &Path) -> Result<ZipArchive<BufReader<File>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    ZipArchive::new(BufReader::new(file))
        .with_context(|| format!("{} is not an .npz (zip) file", path.display()))
}

/// Names of the arrays in an `.npz` (without `.npy`).
pub fn array_names(path: &Path) -> Result<Vec<String>> {
    let archive = open_archive(path)?;
    Ok(archive
        .file_names()
        .filter_map(|n| n.ok())
        .filter_map(|n| n.strip_suffix(".npy").map(str::to_string))
        .collect())
}

/// Reads a whole numeric array as float64 (for statistics; not for sample sets).
pub fn read_f64(path: &Path, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    let mut archive = open_archive(path)?;
    let mut member = archive
        .by_name(&format!("{name}.npy"))
        .with_context(|| format!("{} has no array `{name}`", path.display()))?;
    let header = read_header(&mut member).with_context(|| format!("{}: {name}", path.display()))?;
    let mut raw = vec![0u8; header.numel() * header.dtype.size()];
    member
        .read_exact(&mut raw)
        .with_context(|| format!("{}: array `{name}` is truncated", path.display()))?;
    let values = match header.dtype {
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
            .collect(),
        Dtype::I64 => raw
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64)
            .collect(),
        Dtype::U8 => raw.iter().map(|v| *v as f64).collect(),
    };
    Ok((header.shape, values))
}

/// Writes `.npz` members (stored, like `numpy.savez`) atomically.
fn write_npz(path: &Path, arrays: &[(&str, Header, Vec<u8>)]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut zip = ZipWriter::new(BufWriter::new(file));
        for (name, header, bytes) in arrays {
            zip.start_file(format!("{name}.npy"), stored(bytes.len() as u64))?;
            write_header(&mut zip, header)?;
            zip.write_all(bytes)?;
        }
        zip.finish()?.flush()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn stored(bytes: u64) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(bytes >= u32::MAX as u64 - 4096)
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes FID statistics: `mu` `(d,)` and `sigma` `(d, d)` float64 (pytorch-fid / ADM keys) and
/// the sample count `n` (int64 scalar).
pub fn write_stats(path: &Path, stats: &Stats) -> Result<()> {
    let d = stats.mu.len();
    let f64_bytes = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    write_npz(
        path,
        &[
            (
                "mu",
                Header {
                    dtype: Dtype::F64,
                    shape: vec![d],
                },
                f64_bytes(&stats.mu),
            ),
            (
                "sigma",
                Header {
                    dtype: Dtype::F64,
                    shape: vec![d, d],
                },
                f64_bytes(&stats.sigma.data),
            ),
            (
                "n",
                Header {
                    dtype: Dtype::I64,
                    shape: vec![],
                },
                (stats.n as i64).to_le_bytes().to_vec(),
            ),
        ],
    )
}

/// Whether an `.npz` holds statistics (`mu` and `sigma`).
pub fn has_stats(path: &Path) -> Result<bool> {
    let names = array_names(path)?;
    Ok(names.iter().any(|n| n == "mu") && names.iter().any(|n| n == "sigma"))
}

/// Reads `mu` / `sigma` (and `n` when present) of a statistics `.npz`.
pub fn read_stats(path: &Path) -> Result<Stats> {
    let (mu_shape, mu) = read_f64(path, "mu")?;
    let (sigma_shape, sigma) = read_f64(path, "sigma")?;
    let d = mu.len();
    ensure!(
        mu_shape.len() == 1 && sigma_shape == [d, d],
        "{}: mu has shape {mu_shape:?} and sigma {sigma_shape:?}; expected (d,) and (d, d)",
        path.display()
    );
    let n = if array_names(path)?.iter().any(|a| a == "n") {
        read_f64(path, "n")?.1.first().copied().unwrap_or(0.0) as u64
    } else {
        0
    };
    Ok(Stats {
        mu,
        sigma: Mat::from_vec(d, d, sigma),
        n,
    })
}

/// A uint8 sample array `[N, H, W, 3]` inside an `.npz` (`arr_0`, or the only array).
#[derive(Clone, Debug)]
pub struct NpzImages {
    path: PathBuf,
    member: String,
    pub n: usize,
    pub height: usize,
    pub width: usize,
}

impl NpzImages {
    pub fn open(path: &Path) -> Result<Self> {
        let names = array_names(path)?;
        let name = if names.iter().any(|n| n == "arr_0") {
            "arr_0".to_string()
        } else if names.len() == 1 {
            names[0].clone()
        } else {
            bail!(
                "{} has no `arr_0` sample array (arrays: {})",
                path.display(),
                names.join(", ")
            );
        };
        let mut archive = open_archive(path)?;
        let mut member = archive.by_name(&format!("{name}.npy"))?;
        let header =
            read_header(&mut member).with_context(|| format!("{}: {name}", path.display()))?;
        match (header.dtype, header.shape.as_slice()) {
            (Dtype::U8, [n, h, w, 3]) if *h > 0 && *w > 0 => Ok(Self {
                path: path.to_path_buf(),
                member: format!("{name}.npy"),
                n: *n,
                height: *h,
                width: *w,
            }),
            (dtype, shape) => bail!(
                "{}: `{name}` is {dtype:?} {shape:?}; expected uint8 [N, H, W, 3] images \
                 (the ADM evaluator's sample format)",
                path.display()
            ),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({} images {}x{}, uint8 NHWC)",
            self.path.display(),
            self.n,
            self.width,
            self.height
        )
    }

    /// Streams the images in batches of up to `batch` (HWC bytes, concatenated) from a reader
    /// thread; an `Err` item ends the stream.
    pub fn batches(&self, batch: usize) -> Receiver<Result<Vec<u8>>> {
        let (tx, rx) = sync_channel(2);
        let this = self.clone();
        std::thread::spawn(move || {
            let run = || -> Result<()> {
                let mut archive = open_archive(&this.path)?;
                let mut member = archive.by_name(&this.member)?;
                read_header(&mut member)?;
                let per = this.height * this.width * 3;
                let mut left = this.n;
                while left > 0 {
                    let k = left.min(batch.max(1));
                    let mut buf = vec![0u8; k * per];
                    member.read_exact(&mut buf).with_context(|| {
                        format!("{}: sample array is truncated", this.path.display())
                    })?;
                    left -= k;
                    if tx.send(Ok(buf)).is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            };
            if let Err(e) = run() {
                let _ = tx.send(Err(e));
            }
        });
        rx
    }
}

/// Streams uint8 images `[N, H, W, 3]` into an `.npz` as `arr_0` (stored, zip64 when large),
/// readable by `numpy.load` and the ADM evaluator. `N` is fixed up front (the header holds it).
pub struct NpzImageWriter {
    zip: ZipWriter<BufWriter<File>>,
    path: PathBuf,
    tmp: PathBuf,
    per_image: usize,
    expected: usize,
    written: usize,
}

impl NpzImageWriter {
    pub fn create(path: &Path, n: usize, height: usize, width: usize) -> Result<Self> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut zip = ZipWriter::new(BufWriter::new(file));
        let per_image = height * width * 3;
        zip.start_file("arr_0.npy", stored((n * per_image) as u64 + 128))?;
        write_header(
            &mut zip,
            &Header {
                dtype: Dtype::U8,
                shape: vec![n, height, width, 3],
            },
        )?;
        Ok(Self {
            zip,
            path: path.to_path_buf(),
            tmp,
            per_image,
            expected: n,
            written: 0,
        })
    }

    /// Appends whole images (HWC bytes, concatenated).
    pub fn push(&mut self, hwc: &[u8]) -> Result<()> {
        ensure!(
            hwc.len().is_multiple_of(self.per_image),
            "image bytes are not a whole number of images"
        );
        let k = hwc.len() / self.per_image;
        ensure!(
            self.written + k <= self.expected,
            "more images than the {} announced",
            self.expected
        );
        self.zip.write_all(hwc)?;
        self.written += k;
        Ok(())
    }

    /// Completes the file (all `N` images must have been pushed).
    pub fn finish(self) -> Result<()> {
        ensure!(
            self.written == self.expected,
            "wrote {} of {} images",
            self.written,
            self.expected
        );
        self.zip.finish()?.flush()?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming to {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_alignment() {
        for shape in [vec![], vec![7], vec![2048, 2048], vec![3, 8, 8, 3]] {
            let h = Header {
                dtype: Dtype::F64,
                shape,
            };
            let mut buf = Vec::new();
            write_header(&mut buf, &h).unwrap();
            assert_eq!(buf.len() % 64, 0);
            assert_eq!(*buf.last().unwrap(), b'\n');
            assert_eq!(read_header(&mut buf.as_slice()).unwrap(), h);
        }
        // A header as numpy writes it.
        let dict = b"{'descr': '|u1', 'fortran_order': False, 'shape': (10, 32, 32, 3), }";
        let mut raw = b"\x93NUMPY\x01\x00".to_vec();
        raw.extend((dict.len() as u16).to_le_bytes());
        raw.extend(dict);
        let h = read_header(&mut raw.as_slice()).unwrap();
        assert_eq!(h.dtype, Dtype::U8);
        assert_eq!(h.shape, vec![10, 32, 32, 3]);
    }

    #[test]
    fn stats_and_images_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let stats = Stats {
            mu: vec![1.5, -2.0],
            sigma: Mat::from_vec(2, 2, vec![1.0, 0.25, 0.25, 3.0]),
            n: 12,
        };
        let p = tmp.path().join("s.npz");
        write_stats(&p, &stats).unwrap();
        assert!(has_stats(&p).unwrap());
        assert_eq!(read_stats(&p).unwrap(), stats);

        let p = tmp.path().join("x.npz");
        let mut w = NpzImageWriter::create(&p, 5, 2, 3).unwrap();
        let bytes: Vec<u8> = (0..5 * 18).map(|i| i as u8).collect();
        w.push(&bytes[..36]).unwrap();
        w.push(&bytes[36..]).unwrap();
        w.finish().unwrap();
        assert!(!has_stats(&p).unwrap());
        let imgs = NpzImages::open(&p).unwrap();
        assert_eq!((imgs.n, imgs.height, imgs.width), (5, 2, 3));
        let got: Vec<u8> = imgs
            .batches(2)
            .into_iter()
            .flat_map(|b| b.unwrap())
            .collect();
        assert_eq!(got, bytes);
        // Too few images is an error.
        let w = NpzImageWriter::create(&tmp.path().join("y.npz"), 2, 2, 3).unwrap();
        assert!(w.finish().is_err());
    }
}
