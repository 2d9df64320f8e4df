//! Evaluation of trained models.

pub mod choices;
pub mod few_shot;
pub mod perplexity;
pub mod prototypes;
pub mod task;

pub use perplexity::{perplexity, PerplexityReport};
