//! Parameter-efficient fine-tuning: training part of a model, or small adapters beside it,
//! while the rest stays fixed; adapters read and written as Hugging Face PEFT does.

pub mod adapter;
pub mod adapter_io;
pub mod config;
pub mod freeze;
pub mod registry;

pub use adapter::{Adapter, Adapters, Base};
pub use config::{BiasMode, PeftConfig, PeftType, Targets};
pub use freeze::{frozen_names, FreezeSpec, TrainableCount};
pub use registry::PeftRegistry;
