//! Command-line interface: one struct per subcommand; doc comments are the `--help` text.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

use crate::device::DeviceChoice;
use crate::pretrained::inception::{DEFAULT_WEIGHTS, InputRange};

/// SeQ-GAN: semantic-enhanced VQ tokenizers and generative transformers, in one binary.
#[derive(Parser, Debug)]
#[command(name = "seqgan", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Phase 1: train the VQ tokenizer (L1 + VQ + usage entropy + semantic perceptual loss + GAN).
    TrainTokenizer(TrainTokenizerArgs),
    /// Phase 2: freeze the phase-1 encoder and codebook, finetune an attention-enhanced decoder
    /// (L1 + low-level perceptual loss + GAN).
    FinetuneDecoder(FinetuneDecoderArgs),
    /// Encode and decode images with a tokenizer run; write input|reconstruction PNGs and PSNR.
    Reconstruct(ReconstructArgs),
    /// Encode a dataset once into a token file (codes + labels) for transformer training.
    Encode(EncodeArgs),
    /// Train a class-conditional MaskGIT or GPT transformer on a token file.
    TrainTransformer(TrainTransformerArgs),
    /// Generate images of chosen classes with a transformer and a decoder (PNGs, grid, .npz).
    Sample(SampleArgs),
    /// Teacher-forced GPT analysis: input | reconstruction | predicted tokens, token accuracy.
    Visualize(VisualizeArgs),
    /// Time training steps of a stage on a device and print img/s and peak memory.
    Bench(BenchArgs),
    /// FID Inception statistics (pool3 mean and covariance, float64) of an image set, saved as
    /// an .npz with `mu` and `sigma` (readable by pytorch-fid and the ADM evaluator).
    FidStats(FidStatsArgs),
    /// FID between two image sets (folders, .npz samples or statistics files), and the
    /// Inception Score of each image set when the weights have the fc layer.
    Fid(FidArgs),
    /// Reconstruction metrics of a trained tokenizer over validation images: PSNR, SSIM, LPIPS,
    /// rFID, codebook usage and perplexity (a table, and JSON).
    EvalTokenizer(EvalTokenizerArgs),
    /// Write IDX images + labels (MNIST / Fashion-MNIST format, .gz ok) as an ImageFolder.
    ImportIdx(ImportIdxArgs),
    /// Plot a run's metrics.jsonl (losses, codebook usage, lr, throughput) as a PNG.
    Plot(PlotArgs),
}

/// `--device`, shared by every command that computes.
#[derive(Args, Debug, Clone, Copy)]
pub struct DeviceArgs {
    /// Compute device: auto (CUDA if built in, else a hardware GPU via wgpu, else the CPU),
    /// wgpu, cuda or cpu. A resumed run defaults to the device kind it was trained on.
    #[arg(long = "device", value_enum, value_name = "DEVICE")]
    pub choice: Option<DeviceChoice>,
}

impl DeviceArgs {
    /// The flag, or `auto`.
    pub fn choice(&self) -> DeviceChoice {
        self.choice.unwrap_or_default()
    }
}

/// What every training command takes besides its inputs: overrides, resume, device.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Override a config value, e.g. `--set train.steps=1000` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Continue the run in this folder exactly where its last checkpoint left off (with
    /// `--set`, e.g. more steps).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Data-parallel replicas: indices of devices of the `--device` kind, comma-separated
    /// (`--device wgpu --devices 0,1,2,3`: four GPUs; an index may repeat to run several
    /// replicas on one device; `--device cpu --devices 0,1`: two CPU replicas). The global batch
    /// (train.batch_size x grad_accum) is split evenly; results do not depend on the count.
    #[arg(long, value_delimiter = ',', value_name = "I,J,...")]
    pub devices: Vec<usize>,
}

