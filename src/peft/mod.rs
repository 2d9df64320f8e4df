//! Parameter-efficient fine-tuning: training part of a model, or small adapters beside it,
//! while the rest stays fixed; adapters read and written as Hugging Face PEFT does. One file
//! per method (as PEFT's tuners): `lora` (with DoRA and rsLoRA), `ia3`, `ln_tuning`,
//! `prompt_tuning`, `prefix_tuning`, each owning its options' checks, its tensors and their
//! initialisation, its forward and its merge; `registry` lists them and is the parameter
//! store's adapter hook ([`crate::nn::adapter`]), so no layer and no model names a method.

pub mod adapter;
pub mod adapter_io;
pub mod config;
pub mod freeze;
pub mod ia3;
pub mod keys;
pub mod ln_tuning;
pub mod lora;
pub mod method;
pub mod prefix_tuning;
pub mod prompt_tuning;
pub mod registry;

pub use adapter::{Adapters, LayerAdapter};
pub use config::{BiasMode, PeftConfig, PeftType, Targets};
pub use freeze::{frozen_names, FreezeSpec, TrainableCount};
pub use method::Method;
pub use registry::PeftRegistry;
