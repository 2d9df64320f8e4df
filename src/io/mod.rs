//! Files in and out: atomic writes, safetensors, Hugging Face model directories.

pub mod atomic;
pub mod gguf;
pub mod safetensors;

pub use atomic::{read_json, write_atomic, write_json_atomic};
