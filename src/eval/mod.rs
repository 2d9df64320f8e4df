//! Evaluation of trained models.

pub mod choices;
pub mod fewshot;
pub mod perplexity;
pub mod prototypes;
pub mod task;

pub use perplexity::{perplexity, PerplexityReport};
