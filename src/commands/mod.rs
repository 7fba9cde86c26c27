//! One handler per subcommand, one style for all: `fn(&Args) -> Result<()>` resolves the
//! inputs (checking config and data before opening a device), calls the stage or the work
//! function, and reports.

pub mod bench;
pub mod encode;
pub mod eval;
pub mod flops;
pub mod reconstruct;
pub mod sample;
pub mod tools;
pub mod train;

use anyhow::Result;

use crate::cli::Command;

/// Runs a parsed subcommand.
pub fn run(command: &Command) -> Result<()> {
    match command {
        Command::TrainTokenizer(a) => train::train_tokenizer(a),
        Command::FinetuneDecoder(a) => train::finetune_decoder(a),
        Command::TrainTransformer(a) => train::train_transformer(a),
        Command::Reconstruct(a) => reconstruct::run(a),
        Command::Encode(a) => encode::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Visualize(a) => sample::run_visualize(a),
        Command::Bench(a) => bench::run(a),
        Command::FidStats(a) => eval::fid_stats(a),
        Command::Fid(a) => eval::fid(a),
        Command::EvalTokenizer(a) => eval::eval_tokenizer_cmd(a),
        Command::ImportIdx(a) => tools::import_idx(a),
        Command::Plot(a) => tools::plot(a),
    }
}
