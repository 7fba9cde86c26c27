//! Weight files generated in tests with random values, in the formats users bring:
//! PyTorch's `torch.save` zip (`.pth`, pickle protocol 2 with `_rebuild_tensor_v2` and one
//! storage entry per tensor, as torchvision's files are) and safetensors.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// One tensor: name, shape, and the uniform bound `a` of its values in `[-a, a]` (or, for
/// `positive`, in `[0, a]`).
pub struct Spec {
    pub name: String,
    pub shape: Vec<usize>,
    pub bound: f32,
    pub positive: bool,
}

impl Spec {
    pub fn new(name: impl Into<String>, shape: &[usize], bound: f32) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            bound,
            positive: false,
        }
    }

    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The tensor's values as little-endian f32 bytes, from a seeded xorshift stream.
    fn bytes(&self, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut out = Vec::with_capacity(self.numel() * 4);
        for _ in 0..self.numel() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            let v = if self.positive {
                u * self.bound
            } else {
                (2.0 * u - 1.0) * self.bound
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
}

/// torchvision's VGG-16 (`features.*` conv weights, and `classifier.{0,3,6}` when
/// `classifier`), with He-uniform conv weights so activations stay finite.
pub fn vgg16_specs(classifier: bool) -> Vec<Spec> {
    const CONVS: [(usize, usize, usize); 13] = [
        (0, 3, 64),
        (2, 64, 64),
        (5, 64, 128),
        (7, 128, 128),
        (10, 128, 256),
        (12, 256, 256),
        (14, 256, 256),
        (17, 256, 512),
        (19, 512, 512),
        (21, 512, 512),
        (24, 512, 512),
        (26, 512, 512),
        (28, 512, 512),
    ];
    let mut specs = Vec::new();
    for (i, cin, cout) in CONVS {
        let bound = (6.0 / (cin * 9) as f32).sqrt();
        specs.push(Spec::new(
            format!("features.{i}.weight"),
            &[cout, cin, 3, 3],
            bound,
        ));
        specs.push(Spec::new(format!("features.{i}.bias"), &[cout], 0.01));
    }
    if classifier {
        for (i, din, dout) in [(0, 512 * 7 * 7, 4096), (3, 4096, 4096), (6, 4096, 1000)] {
            let bound = (3.0 / din as f32).sqrt();
            specs.push(Spec::new(
                format!("classifier.{i}.weight"),
                &[dout, din],
                bound,
            ));
            specs.push(Spec::new(format!("classifier.{i}.bias"), &[dout], 0.01));
        }
    }
    specs
}

/// The LPIPS v0.1 heads `lpips.lin{0..4}.weight` (non-negative, as trained ones are).
pub fn lpips_head_specs() -> Vec<Spec> {
    [64, 128, 256, 512, 512]
        .iter()
        .enumerate()
        .map(|(i, c)| Spec {
            positive: true,
            ..Spec::new(format!("lpips.lin{i}.weight"), &[1, *c, 1, 1], 0.1)
        })
        .collect()
}

/// Pickle opcodes of protocol 2 used below.
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, op: u8) -> &mut Self {
        self.0.push(op);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X'); // BINUNICODE
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, v: usize) -> &mut Self {
        let v = i32::try_from(v).expect("fits BININT");
        self.0.push(b'J'); // BININT
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn int_tuple(&mut self, values: &[usize]) -> &mut Self {
        self.op(b'(');
        for v in values {
            self.int(*v);
        }
        self.op(b't')
    }
}

/// Writes `specs` as a `torch.save` zip of an `OrderedDict` state dict, as torchvision's
/// `vgg16-397923af.pth` is laid out: `NAME/data.pkl`, `NAME/data/K` (one stored entry per
/// tensor), `NAME/byteorder`, `NAME/version`.
pub fn write_pth(path: &Path, specs: &[Spec]) {
    let root = path.file_stem().unwrap().to_str().unwrap().to_string();
    let mut p = Pickle(vec![0x80, 2]);
    p.global("collections", "OrderedDict").op(b')').op(b'R');
    p.op(b'(');
    for (key, spec) in specs.iter().enumerate() {
        p.string(&spec.name);
        p.global("torch._utils", "_rebuild_tensor_v2").op(b'(');
        // Persistent id: ('storage', torch.FloatStorage, key, location, numel).
        p.op(b'(')
            .string("storage")
            .global("torch", "FloatStorage")
            .string(&key.to_string())
            .string("cpu")
            .int(spec.numel())
            .op(b't')
            .op(b'Q'); // BINPERSID
        let mut strides = vec![1; spec.shape.len()];
        for d in (0..spec.shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * spec.shape[d + 1];
        }
        p.int(0).int_tuple(&spec.shape).int_tuple(&strides).op(0x89); // offset, size, stride, False
        p.global("collections", "OrderedDict").op(b')').op(b'R'); // backward hooks
        p.op(b't').op(b'R');
    }
    p.op(b'u').op(b'.'); // SETITEMS, STOP
    let file = BufWriter::new(File::create(path).unwrap());
    let mut zip = ZipWriter::new(file);
    let stored = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(true);
    zip.start_file(format!("{root}/data.pkl"), stored).unwrap();
    zip.write_all(&p.0).unwrap();
    zip.start_file(format!("{root}/byteorder"), stored).unwrap();
    zip.write_all(b"little").unwrap();
    for (key, spec) in specs.iter().enumerate() {
        zip.start_file(format!("{root}/data/{key}"), stored)
            .unwrap();
        zip.write_all(&spec.bytes(key as u64 + 1)).unwrap();
    }
    zip.start_file(format!("{root}/version"), stored).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap().flush().unwrap();
}

/// Writes `specs` as a safetensors file (f32).
pub fn write_safetensors(path: &Path, specs: &[Spec]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for spec in specs {
        let end = offset + spec.numel() * 4;
        header.insert(
            spec.name.clone(),
            serde_json::json!({"dtype": "F32", "shape": spec.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut f = BufWriter::new(File::create(path).unwrap());
    f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    for (key, spec) in specs.iter().enumerate() {
        f.write_all(&spec.bytes(key as u64 + 1)).unwrap();
    }
    f.flush().unwrap();
}
