//! Evaluation of trained models.

pub mod perplexity;

pub use perplexity::{perplexity, PerplexityReport};
