//! BERT (Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers for
//! Language Understanding"): word, position and token-type embeddings, a stack of post-norm
//! encoder layers that read the whole input at once (padding masked out), an optional pooler
//! and the masked-language-model head with its decoder tied to the word embeddings. Weight
//! names and `config.json` are those of transformers' `BertModel` / `BertForMaskedLM`, so
//! BERT-family directories (all-MiniLM-L6-v2, bert-base, ...) load unchanged.

use super::family::{Family, Kind, PeftDefaults};
use crate::nn::{
    Activation, Dropout, Embedding, EncoderLayer, EncoderLayerConfig, EncoderLayerNames, Init,
    LayerNorm, Linear, ParamStore, Projection,
};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The BERT family.
pub static FAMILY: Family = Family {
    name: "bert",
    model_types: &["bert"],
    kind: Kind::Encoder,
    hf_class: "BertModel",
    sequence_classification: Some("BertForSequenceClassification"),
    peft: PeftDefaults {
        lora: &["query", "value"],
        ia3: &["key", "value", "output.dense"],
        ia3_feedforward: &["output.dense"],
        ln_tuning: &["LayerNorm", "layernorm"],
    },
    no_decay: &[
        "word_embeddings",
        "position_embeddings",
        "token_type_embeddings",
    ],
    causal: None,
};

fn d_bert() -> String {
    "bert".into()
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_drop() -> f64 {
    0.1
}
fn d_eps() -> f64 {
    1e-12
}
fn d_range() -> f64 {
    0.02
}
fn d_types() -> usize {
    2
}
fn d_positions() -> usize {
    512
}
fn d_absolute() -> String {
    "absolute".into()
}

/// `config.json` of a BERT model, with transformers' names and defaults; other keys are kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    #[serde(default = "d_bert")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_drop")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d_drop")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_types")]
    pub type_vocab_size: usize,
    #[serde(default = "d_range")]
    pub initializer_range: f64,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_absolute")]
    pub position_embedding_type: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl BertConfig {
    pub fn validate(&self) -> Result<()> {
        super::hf::check_encoder_sizes(
            &self.model_type,
            &FAMILY,
            &[
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("num_attention_heads", self.num_attention_heads),
                ("intermediate_size", self.intermediate_size),
                ("max_position_embeddings", self.max_position_embeddings),
                ("type_vocab_size", self.type_vocab_size),
            ],
            self.hidden_size,
            self.num_attention_heads,
        )?;
        if self.position_embedding_type != "absolute" {
            return Err(Error::Config(format!(
                "position_embedding_type {:?} is not supported (supported: absolute)",
                self.position_embedding_type
            )));
        }
        Activation::from_hf(&self.hidden_act)?;
        Dropout::new(self.hidden_dropout_prob)?;
        Dropout::new(self.attention_probs_dropout_prob)?;
        Ok(())
    }

    /// Reads `config.json`, naming the file in any error.
    pub fn load(path: &Path) -> Result<Self> {
        super::hf::read_config(path, Self::validate)
    }

    /// The JSON transformers reads; `architectures` says whether the MLM head is there.
    pub fn to_json(&self, mlm: bool) -> serde_json::Value {
        let arch = if mlm { "BertForMaskedLM" } else { "BertModel" };
        let mut v = super::hf::config_json(self, arch, true);
        // Our MLM decoder is always the word embeddings; say so rather than rely on the default.
        if mlm {
            v["tie_word_embeddings"] = serde_json::json!(true);
        }
        v
    }
}

/// The masked-language-model head: `dense -> act -> LayerNorm`, then the decoder (the word
/// embedding matrix) plus a bias.
#[derive(Clone, Debug)]
pub struct MlmHead {
    pub dense: Projection,
    pub norm: LayerNorm,
    pub act: Activation,
    /// `[vocab, hidden]`: the word embeddings (tied).
    pub decoder: Tensor,
    pub bias: Tensor,
}

/// Which heads a BERT model carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BertHeads {
    pub pooler: bool,
    pub mlm: bool,
}

/// A BERT encoder with its optional pooler and MLM head.
pub struct Bert {
    pub config: BertConfig,
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub embeddings_norm: LayerNorm,
    pub embeddings_dropout: Dropout,
    pub layers: Vec<EncoderLayer>,
    /// `tanh(dense(h[CLS]))`.
    pub pooler: Option<Projection>,
    pub mlm: Option<MlmHead>,
}

