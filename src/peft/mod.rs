//! Parameter-efficient fine-tuning: training part of a model while the rest stays fixed.

pub mod freeze;

pub use freeze::{frozen_names, FreezeSpec, TrainableCount};
