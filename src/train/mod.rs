//! Training loops and their shared pieces.

pub mod bench;
pub mod checkpoint;
pub mod decoder;
pub mod ema;
pub mod gan;
pub mod metrics;
pub mod progress;
pub mod r1;
pub mod tokenizer;
pub mod transformer;
