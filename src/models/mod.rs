//! Whole architectures, one file per family. Each `Config` mirrors the Hugging Face
//! `config.json` and parameters carry Hugging Face key names, so model directories move between
//! ferroformer and transformers unchanged.

pub mod gpt2;

pub use gpt2::{Gpt2, Gpt2Config};
