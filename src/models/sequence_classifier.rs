//! Sequence classification: one class for a whole text, as transformers'
//! `*ForSequenceClassification` computes it, so directories move both ways.
//!
//! - An encoder (`BertForSequenceClassification`) pools its hidden states, then dropout and a
//!   linear `classifier` give the class logits. Pooling is `cls` (transformers: the pooler's
//!   `tanh(dense(h[CLS]))`) or `mean` (sentence-transformers' mean over the real tokens; ours,
//!   recorded as `classifier_pooling` in `config.json`, which transformers ignores).
//! - A decoder (`GPT2ForSequenceClassification`, `LlamaForSequenceClassification`) reads the
//!   hidden state of the last real token through a bias-free `score` projection. We find that
//!   token from the attention mask; transformers takes the last id that is not
//!   `pad_token_id`, which is the same for right-padded batches.

use crate::models::bert::{self, Bert, BertConfig, BertHeads};
use crate::models::{hf, registry, ArchConfig, CausalModel, Family, Kind};
use crate::nn::{Dropout, Linear, ParamStore};
use crate::rng::Rng;
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::path::Path;

/// How the hidden states of a text become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The `[CLS]` token through BERT's pooler.
    Cls,
    /// The mean over the real (not padding) tokens.
    Mean,
    /// The last real token (decoders).
    Last,
}

