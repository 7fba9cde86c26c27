//! Run plumbing, the bottom layer: run folders (one writer each) and the checkpoint store,
//! metrics records, progress, curves, stop signals, and the one training driver every stage
//! runs under.

pub mod checkpoint;
pub mod curves;
pub mod dir;
pub mod driver;
pub mod lock;
pub mod metrics;
pub mod progress;
pub mod replicas;
pub mod signals;

pub use checkpoint::TrainState;
pub use dir::RunDir;
pub use driver::{Checkpointed, Schedule, Stage};
pub use lock::RunLock;
pub use progress::Progress;
pub use replicas::Replicas;
