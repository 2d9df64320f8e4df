//! ferroformer: build, pre-train, adapt and measure Transformer models.
//!
//! The modules follow a model's life, each layer importing only those below it:
//! - structure: [`nn`] (building blocks, fused kernels, the adapter hook) and [`models`]
//!   (the families, their registry, Hugging Face and GGUF loading, parameter accounting);
//! - data: [`text`] (tokenizers, chat templates) and [`data`] (corpora, token shards,
//!   instruction records, images, lexicons);
//! - adaptation: [`peft`] (one file per method) and [`objective`] (what is predicted: the
//!   losses and batch construction);
//! - training: [`train`] (one engine for every task) and [`tasks`] (one file per task);
//! - use: [`infer`] (generation, translation, classification, embeddings), [`eval`]
//!   (perplexity, few-shot, scores) and [`semnet`] (semantic networks).
//!
//! [`io`] and [`assets`] move weights and data in and out in the formats people already have.

pub mod assets;
pub mod data;
pub mod error;
pub mod eval;
pub mod infer;
pub mod io;
pub mod models;
pub mod nn;
pub mod objective;
pub mod peft;
pub mod plot;
pub mod rng;
pub mod semnet;
pub mod serve;
pub mod tasks;
pub mod text;
pub mod train;

pub use error::{Error, Result};