impl Bert {
    /// Builds the model from `store` (initialising what it does not hold, if it may).
    pub fn new(config: &BertConfig, store: &mut ParamStore, heads: BertHeads) -> Result<Self> {
        config.validate()?;
        let c = config;
        let std = c.initializer_range;
        let hs = c.hidden_size;
        let ln =
            |store: &mut ParamStore, p: &str| LayerNorm::new(store, p, hs, c.layer_norm_eps, true);
        let act = Activation::from_hf(&c.hidden_act)?;
        let hidden_dropout = Dropout::new(c.hidden_dropout_prob)?;
        let word_embeddings = Embedding::new(
            store,
            "bert.embeddings.word_embeddings.weight",
            c.vocab_size,
            hs,
            std,
        )?;
        let position_embeddings = Embedding::new(
            store,
            "bert.embeddings.position_embeddings.weight",
            c.max_position_embeddings,
            hs,
            std,
        )?;
        let token_type_embeddings = Embedding::new(
            store,
            "bert.embeddings.token_type_embeddings.weight",
            c.type_vocab_size,
            hs,
            std,
        )?;
        let embeddings_norm = ln(store, "bert.embeddings.LayerNorm")?;
        let layer = EncoderLayerConfig {
            hidden: hs,
            heads: c.num_attention_heads,
            intermediate: c.intermediate_size,
            act,
            eps: c.layer_norm_eps,
            attention_dropout: c.attention_probs_dropout_prob,
            hidden_dropout: c.hidden_dropout_prob,
            activation_dropout: 0.0,
            std,
            pre_norm: false,
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let names = EncoderLayerNames::bert(&format!("bert.encoder.layer.{i}"));
                EncoderLayer::new(store, &names, &layer)
            })
            .collect::<Result<Vec<_>>>()?;
        let pooler = if heads.pooler {
            Some(Projection::linear(
                store,
                "bert.pooler.dense",
                hs,
                hs,
                true,
                std,
            )?)
        } else {
            None
        };
        let mlm = if heads.mlm {
            Some(MlmHead {
                dense: Projection::linear(
                    store,
                    "cls.predictions.transform.dense",
                    hs,
                    hs,
                    true,
                    std,
                )?,
                norm: ln(store, "cls.predictions.transform.LayerNorm")?,
                act,
                decoder: word_embeddings.weight.clone(),
                bias: store.get("cls.predictions.bias", &[c.vocab_size], Init::Zeros)?,
            })
        } else {
            None
        };
        Ok(Bert {
            config: c.clone(),
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embeddings_norm,
            embeddings_dropout: hidden_dropout,
            layers,
            pooler,
            mlm,
        })
    }

    /// A freshly initialised model and its parameter store.
    pub fn init(
        config: &BertConfig,
        heads: BertHeads,
        device: &Device,
        seed: u64,
    ) -> Result<(Self, ParamStore)> {
        super::hf::init(device, seed, |s| Bert::new(config, s, heads))
    }

    pub fn device(&self) -> &Device {
        self.word_embeddings.weight.device()
    }

    /// The additive attention mask `[b, 1, 1, t]` of a `[b, t]` 0/1 mask (transformers uses
    /// the dtype's minimum for padding, so padded keys get exactly zero probability).
    pub fn additive_mask(attention_mask: &Tensor) -> Result<Tensor> {
        let m = attention_mask.to_dtype(DType::F32)?;
        let (b, t) = m.dims2()?;
        Ok(((1.0 - m)? * f32::MIN as f64)?.reshape((b, 1, 1, t))?)
    }

    /// Hidden states `[b, t, hidden]` for token ids `[b, t]` (u32), with optional token types
    /// `[b, t]` and a 0/1 attention mask `[b, t]` (1 for tokens, 0 for padding). `rng` enables
    /// dropout.
    pub fn forward(
        &self,
        ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        self.run(ids, token_type_ids, attention_mask, rng, false)
    }

    /// As [`Bert::forward`] without a backward pass: each layer's output is detached, so the
    /// intermediate tensors of a layer are freed as soon as the next one starts (the weights
    /// are variables, and every result would otherwise keep its inputs alive for backward:
    /// measured 5.3 GB peak for batches of 32 x 256 tokens on MiniLM).
    pub fn encode(
        &self,
        ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.run(ids, token_type_ids, attention_mask, None, true)
    }

    fn run(
        &self,
        ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        mut rng: Option<&mut Rng>,
        detach: bool,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.config.max_position_embeddings {
            return Err(Error::Config(format!(
                "{t} tokens exceed the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let words = self.word_embeddings.forward(ids)?;
        let pos_ids = Tensor::arange(0u32, t as u32, ids.device())?;
        let pos = self.position_embeddings.forward(&pos_ids)?;
        let types = match token_type_ids {
            Some(tt) => self
                .token_type_embeddings
                .forward(&tt.to_dtype(DType::U32)?)?,
            None => self.token_type_embeddings.forward(&Tensor::zeros(
                (b, t),
                DType::U32,
                ids.device(),
            )?)?,
        };
        let x = words.broadcast_add(&pos)?.add(&types)?;
        let mut x = self.embeddings_norm.forward(&x)?;
        x = self.embeddings_dropout.forward(&x, rng.as_deref_mut())?;
        let mask = attention_mask.map(Self::additive_mask).transpose()?;
        for layer in &self.layers {
            let (l, mask) = (layer.clone(), mask.clone());
            x = crate::nn::checkpoint::layer(&[&x], rng.as_deref_mut(), move |xs, rng| {
                l.forward(&xs[0], mask.as_ref(), rng)
            })?;
            if detach {
                x = x.detach();
            }
        }
        Ok(x)
    }

    /// The pooler's output `[b, hidden]`: `tanh(dense(h[:, 0]))`.
    pub fn pool(&self, hidden: &Tensor) -> Result<Tensor> {
        let p = self
            .pooler
            .as_ref()
            .ok_or_else(|| Error::Config("this model has no pooler".into()))?;
        Ok(p.forward(&hidden.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?)
    }

    /// MLM logits `[.., vocab]` of hidden states `[.., hidden]`.
    pub fn mlm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self.mlm.as_ref().ok_or_else(|| {
            Error::Config("this model has no masked-LM head (cls.predictions)".into())
        })?;
        let h = head
            .norm
            .forward(&head.act.forward(&head.dense.forward(hidden)?)?)?;
        Linear::plain(head.decoder.clone(), Some(head.bias.clone()), false).forward(&h)
    }
}

/// Maps the key variants of BERT checkpoints onto ours: a bare `BertModel` lacks the `bert.`
/// prefix; a tied MLM decoder may be saved (`cls.predictions.decoder.weight` equals the word
/// embeddings, `.decoder.bias` equals `cls.predictions.bias`); older files carry
/// `position_ids` buffers and the next-sentence head.
pub(crate) fn normalize_keys(tensors: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tensors
        .into_iter()
        .filter(|(k, _)| {
            !(k.ends_with("position_ids")
                || k == "cls.predictions.decoder.weight"
                || k == "cls.predictions.decoder.bias"
                || k.starts_with("cls.seq_relationship"))
        })
        .map(|(k, t)| {
            // `classifier.*` is a sequence-classification head, outside the encoder.
            if k.starts_with("bert.") || k.starts_with("cls.") || k.starts_with("classifier.") {
                (k, t)
            } else {
                (format!("bert.{k}"), t)
            }
        })
        .collect()
}

/// Loads a Hugging Face BERT directory; the heads present in the weights are built.
pub fn load_dir(dir: &Path, device: &Device) -> Result<(Bert, ParamStore)> {
    load(dir, device, None)
}

/// Loads a BERT directory to (continue) masked-LM training: when the weights have no MLM head
/// (a bare `BertModel` such as all-MiniLM-L6-v2), a fresh one is initialised from `seed`.
pub fn load_dir_for_mlm(dir: &Path, device: &Device, seed: u64) -> Result<(Bert, ParamStore)> {
    load(dir, device, Some(seed))
}

fn load(dir: &Path, device: &Device, init_mlm: Option<u64>) -> Result<(Bert, ParamStore)> {
    let d = super::hf::ModelDir::open(dir)?;
    let config: BertConfig = d.parse_config(BertConfig::validate)?;
    let mut w = d.weights(device)?;
    w.tensors = normalize_keys(w.tensors);
    let has_mlm = w.tensors.contains_key("cls.predictions.bias");
    let heads = BertHeads {
        pooler: w.tensors.contains_key("bert.pooler.dense.weight"),
        mlm: has_mlm || init_mlm.is_some(),
    };
    d.build(w, device, |store| {
        if let (Some(seed), false) = (init_mlm, has_mlm) {
            // Only the head may be missing: everything else is checked against the file first.
            let body = BertHeads {
                mlm: false,
                ..heads
            };
            Bert::new(&config, store, body)?;
            store.allow_init(seed);
        }
        Bert::new(&config, store, heads)
    })
}

/// Parameter names and shapes, without allocating.
pub fn param_shapes(config: &BertConfig, heads: BertHeads) -> Result<BTreeMap<String, Vec<usize>>> {
    super::hf::param_shapes(|s| Bert::new(config, s, heads).map(|_| ()))
}

/// Saves `config.json` and `model.safetensors` (keys with the `bert.` prefix, which both
/// `BertModel` and `BertForMaskedLM` load).
pub fn save_dir(dir: &Path, model: &Bert, store: &ParamStore) -> Result<()> {
    super::hf::save_dir(dir, &model.config.to_json(model.mlm.is_some()), store)
}

/// Mean of the hidden states `[b, t, c]` over the tokens where `mask` `[b, t]` is 1.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    let sum = hidden.broadcast_mul(&m)?.sum(1)?;
    // sentence-transformers clamps the count at 1e-9.
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    Ok(sum.broadcast_div(&count)?)
}

/// Rows scaled to unit L2 norm (sentence-transformers' `Normalize`: eps 1e-12).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&n)?)
}
