//! Device choice: `auto` (default: CUDA when built in and present, else a hardware wgpu adapter,
//! else the pure-Rust CPU device with a notice), `wgpu`, `cuda` (cargo feature `cuda`) or `cpu`.
//!
//! A software wgpu adapter (llvmpipe / lavapipe / WARP: a CPU emulating a GPU) is ~20x slower
//! than the CPU device, so `auto` never picks one; `--device wgpu` still does when asked.

use anyhow::{Result, bail};
use burn::tensor::{Device, DeviceKind};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// Where tensors live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// CUDA when built in and present, else a hardware GPU through wgpu, else the CPU device.
    #[default]
    Auto,
    /// Best adapter found by wgpu (Vulkan / Metal / DX12), software adapters included.
    Wgpu,
    /// Pure-Rust CPU device (burn's flex backend).
    Cpu,
    /// CUDA (build with `--features cuda`).
    Cuda,
}

impl DeviceChoice {
    /// The `--device` value that selects this choice.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Wgpu => "wgpu",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// Opens the chosen device and prints what was picked. Errors say which flag to use instead.
pub fn open(choice: DeviceChoice) -> Result<Device> {
    let device = match choice {
        DeviceChoice::Auto => open_auto(),
        DeviceChoice::Cpu => open_cpu(),
        DeviceChoice::Wgpu => open_wgpu()?,
        DeviceChoice::Cuda => open_cuda()?,
    };
    eprintln!("device: {}", describe(&device));
    Ok(device)
}

/// The devices of a data-parallel run: device `i` of the chosen kind for each index (one
/// device, as [`open`] picks it, when `indices` is empty). An index may repeat (several
/// replicas on one device). `auto` resolves to a kind first.
pub fn open_replicas(choice: DeviceChoice, indices: &[usize]) -> Result<Vec<Device>> {
    let first = open(choice)?;
    if indices.is_empty() {
        return Ok(vec![first]);
    }
    let kind = kind_of(&first);
    let devices = indices
        .iter()
        .map(|&i| nth_device(kind, i, &first))
        .collect::<Result<Vec<_>>>()?;
    eprintln!(
        "devices: {} replicas: {}",
        devices.len(),
        devices.iter().map(describe).collect::<Vec<_>>().join("; ")
    );
    Ok(devices)
}

/// Device `i` of a kind: CPU replicas all share the CPU device; wgpu indexes its adapters in
/// the order burn enumerates them (discrete GPUs first).
fn nth_device(kind: DeviceChoice, i: usize, first: &Device) -> Result<Device> {
    match kind {
        DeviceChoice::Cpu => Ok(first.clone()),
        DeviceChoice::Wgpu => {
            let all = Device::enumerate(burn::tensor::DeviceType::Wgpu).into_vec();
            match all.get(i) {
                Some(d) => Ok(probe(d.clone())),
                None => bail!(
                    "--devices {i}: wgpu has {} adapter(s) (indices 0..{})",
                    all.len(),
                    all.len()
                ),
            }
        }
        DeviceChoice::Cuda => open_cuda_index(i),
        DeviceChoice::Auto => unreachable!("open resolves auto"),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda_index(i: usize) -> Result<Device> {
    std::panic::catch_unwind(|| probe(Device::cuda(i)))
        .map_err(|_| anyhow::anyhow!("--devices {i}: CUDA device {i} could not be opened"))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda_index(_: usize) -> Result<Device> {
    open_cuda()
}

/// The device a training command runs on: the `--device` flag when given, else the kind the run
/// was trained on (`recorded`, for `--resume`), else `auto`.
pub fn for_run(flag: Option<DeviceChoice>, recorded: Option<DeviceChoice>) -> DeviceChoice {
    flag.or(recorded).unwrap_or_default()
}

/// The kind of an opened device (`cpu`, `wgpu` or `cuda`; never `auto`), autodiff or not.
pub fn kind_of(device: &Device) -> DeviceChoice {
    let name = format!("{:?}", device.clone().inner());
    if name.contains("Flex(") {
        DeviceChoice::Cpu
    } else if name.contains("Cuda") {
        DeviceChoice::Cuda
    } else {
        DeviceChoice::Wgpu
    }
}

fn open_cpu() -> Device {
    // Keeps burn's `Device::default()` (used internally, e.g. by optimiser loading) off wgpu.
    // SAFETY: called at start-up before any other thread reads the environment.
    unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    Device::flex()
}

fn open_auto() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(device) = std::panic::catch_unwind(|| probe(Device::cuda(0))) {
        return device;
    }
    match probe_wgpu() {
        Some(device) if is_hardware(&device) => device,
        found => {
            let why = match found {
                Some(d) => format!(
                    "wgpu's only adapter is a software one ({})",
                    adapter_name(&d).unwrap_or_default()
                ),
                None => "no GPU adapter found".into(),
            };
            eprintln!(
                "notice: {why}; running on the CPU device (`--device wgpu` forces the adapter)"
            );
            open_cpu()
        }
    }
}

/// Runs one tiny op so a missing or broken adapter fails now, not mid-run.
fn probe(device: Device) -> Device {
    let _ = burn::tensor::Tensor::<1>::zeros([1], &device).into_data();
    device
}

fn probe_wgpu() -> Option<Device> {
    std::panic::catch_unwind(|| probe(Device::wgpu(DeviceKind::DefaultDevice))).ok()
}

/// Whether a device runs on a card (not a CPU or a software rasterizer).
fn is_hardware(device: &Device) -> bool {
    device.identity().is_some_and(|id| id.physical.is_some())
}

fn adapter_name(device: &Device) -> Option<String> {
    device.identity().map(|id| id.name)
}

fn open_wgpu() -> Result<Device> {
    match probe_wgpu() {
        Some(d) => Ok(d),
        None => bail!(
            "wgpu found no usable GPU adapter (Vulkan/Metal/DX12). Use `--device cpu` to run on \
             the CPU, or install a Vulkan driver (e.g. `apt-get install mesa-vulkan-drivers` for a \
             software one)."
        ),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Device> {
    std::panic::catch_unwind(|| probe(Device::cuda(0))).map_err(|_| {
        anyhow::anyhow!("CUDA device 0 could not be opened; use `--device wgpu` or `--device cpu`")
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Device> {
    bail!(
        "this seqgan was built without CUDA: rebuild with `cargo build --release --features cuda`, or use `--device wgpu` / `--device cpu`"
    )
}

/// One line naming the device kind and, for GPUs, the adapter (marked when it is software).
pub fn describe(device: &Device) -> String {
    match kind_of(device) {
        DeviceChoice::Cpu => "cpu (burn flex, pure Rust)".into(),
        kind => match adapter_name(device) {
            Some(name) if !is_hardware(device) => {
                format!(
                    "{} (adapter: {name}, software: ~20x slower than --device cpu)",
                    kind.flag()
                )
            }
            Some(name) => format!("{} (adapter: {name})", kind.flag()),
            None => format!("{} ({device:?})", kind.flag()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_run_defaults() {
        assert_eq!(kind_of(&Device::flex()), DeviceChoice::Cpu);
        assert_eq!(kind_of(&Device::flex().autodiff()), DeviceChoice::Cpu);
        // A flag wins; a resumed run stays on its kind; a new run is auto.
        let cpu = Some(DeviceChoice::Cpu);
        assert_eq!(for_run(Some(DeviceChoice::Wgpu), cpu), DeviceChoice::Wgpu);
        assert_eq!(for_run(None, cpu), DeviceChoice::Cpu);
        assert_eq!(for_run(None, None), DeviceChoice::Auto);
    }
}
