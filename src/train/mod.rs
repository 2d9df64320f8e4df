//! The training engine, written once for every objective: optimizer, schedule, clipping,
//! accumulation, evaluation, checkpoints and resume, metrics and plots.

pub mod checkpoint;
pub mod cross_validation;
pub mod engine;
pub mod metrics;
pub mod optimizer;
pub mod recipe;
pub mod schedule;
pub mod task;

pub use engine::{Outcome, Prepared, RunStart, Trainer};
pub use optimizer::{AdamW, AdamWConfig, GradAccumulator, Grads};
pub use recipe::Recipe;
pub use schedule::LrSchedule;
pub use task::Task;
