//! The GPU code path (wgpu) computes what the CPU path computes. Runs where a wgpu adapter
//! exists; CI installs Mesa's software Vulkan (lavapipe) and sets SEQGAN_TEST_WGPU=1, which
//! turns a missing adapter into a failure instead of a skip.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use seqgan::config;
use seqgan::perceptual::PerceptualLoss;
use seqgan::tokenizer::TokenizerRunConfig;
use seqgan::tokenizer::VqModel;

#[test]
fn wgpu_matches_cpu_on_tokenizer_and_perceptual_loss() {
    let Some(gpu) = wgpu_device() else { return };
    let cpu = Device::flex();
    let mut sets = vec![format!("perceptual.weights={}", vgg_weights().display())];
    sets.push("perceptual.alpha=0.5".into());
    let cfg: TokenizerRunConfig = config::from_preset("tiny", &sets).unwrap();
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

/// Shifts every float parameter, so the zero-initialised attention projection is not zero.
struct Shift;

impl burn::module::ModuleMapper for Shift {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        param.map(|t| t + 0.05)
    }
}

#[test]
fn wgpu_matches_cpu_on_phase2_attention_forward_and_backward() {
    use burn::module::Module;
    use seqgan::tokenizer::attention::WindowAttention;
    let Some(gpu) = wgpu_device() else { return };
    let plain = Device::flex();
    let gpu_plain = gpu.clone();
    let (cpu, gpu) = (plain.clone().autodiff(), gpu.autodiff());
    let x: Vec<f32> = pattern(16, 8, 12);
    for dilated in [false, true] {
        plain.seed(5);
        // Built and shifted on a plain device (no graph), then copied to both.
        let block = WindowAttention::new(16, 8, 4, dilated, &plain).map(&mut Shift);
        // Inference (backends' own attention kernels).
        let input =
            |d: &Device| Tensor::<4>::from_data(TensorData::new(x.clone(), [1, 16, 8, 12]), d);
        let yc = values(block.forward(input(&plain)));
        let yg = values(
            block
                .clone()
                .to_device(&gpu_plain)
                .forward(input(&gpu_plain)),
        );
        let err = yc
            .iter()
            .zip(&yg)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(
            err <= 1e-4,
            "dilated={dilated}: inference output differs by {err}"
        );
        let block_gpu = block.clone().to_device(&gpu);
        let block = block.to_device(&cpu);
        let run = |b: &WindowAttention, d: &Device| {
            let x = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, 16, 8, 12]), d)
                .require_grad();
            let y = b.forward(x.clone());
            let grads = y.clone().powi_scalar(2).sum().backward();
            (values(y), values(x.grad(&grads).unwrap()))
        };
        let ((yc, gc), (yg, gg)) = (run(&block, &cpu), run(&block_gpu, &gpu));
        for (what, a, b) in [("output", yc, yg), ("input gradient", gc, gg)] {
            let scale = a.iter().map(|v| v.abs()).fold(0f32, f32::max).max(1.0);
            let err = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(
                err <= 1e-4 * scale,
                "dilated={dilated}: {what} differs by {err} (scale {scale})"
            );
        }
    }
}
