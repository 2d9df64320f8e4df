//! Evaluation of trained models.

pub mod choices;
pub mod fewshot;
pub mod task;
pub mod perplexity;
pub mod prototypes;

pub use perplexity::{perplexity, PerplexityReport};
