//! Building blocks of Transformer models, each a small type that holds its parameters and a
//! `forward` built only from operations with a backward pass (so every block trains).

pub mod adapter;
pub mod attention;
pub mod block;
pub mod checkpoint;
pub mod dropout;
pub mod embedding;
pub mod encoder;
pub mod feed_forward;
pub mod kernels;
pub mod linear;
pub mod norm;
pub mod position;
pub mod rope;
pub mod rotary_attention;
pub mod store;
pub mod virtual_tokens;

/// The plain (differentiable) softmax and log-softmax, beside the fused kernels.
pub use kernels::ops;

pub use adapter::{Base, LinearAdapter, LinearSite};
pub use attention::{
    grouped_attention, layer_prefix, CausalSelfAttention, KvCache, MultiHeadAttention, Prefix,
    Segments,
};
pub use block::DecoderBlock;
pub use dropout::Dropout;
pub use embedding::{Embedding, TokenEmbedding};
pub use encoder::{EncoderLayer, EncoderLayerConfig, EncoderLayerNames};
pub use feed_forward::{Activation, FeedForward, GateUp, GatedMlp};
pub use linear::{Linear, Projection, QuantWeights, QuantizedWeight};
pub use norm::{LayerNorm, RmsNorm};
pub use position::{
    sinusoidal_encoding, sinusoidal_table, LearnedPosition, PositionEncoding, SinusoidLayout,
};
pub use rope::{Rope, RopeScaling};
pub use rotary_attention::{Qkv, RotaryAttention};
pub use store::{AdapterHook, Init, ParamStore, TrainableCount};
pub use virtual_tokens::VirtualTokens;
