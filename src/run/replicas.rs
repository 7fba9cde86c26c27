//! Data-parallel replicas on one machine, on burn's multi-device machinery: `Module::fork`
//! places a copy of the weights on each replica's device every step (the broadcast), each
//! replica computes the gradients of its shard of the global batch, and
//! `GradientsParams::to_device` gathers them onto the first device, where they are summed and
//! one optimiser step runs. One process drives every replica.
//!
//! burn 0.22 has collectives (all-reduce) only through NCCL on CUDA, which cannot be built in
//! this workplace; wgpu and the CPU device have no collective transport, so gradients travel
//! through burn's device-to-device copies (host-staged between wgpu adapters). The reduction
//! sits behind [`Replicas::gather`], the one place a CUDA build would call burn's all-reduce.

use anyhow::{Result, ensure};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Device;

/// The devices of a (possibly data-parallel) run; the first holds the weights and optimiser.
#[derive(Clone, Debug)]
pub struct Replicas {
    devices: Vec<Device>,
}

impl Replicas {
    /// Replicas on `devices` (autodiff devices; the first is the main one).
    pub fn new(devices: Vec<Device>) -> Result<Self> {
        ensure!(!devices.is_empty(), "at least one device is needed");
        Ok(Self { devices })
    }

    /// One device: no replicas.
    pub fn single(device: Device) -> Self {
        Self {
            devices: vec![device],
        }
    }

    pub fn count(&self) -> usize {
        self.devices.len()
    }

    /// The device that holds the weights, the optimiser state and the checkpoints.
    pub fn main(&self) -> &Device {
        &self.devices[0]
    }

    pub fn device(&self, r: usize) -> &Device {
        &self.devices[r]
    }

    /// Splits a global batch of `batch` items into equal shards, one per replica.
    pub fn shard_size(&self, batch: usize) -> Result<usize> {
        let r = self.count();
        ensure!(
            batch.is_multiple_of(r),
            "the batch of {batch} does not split evenly over {r} devices; make train.batch_size \
             a multiple of the device count"
        );
        Ok(batch / r)
    }

    /// `module` as replica `r` sees it: the module itself on the first device, a fork (the
    /// weights copied, same parameter ids, gradients tracked) on the others.
    pub fn place<M: Module>(&self, module: &M, r: usize) -> M {
        if r == 0 {
            module.clone()
        } else {
            module.clone().fork(&self.devices[r])
        }
    }

    /// Adds replica gradients (of `module`'s parameters, on any replica's device) into `acc` on
    /// the main device: the gather of the reduction.
    pub fn gather<M: Module>(
        &self,
        acc: &mut GradientsAccumulator<M>,
        module: &M,
        grads: GradientsParams,
    ) {
        acc.accumulate(module, grads.to_device(self.main(), module));
    }
}
