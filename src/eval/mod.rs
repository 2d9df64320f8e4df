//! Evaluation of trained models.

pub mod choices;
pub mod perplexity;

pub use perplexity::{perplexity, PerplexityReport};