/// Arguments of `import-idx`.
#[derive(Args, Debug)]
pub struct ImportIdxArgs {
    /// IDX image file `[N, rows, cols]` (e.g. train-images-idx3-ubyte.gz).
    pub images: PathBuf,
    /// IDX label file `[N]` (e.g. train-labels-idx1-ubyte.gz).
    pub labels: PathBuf,
    /// Output folder; images go to `NN-classname/NNNNN.png`.
    #[arg(long)]
    pub out: PathBuf,
    /// Class names in label order: `fashion-mnist`, `digits`, or a comma list.
    #[arg(long, default_value = "digits")]
    pub classes: String,
    /// Import at most this many images.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// Arguments of `plot`.
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run folder (any stage) holding metrics.jsonl.
    pub run: PathBuf,
    /// Output PNG (default: RUN/curves.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The FID Inception network and how images are fed to it.
#[derive(Args, Debug)]
pub struct InceptionArgs {
    /// FID Inception weights: our safetensors (made by scripts/fetch-inception.sh; no fc layer)
    /// or pytorch-fid's pt_inception-2015-12-05-6726825d.pth (with the fc layer, adds the
    /// Inception Score).
    #[arg(long, visible_alias = "inception-weights", default_value = DEFAULT_WEIGHTS)]
    pub weights: PathBuf,
    /// Network input normalisation of [0, 1] images: `tf` = (u8 - 128)/128 (the TF graph's own,
    /// as the ADM evaluator feeds it) or `pytorch-fid` = 2x - 1.
    #[arg(long, value_enum, default_value_t = InputRange::Tf)]
    pub range: InputRange,
    /// Images per network forward.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Image decoding threads.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// How a folder of images is read for FID.
#[derive(Args, Debug)]
pub struct ImageSetArgs {
    /// Resize each folder image's shorter side to N and centre-crop NxN first (the data
    /// pipeline's evaluation transform); by default each image is used whole at its own size
    /// (and, like pytorch-fid, resized to 299x299). Required for `builtin:*` sets.
    #[arg(long, value_name = "N")]
    pub res: Option<usize>,
    /// Number of images of a `builtin:*` set.
    #[arg(long, default_value_t = 10000)]
    pub builtin_len: usize,
}

/// Arguments of `fid-stats`.
#[derive(Args, Debug)]
pub struct FidStatsArgs {
    /// Images: an ImageFolder (`root/<class>/<image>` or a flat folder), `builtin:shapes[:val]`,
    /// or an .npz whose `arr_0` is uint8 [N, H, W, 3] (the ADM evaluator's sample format).
    pub source: String,
    /// Output .npz (`mu` (2048,), `sigma` (2048, 2048) float64, `n`).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub images: ImageSetArgs,
    #[command(flatten)]
    pub inception: InceptionArgs,
}

/// Arguments of `fid`.
#[derive(Args, Debug)]
pub struct FidArgs {
    /// First set: an image folder, `builtin:*`, an .npz of samples (`arr_0`) or a statistics
    /// .npz (`mu`, `sigma`, e.g. from `fid-stats`, pytorch-fid or an ADM reference batch).
    pub a: String,
    /// Second set (same forms).
    pub b: String,
    #[command(flatten)]
    pub images: ImageSetArgs,
    #[command(flatten)]
    pub inception: InceptionArgs,
}

/// Arguments of `eval-tokenizer`.
#[derive(Args, Debug)]
pub struct EvalTokenizerArgs {
    /// Tokenizer run folder, phase 1 or phase 2 (its latest checkpoint is evaluated, with the
    /// EMA weights when the run kept them).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Validation images: an ImageFolder or `builtin:shapes:val`.
    #[arg(long)]
    pub data: String,
    /// Evaluate only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// VGG-16 weights with the LPIPS heads (made by scripts/fetch-vgg16.sh).
    #[arg(long, default_value = "weights/vgg16.safetensors")]
    pub vgg_weights: PathBuf,
    /// Metrics JSON to write (default: `<run>/eval-step-N.json`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub inception: InceptionArgs,
}

/// Arguments of `sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Transformer run folder (from `train-transformer`).
    #[arg(long)]
    pub transformer: PathBuf,
    /// Decoder: a phase-2 run (or the phase-1 run) sharing the transformer's encoder/codebook.
    #[arg(long)]
    pub decoder: PathBuf,
    /// Classes: an index, a class (folder) name, a comma list of them, or `all`.
    #[arg(long, default_value = "0")]
    pub class: String,
    /// Images per class.
    #[arg(long, default_value_t = 16)]
    pub num: usize,
    /// Images per device batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Random seed (the same seed gives the same images on the same device).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: class-C/NNN.png and grid.png.
    #[arg(long, default_value = "samples")]
    pub out: PathBuf,
    /// Also write all images to this .npz (uint8 NHWC `arr_0`, as FID tools read).
    #[arg(long)]
    pub npz: Option<PathBuf>,
    /// Classifier-free guidance scale s: logits = c + s (c - u) (0 = off).
    #[arg(long = "cfg", default_value_t = 0.0)]
    pub cfg_scale: f64,
    /// Sampling temperature of the token draws (0 = argmax).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// MaskGIT: decoding steps (default 12; 1 to the number of tokens per map).
    #[arg(long)]
    pub steps: Option<usize>,
    /// MaskGIT: Gumbel noise on the confidences at the first step, annealed to 0 (default 4.5).
    #[arg(long)]
    pub choice_temperature: Option<f64>,
    /// MaskGIT: how many tokens stay masked after each step (default cosine).
    #[arg(long, value_enum)]
    pub schedule: Option<crate::transformer::masking::MaskSchedule>,
    /// GPT: keep only the k most likely codes (1 to the codebook size).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// GPT: keep the smallest set of codes with total probability >= p (0 < p <= 1).
    #[arg(long)]
    pub top_p: Option<f64>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Arguments of `visualize`.
#[derive(Args, Debug)]
pub struct VisualizeArgs {
    /// A GPT run folder (from `train-transformer --arch gpt`).
    #[arg(long)]
    pub transformer: PathBuf,
    /// Tokenizer run (phase 1 or 2) sharing the transformer's encoder/codebook.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Images (default: the held-out split of builtin:shapes).
    #[arg(long, default_value = "builtin:shapes:val")]
    pub data: String,
    /// Output folder for NNNNN-name.png (input | reconstruction | prediction).
    #[arg(long, default_value = "visualize")]
    pub out: PathBuf,
    /// At most this many images.
    #[arg(long, default_value_t = 16)]
    pub limit: usize,
    /// Images per device batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Arguments of `encode`.
#[derive(Args, Debug)]
pub struct EncodeArgs {
    /// Tokenizer run folder (phase 1 or 2: both make the same tokens).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Images: an ImageFolder (`root/<class>/<image>`) or `builtin:shapes` (default: the run's
    /// training data).
    #[arg(long)]
    pub data: Option<String>,
    /// Token file to write.
    #[arg(long, default_value = "tokens.bin")]
    pub out: PathBuf,
    /// Also store each image's horizontally mirrored copy (doubles the entries).
    #[arg(long)]
    pub flip: bool,
    /// Accept a folder of images without class sub-folders (one class, label 0).
    #[arg(long)]
    pub single_class: bool,
    /// Replace `--out` if it exists (otherwise an error).
    #[arg(long)]
    pub overwrite: bool,
    /// Images per device batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Encode at most this many images (also the size of a built-in dataset).
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Arguments of `train-transformer`.
#[derive(Args, Debug)]
pub struct TrainTransformerArgs {
    /// Token file from `seqgan encode`.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub tokens: Option<PathBuf>,
    /// Architecture (overrides the config's `arch`).
    #[arg(long, value_enum)]
    pub arch: Option<crate::transformer::Arch>,
    /// Config preset (tiny, base, base-cfg, large, large-cfg) or a JSON config file.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Run folder to create.
    #[arg(long, default_value = "runs/transformer", conflicts_with = "resume")]
    pub out: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Arguments of `finetune-decoder`.
#[derive(Args, Debug)]
pub struct FinetuneDecoderArgs {
    /// Phase-1 run folder (from `train-tokenizer`) whose encoder and codebook are frozen.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub tokenizer: Option<PathBuf>,
    /// Phase-2 settings applied on top of the phase-1 config: a preset (phase2, phase2-tiny)
    /// or a JSON file naming only the keys to change.
    #[arg(long, default_value = "phase2")]
    pub config: String,
    /// Training images (default: the phase-1 run's data).
    #[arg(long)]
    pub data: Option<String>,
    /// Run folder to create.
    #[arg(long, default_value = "runs/decoder", conflicts_with = "resume")]
    pub out: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Arguments of `reconstruct`.
#[derive(Args, Debug)]
pub struct ReconstructArgs {
    /// Tokenizer run folder: phase 1 (`train-tokenizer`) or phase 2 (`finetune-decoder`).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Images: an ImageFolder or flat folder (default: the held-out split of a run trained
    /// on builtin:shapes).
    #[arg(long)]
    pub data: Option<String>,
    /// Output folder for NNNNN-name.png (input | reconstruction) and psnr.csv.
    #[arg(long, default_value = "reconstructions")]
    pub out: PathBuf,
    /// Images per device batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Reconstruct at most this many images.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Arguments of `train-tokenizer`.
#[derive(Args, Debug)]
pub struct TrainTokenizerArgs {
    /// Config preset (tiny, small, paper256) or a JSON config file.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Training images: an ImageFolder (`root/<class>/<image>`) or `builtin:shapes`.
    #[arg(long)]
    pub data: Option<String>,
    /// Run folder to create.
    #[arg(long, default_value = "runs/tokenizer", conflicts_with = "resume")]
    pub out: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Which stage `bench` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchStage {
    /// A full phase-1 training step (generator + discriminator, GAN and R1 on).
    Tokenizer,
    /// A full phase-2 training step (`--config` preset with the `phase2` patch applied).
    Decoder,
    /// A transformer training step on random tokens (`--transformer` preset, `--arch`).
    Transformer,
    /// Token sampling with an untrained transformer (`--transformer`, `--arch`, `--batch`;
    /// MaskGIT 12 steps, GPT with its KV cache).
    Sample,
    /// Forward + backward of the perceptual losses `L_sem` and `L_low` alone.
    Perceptual,
    /// Forward of the FID Inception network (299x299, `--batch` images).
    Inception,
    /// The device's measured float32 arithmetic peak (burn's throughput probe; GPU backends).
    Peak,
    /// Kernel micro-benchmarks: a `--res` x `--res` float32 matrix product, 3x3 "same"
    /// convolutions at the models' shapes (16-512 channels in = out, 4x4-32x32 maps, `--batch`
    /// images; burn-flex's too at 128 channels), forward and forward + backward, and attention
    /// (compare with `bench/pytorch_reference.py --stage kernels`).
    Kernels,
}

/// `CHANNELSxSIDE` of `bench --conv-shapes`.
fn parse_conv_shape(s: &str) -> Result<(usize, usize), String> {
    let parse = |v: &str| v.parse::<usize>().ok().filter(|&n| n > 0);
    match s.split_once('x').map(|(c, n)| (parse(c), parse(n))) {
        Some((Some(c), Some(n))) => Ok((c, n)),
        _ => Err(format!("expected CHANNELSxSIDE such as 128x32, got {s:?}")),
    }
}

/// Arguments of `bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Stage to time.
    #[arg(long, value_enum, default_value_t = BenchStage::Tokenizer)]
    pub stage: BenchStage,
    /// Config preset or JSON file (tokenizer stage; its perceptual.weights is used by both).
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Override a value of the stage's config (the tokenizer's, or the transformer's for the
    /// transformer and sample stages; repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Image side for the perceptual stage.
    #[arg(long, default_value_t = 64)]
    pub res: usize,
    /// Batch size for the perceptual, transformer and inception stages.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Transformer stage: preset (tiny, base, large) or JSON file.
    #[arg(long, default_value = "tiny")]
    pub transformer: String,
    /// Transformer stage: architecture.
    #[arg(long, value_enum, default_value_t = crate::transformer::Arch::Maskgit)]
    pub arch: crate::transformer::Arch,
    /// Transformer stage: token grid side, codebook size and classes of the synthetic tokens.
    #[arg(long, num_args = 3, value_names = ["SIDE", "CODES", "CLASSES"], default_values_t = [16, 1024, 1000])]
    pub tokens: Vec<usize>,
    /// Kernels stage: the 3x3 "same" convolutions to time, as CHANNELSxSIDE (channels in =
    /// out, square maps; default: the tiny configs' and VGG-16's layers, e.g. 128x32,64x8).
    #[arg(long, value_delimiter = ',', value_name = "CxS,...", value_parser = parse_conv_shape)]
    pub conv_shapes: Vec<(usize, usize)>,
    /// FID Inception weights for the inception stage.
    #[arg(long, default_value = DEFAULT_WEIGHTS)]
    pub inception_weights: PathBuf,
    /// Data-parallel replicas for the tokenizer, decoder and transformer stages: device
    /// indices of the `--device` kind (as `train-tokenizer --devices`).
    #[arg(long, value_delimiter = ',', value_name = "I,J,...")]
    pub devices: Vec<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
}
