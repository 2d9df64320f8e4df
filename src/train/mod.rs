//! The training engine, written once for every objective: optimizer, schedule, clipping,
//! accumulation, evaluation, checkpoints and resume, metrics and plots.

pub mod optimizer;
pub mod schedule;

pub use optimizer::{AdamW, AdamWConfig, GradAccumulator};
pub use schedule::LrSchedule;
