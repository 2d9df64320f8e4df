//! Training objectives: what the model is asked to predict, and the loss that measures it.

pub mod clm;
pub mod mlm;
pub mod seq2seq;
pub mod sft;

pub use clm::{cross_entropy, CausalLm};