impl Pooling {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            "last" => Ok(Pooling::Last),
            other => Err(Error::Config(format!(
                "pooling {other:?} is not known (cls, mean or last)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Last => "last",
        }
    }
}

/// The network under the classification head.
pub enum Body {
    Bert(Box<Bert>),
    Causal(CausalModel),
}

/// A text classifier: body, pooling, dropout and the linear head.
pub struct SequenceClassifier {
    pub body: Body,
    /// `classifier` (BERT, with bias) or `score` (decoders, no bias): `[labels, hidden]`.
    pub head: Linear,
    pub pooling: Pooling,
    pub dropout: Dropout,
    /// Class names in index order.
    pub labels: Vec<String>,
    /// The body's `config.json`, rewritten with the head's fields on save.
    pub config: Value,
}

/// The class names of a `config.json`'s `id2label` in index order, if it has one.
pub fn config_labels(config: &Value) -> Result<Option<Vec<String>>> {
    let Some(map) = config.get("id2label").and_then(Value::as_object) else {
        return Ok(None);
    };
    (0..map.len())
        .map(|i| {
            map.get(&i.to_string())
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "id2label has {} entries but none for class {i}",
                        map.len()
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The family of `config`, which must be able to classify text.
fn family(config: &Value) -> Result<&'static Family> {
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Config("no \"model_type\" in the model config".into()))?;
    let f = registry::by_model_type(model_type)?;
    if f.sequence_classification.is_none() {
        let able: Vec<&str> = registry::FAMILIES
            .iter()
            .filter(|f| f.sequence_classification.is_some())
            .map(|f| f.name)
            .collect();
        return Err(Error::Config(format!(
            "model_type {model_type:?} cannot classify text ({})",
            able.join(", ")
        )));
    }
    Ok(f)
}

/// A decoder's config with the output projection tied, so building it asks for no `lm_head`
/// (a classifier has none; the projection is never used).
fn headless(config: &Value) -> Result<ArchConfig> {
    let mut c = ArchConfig::from_json(config.clone())?;
    c.set_tie_word_embeddings(true);
    Ok(c)
}

/// The body of `config` from `store`; a BERT gets its pooler when `pooler`.
fn build_body(config: &Value, store: &mut ParamStore, pooler: bool) -> Result<Body> {
    if family(config)?.kind == Kind::Causal {
        return Ok(Body::Causal(CausalModel::new(&headless(config)?, store)?));
    }
    let c: BertConfig = serde_json::from_value(config.clone())
        .map_err(|e| Error::Config(format!("invalid bert config: {e}")))?;
    let heads = BertHeads { pooler, mlm: false };
    Ok(Body::Bert(Box::new(Bert::new(&c, store, heads)?)))
}

impl SequenceClassifier {
    /// Builds the classifier for `labels` from `store` (which may initialise what it lacks).
    /// A BERT body carries its pooler when `pooler` (always with `cls` pooling; with `mean`
    /// only to keep a checkpoint's pooler weights).
    pub fn new(
        config: &Value,
        store: &mut ParamStore,
        labels: &[String],
        pooling: Pooling,
        pooler: bool,
    ) -> Result<Self> {
        if labels.len() < 2 {
            return Err(Error::Config(format!(
                "a classifier needs at least 2 classes, got {}",
                labels.len()
            )));
        }
        let n = labels.len();
        let std = config
            .get("initializer_range")
            .and_then(Value::as_f64)
            .unwrap_or(0.02);
        let body = build_body(config, store, pooler || pooling == Pooling::Cls)?;
        let (head, dropout) = match &body {
            Body::Bert(b) => {
                if pooling == Pooling::Last {
                    return Err(Error::Config(
                        "an encoder pools with cls or mean, not last".into(),
                    ));
                }
                let c = &b.config;
                let head = Linear::new(store, "classifier", c.hidden_size, n, true, std)?;
                let p = config
                    .get("classifier_dropout")
                    .and_then(Value::as_f64)
                    .unwrap_or(c.hidden_dropout_prob);
                (head, Dropout::new(p)?)
            }
            Body::Causal(m) => {
                if pooling != Pooling::Last {
                    return Err(Error::Config(format!(
                        "a decoder classifies from its last token (pooling last), not {}",
                        pooling.name()
                    )));
                }
                let hidden = m.config().hidden_size();
                let head = Linear::new(store, "score", hidden, n, false, std)?;
                (head, Dropout::new(0.0)?)
            }
        };
        Ok(SequenceClassifier {
            body,
            head,
            pooling,
            dropout,
            labels: labels.to_vec(),
            config: config.clone(),
        })
    }

    /// Whether a BERT body carries its pooler.
    pub fn has_pooler(&self) -> bool {
        matches!(&self.body, Body::Bert(b) if b.pooler.is_some())
    }

    /// The same classifier built again from `store` (after freezing).
    pub fn rebuild(&self, store: &mut ParamStore) -> Result<Self> {
        Self::new(
            &self.config,
            store,
            &self.labels,
            self.pooling,
            self.has_pooler(),
        )
    }

    pub fn device(&self) -> &Device {
        self.head.weight.device()
    }

    pub fn max_positions(&self) -> usize {
        match &self.body {
            Body::Bert(b) => b.config.max_position_embeddings,
            Body::Causal(m) => m.max_positions(),
        }
    }

    pub fn uses_dropout(&self) -> bool {
        self.dropout.p > 0.0
            || match &self.body {
                Body::Bert(b) => {
                    b.config.hidden_dropout_prob > 0.0
                        || b.config.attention_probs_dropout_prob > 0.0
                }
                Body::Causal(m) => m.uses_dropout(),
            }
    }

    /// Token ids of `text` as the model reads it: `[CLS] ... [SEP]` for BERT, the plain
    /// tokens for decoders; cut to `max_len` tokens (BERT keeps its final `[SEP]`).
    pub fn encode(&self, tokenizer: &Tokenizer, text: &str, max_len: usize) -> Result<Vec<u32>> {
        let max_len = max_len.min(self.max_positions()).max(2);
        let mut ids = match self.body {
            Body::Bert(_) => tokenizer.encode_special(text)?,
            Body::Causal(_) => tokenizer.encode(text)?,
        };
        if ids.is_empty() {
            return Err(Error::Data(format!("{text:?} has no tokens")));
        }
        if ids.len() > max_len {
            let last = *ids.last().expect("not empty");
            ids.truncate(max_len);
            if matches!(self.body, Body::Bert(_)) {
                ids[max_len - 1] = last;
            }
        }
        Ok(ids)
    }

    /// Right-padded ids `[b, t]` and the 0/1 mask of `texts` (token ids).
    pub fn pad(&self, texts: &[&[u32]]) -> Result<(Tensor, Tensor)> {
        let t = texts.iter().map(|x| x.len()).max().unwrap_or(0).max(1);
        let pad = self
            .config
            .get("pad_token_id")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32;
        let mut ids = Vec::with_capacity(texts.len() * t);
        let mut mask = Vec::with_capacity(texts.len() * t);
        for x in texts {
            ids.extend_from_slice(x);
            ids.extend(std::iter::repeat_n(pad, t - x.len()));
            mask.extend(std::iter::repeat_n(1u32, x.len()));
            mask.extend(std::iter::repeat_n(0u32, t - x.len()));
        }
        let d = self.device();
        Ok((
            Tensor::from_vec(ids, (texts.len(), t), d)?,
            Tensor::from_vec(mask, (texts.len(), t), d)?,
        ))
    }

    /// Class logits `[b, labels]` of right-padded ids `[b, t]` with their 0/1 mask; `rng`
    /// enables dropout.
    pub fn logits(&self, ids: &Tensor, mask: &Tensor, mut rng: Option<&mut Rng>) -> Result<Tensor> {
        let pooled = match &self.body {
            Body::Bert(b) => {
                let h = b.forward(ids, None, Some(mask), rng.as_deref_mut())?;
                match self.pooling {
                    Pooling::Cls => b.pool(&h)?,
                    _ => bert::mean_pool(&h, mask)?,
                }
            }
            Body::Causal(m) => {
                // Right padding never reaches a real token through causal attention.
                let h = m.hidden(ids, None, rng.as_deref_mut())?;
                let (b, t, c) = h.dims3()?;
                let lengths: Vec<u32> = mask.to_dtype(DType::U32)?.sum(1)?.to_vec1()?;
                let rows: Vec<u32> = lengths
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| (i * t) as u32 + n.max(1) - 1)
                    .collect();
                let rows = Tensor::new(rows.as_slice(), h.device())?;
                h.reshape((b * t, c))?.index_select(&rows, 0)?
            }
        };
        let pooled = self.dropout.forward(&pooled, rng)?;
        self.head.forward(&pooled)
    }

    /// The JSON transformers reads: the body's config with the architecture, the classes and
    /// the pooling.
    pub fn config_json(&self) -> Value {
        let mut v = self.config.clone();
        let family = match &self.body {
            Body::Bert(_) => &bert::FAMILY,
            Body::Causal(m) => m.family(),
        };
        let arch = family
            .sequence_classification
            .expect("built only for families that classify");
        v["architectures"] = json!([arch]);
        v["id2label"] = Value::Object(
            self.labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), json!(l)))
                .collect(),
        );
        v["label2id"] = Value::Object(
            self.labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), json!(i)))
                .collect(),
        );
        v["problem_type"] = json!("single_label_classification");
        v["classifier_pooling"] = json!(self.pooling.name());
        if matches!(self.body, Body::Causal(_)) && v.get("pad_token_id").is_none_or(Value::is_null)
        {
            // transformers refuses batches of several texts without a padding id; the end of
            // text serves, as is usual for decoders.
            if let Some(eos) = v.get("eos_token_id").cloned() {
                let eos = eos
                    .as_array()
                    .and_then(|a| a.first().cloned())
                    .unwrap_or(eos);
                v["pad_token_id"] = eos;
            }
        }
        v
    }
}

