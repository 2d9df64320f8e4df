//! Text as models read it: tokenizers (trained here, loaded from `tokenizer.json`, rebuilt from
//! GGUF metadata) and chat templates (Hugging Face's Jinja templates, rendered with
//! minijinja).

pub mod chat;
pub mod gguf_vocab;
pub mod tokenizer;
pub mod train;
