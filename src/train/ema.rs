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

/// One EMA update of `ema` towards `model`.
pub fn update<M: Module>(ema: M, model: &M, decay: f64) -> M {
    let mut collect = Collect {
        values: HashMap::new(),
    };
    model.visit(&mut collect);
    ema.map(&mut Blend {
        values: collect.values,
        decay,
    })
}