/// Loads a model directory as a classifier. A directory with a trained head (`classifier` /
/// `score` and `id2label`) keeps its classes; `labels`, when given, must all be among them. A
/// bare body (a BERT, a causal LM) gets a fresh head for `labels` (initialised from `seed`).
/// `pooling` overrides the directory's (`classifier_pooling`, else `cls` for BERT and `last`
/// for decoders).
pub fn load_dir(
    dir: &Path,
    device: &Device,
    labels: Option<&[String]>,
    pooling: Option<Pooling>,
    seed: u64,
) -> Result<(SequenceClassifier, ParamStore)> {
    let d = hf::ModelDir::open(dir)?;
    let cfg_path = d.config_path.clone();
    let config = d.config.clone();
    let family = family(&config).map_err(|e| Error::format(&cfg_path, e.to_string()))?;
    let hf::Weights {
        source,
        mut tensors,
    } = d.weights(device)?;
    let head_key = if family.kind == Kind::Causal {
        tensors = (family.causal()?.normalize_keys)(tensors);
        tensors.remove("lm_head.weight");
        "score.weight"
    } else {
        tensors = bert::normalize_keys(tensors);
        // A masked-LM head is not part of a classifier.
        tensors.retain(|k, _| !k.starts_with("cls."));
        "classifier.weight"
    };
    let trained = tensors.contains_key(head_key);
    let own = config_labels(&config).map_err(|e| Error::format(&cfg_path, e.to_string()))?;
    let classes: Vec<String> = match (trained, own, labels) {
        (true, Some(own), Some(wanted)) => {
            if let Some(unknown) = wanted.iter().find(|l| !own.contains(l)) {
                return Err(Error::format(
                    &cfg_path,
                    format!(
                        "label {unknown:?} is not one of this classifier's classes ({})",
                        own.join(", ")
                    ),
                ));
            }
            own
        }
        (true, Some(own), None) => own,
        (true, None, _) => {
            return Err(Error::format(
                &cfg_path,
                "the weights have a classification head but the config no id2label",
            ))
        }
        (false, _, Some(wanted)) => wanted.to_vec(),
        (false, _, None) => {
            return Err(Error::format(
                dir,
                "this model has no classification head; fine-tune it on labelled texts first",
            ))
        }
    };
    let pooling = match pooling {
        Some(p) => p,
        None => match config.get("classifier_pooling").and_then(Value::as_str) {
            Some(p) => Pooling::parse(p).map_err(|e| Error::format(&cfg_path, e.to_string()))?,
            None if family.kind != Kind::Causal => Pooling::Cls,
            None => Pooling::Last,
        },
    };
    let pooler = tensors.contains_key("bert.pooler.dense.weight");
    hf::build_checked(tensors, device, &source, &cfg_path, |store| {
        if !trained {
            // The body must load completely before the head (and a pooler) may be initialised.
            build_body(&config, store, pooler)?;
            store.allow_init(seed);
        }
        SequenceClassifier::new(&config, store, &classes, pooling, pooler)
    })
}

/// Saves `config.json` (see [`SequenceClassifier::config_json`]) and `model.safetensors`.
pub fn save_dir(dir: &Path, model: &SequenceClassifier, store: &ParamStore) -> Result<()> {
    hf::save_dir(dir, &model.config_json(), store)
}
