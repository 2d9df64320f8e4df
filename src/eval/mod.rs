//! Evaluation of trained models.

pub mod choices;
pub mod few_shot;
pub mod perplexity;
pub mod prototypes;
pub mod seq2seq;
pub mod task;
pub mod task_data;

pub use perplexity::{perplexity, PerplexityReport};
