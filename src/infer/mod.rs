//! Using models: a pretrained causal LM with its tokenizer, special tokens and chat template
//! ([`pretrained`]), generation (sampling, streaming, the KV cache), translation (greedy,
//! beam, ensembles), classification (texts and images), sentence embeddings, fill-mask.

pub mod classify;
pub mod decode;
pub mod embed;
pub mod fill_mask;
pub mod generate;
pub mod gguf_export;
pub mod pretrained;
pub mod rescore;
pub mod translate;
