//! ferroformer: build, pre-train, adapt and measure Transformer models.
//!
//! The modules follow a model's life: [`nn`] and [`models`] (structure), [`tokenizer`] and
//! [`data`] (data), [`objective`] (what is predicted), [`train`] (one engine for every
//! objective) and [`generate`], [`chat`], [`eval`], [`params`] (use). [`io`], [`pretrained`] and [`assets`] move
//! weights and data in and out in the formats people already have.

pub mod assets;
pub mod chat;
pub mod classify;
pub mod data;
pub mod embed;
pub mod error;
pub mod eval;
pub mod fill_mask;
pub mod generate;
pub mod io;
pub mod models;
pub mod nn;
pub mod objective;
pub mod params;
pub mod peft;
pub mod pretrained;
pub mod rng;
pub mod semnet;
pub mod tasks;
pub mod tokenizer;
pub mod train;
pub mod translate;

pub use error::{Error, Result};
