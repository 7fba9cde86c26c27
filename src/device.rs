//! Device choice: wgpu (default), cuda (cargo feature `cuda`) or the pure-Rust CPU device (flex).

use anyhow::{Result, bail};
use burn::tensor::{Device, DeviceKind};
use clap::ValueEnum;

/// Where tensors live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum DeviceChoice {
    /// Best GPU found by wgpu (Vulkan / Metal / DX12).
    #[default]
    Wgpu,
    /// Pure-Rust CPU device (burn's flex backend): tests and small runs.
    Cpu,
    /// CUDA (build with `--features cuda`).
    Cuda,
}

/// Opens the chosen device and prints what was picked. Errors say which flag to use instead.
pub fn open(choice: DeviceChoice) -> Result<Device> {
    let device = match choice {
        DeviceChoice::Cpu => {
            // Keeps burn's `Device::default()` (used internally, e.g. by optimiser loading) off wgpu.
            // SAFETY: called at start-up before any other thread reads the environment.
            unsafe { std::env::set_var("BURN_DEVICE", "flex") };
            Device::flex()
        }
        DeviceChoice::Wgpu => open_wgpu()?,
        DeviceChoice::Cuda => open_cuda()?,
    };
    eprintln!("device: {}", describe(choice, &device));
    Ok(device)
}

fn open_wgpu() -> Result<Device> {
    let device = std::panic::catch_unwind(|| {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        // Force adapter selection now, so a missing adapter fails here and not mid-run.
        let _ = burn::tensor::Tensor::<1>::zeros([1], &device).into_data();
        device
    });
    match device {
        Ok(d) => Ok(d),
        Err(_) => bail!(
            "wgpu found no usable GPU adapter (Vulkan/Metal/DX12). Use `--device cpu` to run on \
             the CPU, or install a Vulkan driver (e.g. `apt-get install mesa-vulkan-drivers` for a \
             software one)."
        ),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Device> {
    Ok(Device::cuda(0))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Device> {
    bail!(
        "this seqgan was built without CUDA: rebuild with `cargo build --release --features cuda`, or use `--device wgpu` / `--device cpu`"
    )
}

fn describe(choice: DeviceChoice, device: &Device) -> String {
    match choice {
        DeviceChoice::Cpu => "cpu (burn flex, pure Rust)".into(),
        _ => {
            let name = format!("{choice:?}").to_lowercase();
            match device.identity() {
                Some(id) => format!("{name} (adapter: {})", id.name),
                None => format!("{name} ({device:?})"),
            }
        }
    }
}
