//! The GPU code path (wgpu) computes what the CPU path computes. Runs where a wgpu adapter
//! exists; CI installs Mesa's software Vulkan (lavapipe) and sets SEQGAN_TEST_WGPU=1, which
//! turns a missing adapter into a failure instead of a skip.

mod common;

use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use common::*;
use seqgan::config::{self, TokenizerRunConfig};
use seqgan::perceptual::PerceptualLoss;
use seqgan::tokenizer::VqModel;

fn wgpu_device() -> Option<Device> {
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

#[test]
fn wgpu_matches_cpu_on_tokenizer_and_perceptual_loss() {
    let Some(gpu) = wgpu_device() else { return };
    let cpu = Device::flex();
    let mut sets = vec![format!("perceptual.weights={}", vgg_weights().display())];
    sets.push("perceptual.alpha=0.5".into());
    let cfg: TokenizerRunConfig = config::resolve(Some("tiny"), &sets).unwrap();
    // Same weights on both devices: build on CPU, move the record.
    cpu.seed(3);
    let model_cpu = VqModel::new(&cfg.model, &cpu);
    let model_gpu = burn::module::Module::to_device(model_cpu.clone(), &gpu);
    let x: Vec<f32> = pattern(3, 32, 32)
        .into_iter()
        .cycle()
        .take(2 * 3 * 32 * 32)
        .collect();
    let xc = Tensor::<4>::from_data(TensorData::new(x.clone(), [2, 3, 32, 32]), &cpu);
    let xg = Tensor::<4>::from_data(TensorData::new(x, [2, 3, 32, 32]), &gpu);
    let (rc, qc) = model_cpu.forward(xc.clone(), 1.0);
    let (rg, qg) = model_gpu.forward(xg.clone(), 1.0);
    let (vc, vg) = (values(rc.clone()), values(rg.clone()));
    let err = vc
        .iter()
        .zip(&vg)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-3, "reconstruction differs by {err}");
    let ic: Vec<i64> = qc
        .indices
        .into_data()
        .convert::<i64>()
        .try_to_vec()
        .unwrap();
    let ig: Vec<i64> = qg
        .indices
        .into_data()
        .convert::<i64>()
        .try_to_vec()
        .unwrap();
    let same = ic.iter().zip(&ig).filter(|(a, b)| a == b).count();
    assert!(
        same as f64 >= 0.95 * ic.len() as f64,
        "codes agree at {same}/{}",
        ic.len()
    );
    let pc = PerceptualLoss::new(&cfg.perceptual, &cpu).unwrap();
    let pg = PerceptualLoss::new(&cfg.perceptual, &gpu).unwrap();
    let lc = pc.forward(rc, xc).total.into_scalar::<f32>() as f64;
    let lg = pg.forward(rg, xg).total.into_scalar::<f32>() as f64;
    close("L_alpha cpu vs wgpu", lg, lc, 1e-3, 1e-5);
}
