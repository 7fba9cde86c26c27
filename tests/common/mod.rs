//! Helpers shared by the integration tests.
#![allow(dead_code)]

use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use serde_json::Value;
pub mod weights;

use std::path::{Path, PathBuf};

/// `tests/fixtures/NAME` (reference data with its provenance in `tests/fixtures/README.md`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture_json(name: &str) -> Value {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The VGG-16 weights made by `scripts/fetch-vgg16.sh` (CI runs it before the tests).
pub fn vgg_weights() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/vgg16.safetensors");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-vgg16.sh first (the README's test command does)",
        p.display()
    );
    p
}

/// A fixture PNG as `[1, 3, H, W]` in [-1, 1] (`v / 127.5 - 1`).
pub fn png_tensor(path: &Path, device: &Device) -> Tensor<4> {
    let img = image::open(path).unwrap().into_rgb8();
    let (w, h) = img.dimensions();
    let mut v = Vec::new();
    seqgan::data::transform::push_chw(&img, &mut v);
    Tensor::from_data(TensorData::new(v, [1, 3, h as usize, w as usize]), device)
}

/// `P[c,h,w] = sin(0.1 (h+1)(c+1)) cos(0.07 (w+1))`, in f64 then rounded to f32.
pub fn pattern(c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(c * h * w);
    for ci in 0..c {
        for hi in 0..h {
            for wi in 0..w {
                let v = (0.1 * ((hi + 1) * (ci + 1)) as f64).sin() * (0.07 * (wi + 1) as f64).cos();
                out.push(v as f32);
            }
        }
    }
    out
}

pub fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec().unwrap()
}

/// Asserts `|a - b| <= rel * |b| + abs`.
#[track_caller]
pub fn close(what: &str, a: f64, b: f64, rel: f64, abs: f64) {
    assert!(
        (a - b).abs() <= rel * b.abs() + abs,
        "{what}: got {a}, expected {b} (rel err {:.2e})",
        (a - b).abs() / b.abs().max(1e-30)
    );
}

pub fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Serialises tests of one test binary that draw from a device's random generator (model
/// init, dropout): it is global to the process, so concurrent tests would interleave draws and
/// break exact-reproducibility checks. Hold the guard for the whole test.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The wgpu device, or `None` (with a note) where no adapter exists. CI installs Mesa's software
/// Vulkan (lavapipe) and sets SEQGAN_TEST_WGPU=1, which turns a missing adapter into a failure.
pub fn wgpu_device() -> Option<Device> {
    let required = std::env::var("SEQGAN_TEST_WGPU").is_ok_and(|v| v == "1");
    let probe = std::panic::catch_unwind(|| {
        let d = Device::wgpu(DeviceKind::DefaultDevice);
        let _ = Tensor::<1>::zeros([1], &d).into_data();
        d
    });
    match probe {
        Ok(d) => Some(d),
        Err(_) if required => panic!("SEQGAN_TEST_WGPU=1 but wgpu found no adapter"),
        Err(_) => {
            eprintln!(
                "no wgpu adapter: wgpu path not checked here (set SEQGAN_TEST_WGPU=1 to require it)"
            );
            None
        }
    }
}
