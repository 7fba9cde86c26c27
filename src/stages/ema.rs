//! Exponential moving average of module weights: `ema = d * ema + (1 - d) * model`,
//! matched by parameter id (the EMA copy starts as a clone, so ids agree).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use std::collections::HashMap;

struct Collect {
    values: HashMap<ParamId, Tensor<1>>,
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val().detach();
        let n = t.shape().num_elements();
        self.values.insert(param.id, t.reshape([n]));
    }
}

struct Blend {
    values: HashMap<ParamId, Tensor<1>>,
    decay: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(src) = self.values.remove(&param.id) else {
            return param;
        };
        let decay = self.decay;
        param.map(|t| {
            let dims = t.dims();
            (t.detach() * decay + src.reshape(dims) * (1.0 - decay)).detach()
        })
    }
}

/// One EMA update of `ema` towards `model`. Panics if the two do not share parameter ids
/// (the EMA copy must come from [`init`]).
pub fn update<M: Module>(ema: M, model: &M, decay: f64) -> M {
    let mut collect = Collect {
        values: HashMap::new(),
    };
    model.visit(&mut collect);
    let mut blend = Blend {
        values: collect.values,
        decay,
    };
    let ema = ema.map(&mut blend);
    assert!(
        blend.values.is_empty(),
        "EMA copy does not match the model's parameters"
    );
    ema
}

/// A detached, materialised copy of `model` to start an EMA from (same parameter ids). Its
/// tensors are detached by the blend; it is deliberately not `no_grad()`-ed, since flags set on a
/// clone of a lazily-initialised module can reach the original.
pub fn init<M: Module>(model: &M) -> M {
    update(model.clone(), model, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    #[test]
    fn ema_blends_by_parameter() {
        let device = Device::flex();
        let model: Linear = LinearConfig::new(3, 2).init(&device);
        let ema = init(&model);
        let w0: Vec<f32> = ema.weight.val().into_data().try_to_vec().unwrap();
        let shifted = Linear {
            weight: model.weight.clone().map(|t| t + 2.0),
            ..model.clone()
        };
        let ema = update(ema, &shifted, 0.75);
        let w1: Vec<f32> = ema.weight.val().into_data().try_to_vec().unwrap();
        for (a, b) in w0.iter().zip(&w1) {
            assert!((b - (a + 0.5)).abs() < 1e-6, "{a} -> {b}");
        }
    }
}
