//! The Vision Transformer (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words"): the
//! image is cut into a grid of non-overlapping patches, each patch flattened and projected to a
//! token (a convolution whose kernel and stride are the patch size), a learned class token is
//! put in front, learned position embeddings are added, and a pre-norm Transformer encoder
//! reads the sequence; the class token's final state, normalised, is classified by a linear
//! head. Weight names and `config.json` are those of transformers' `ViTModel` /
//! `ViTForImageClassification`, so Hugging Face ViT directories load and ours load there.

use super::family::{Family, Kind, PeftDefaults};
use crate::nn::{
    Activation, Dropout, EncoderLayer, EncoderLayerConfig, EncoderLayerNames, Init, LayerNorm,
    ParamStore, Projection,
};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The Vision Transformer family.
pub static FAMILY: Family = Family {
    name: "vit",
    model_types: &["vit"],
    kind: Kind::ImageClassifier,
    hf_class: "ViTForImageClassification",
    sequence_classification: None,
    peft: PeftDefaults {
        lora: &["query", "value"],
        ia3: &[],
        ia3_feedforward: &[],
        ln_tuning: &["LayerNorm", "layernorm"],
    },
    // Position embeddings and the class token; the patch projection is a weight matrix like
    // any other (timm decays it too).
    no_decay: &["position_embeddings", "cls_token"],
    causal: None,
};

fn d_vit() -> String {
    "vit".into()
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_eps() -> f64 {
    1e-12
}
fn d_range() -> f64 {
    0.02
}
fn d_image() -> usize {
    224
}
fn d_patch() -> usize {
    16
}
fn d_channels() -> usize {
    3
}
fn d_true() -> bool {
    true
}

/// `config.json` of a ViT, with transformers' names and defaults; other keys are kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VitConfig {
    #[serde(default = "d_vit")]
    pub model_type: String,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    #[serde(default)]
    pub hidden_dropout_prob: f64,
    #[serde(default)]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d_range")]
    pub initializer_range: f64,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Height and width of the images the position embeddings were made for.
    #[serde(default = "d_image")]
    pub image_size: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    #[serde(default = "d_true")]
    pub qkv_bias: bool,
    /// Class index (as a string, as transformers writes it) to name.
    #[serde(default)]
    pub id2label: BTreeMap<String, String>,
    #[serde(default)]
    pub label2id: BTreeMap<String, usize>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl VitConfig {
    pub fn validate(&self) -> Result<()> {
        super::hf::check_encoder_sizes(
            &self.model_type,
            &FAMILY,
            &[
                ("hidden_size", self.hidden_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("num_attention_heads", self.num_attention_heads),
                ("intermediate_size", self.intermediate_size),
                ("image_size", self.image_size),
                ("patch_size", self.patch_size),
                ("num_channels", self.num_channels),
            ],
            self.hidden_size,
            self.num_attention_heads,
        )?;
        if self.patch_size > self.image_size {
            return Err(Error::Config(format!(
                "patch_size ({}) exceeds image_size ({})",
                self.patch_size, self.image_size
            )));
        }
        if !self.qkv_bias {
            return Err(Error::Config(
                "qkv_bias false is not supported (every released ViT has the biases)".into(),
            ));
        }
        self.labels()?;
        Activation::from_hf(&self.hidden_act)?;
        Dropout::new(self.hidden_dropout_prob)?;
        Dropout::new(self.attention_probs_dropout_prob)?;
        Ok(())
    }

    /// Reads `config.json`, naming the file in any error.
    pub fn load(path: &Path) -> Result<Self> {
        super::hf::read_config(path, Self::validate)
    }

    /// The class names in index order (`LABEL_i` where `id2label` is empty: transformers'
    /// default of 2 classes).
    pub fn labels(&self) -> Result<Vec<String>> {
        if self.id2label.is_empty() {
            return Ok(vec!["LABEL_0".into(), "LABEL_1".into()]);
        }
        let n = self.id2label.len();
        (0..n)
            .map(|i| {
                self.id2label.get(&i.to_string()).cloned().ok_or_else(|| {
                    Error::Config(format!("id2label has {n} entries but none for class {i}"))
                })
            })
            .collect()
    }

    /// Sets `id2label` and `label2id` from class names in index order.
    pub fn set_labels(&mut self, names: &[String]) {
        self.id2label = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i.to_string(), n.clone()))
            .collect();
        self.label2id = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
    }

    /// Patches per side of the configured image.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// The JSON transformers reads.
    pub fn to_json(&self, classifier: bool) -> serde_json::Value {
        let arch = if classifier {
            "ViTForImageClassification"
        } else {
            "ViTModel"
        };
        super::hf::config_json(self, arch, true)
    }
}

/// A ViT encoder with its optional classification head.
pub struct Vit {
    pub config: VitConfig,
    /// `[hidden, channels, patch, patch]`, as the convolution's weight.
    pub patch_weight: Tensor,
    pub patch_bias: Tensor,
    /// `[1, 1, hidden]`.
    pub cls_token: Tensor,
    /// `[1, 1 + grid^2, hidden]`: the class token's position, then the patches' row by row.
    pub position_embeddings: Tensor,
    pub dropout: Dropout,
    pub layers: Vec<EncoderLayer>,
    pub layernorm: LayerNorm,
    /// `[hidden] -> [num_labels]` on the class token.
    pub classifier: Option<Projection>,
}

impl Vit {
    /// Builds the model from `store` (initialising what it does not hold, if it may).
    pub fn new(config: &VitConfig, store: &mut ParamStore, classifier: bool) -> Result<Self> {
        config.validate()?;
        let c = config;
        let (d, std, p) = (c.hidden_size, c.initializer_range, c.patch_size);
        let patches = c.grid() * c.grid();
        let patch_weight = store.get(
            "vit.embeddings.patch_embeddings.projection.weight",
            &[d, c.num_channels, p, p],
            Init::Normal(std),
        )?;
        let patch_bias = store.get(
            "vit.embeddings.patch_embeddings.projection.bias",
            &[d],
            Init::Zeros,
        )?;
        let cls_token = store.get("vit.embeddings.cls_token", &[1, 1, d], Init::Normal(std))?;
        let position_embeddings = store.get(
            "vit.embeddings.position_embeddings",
            &[1, patches + 1, d],
            Init::Normal(std),
        )?;
        let layer = EncoderLayerConfig {
            hidden: d,
            heads: c.num_attention_heads,
            intermediate: c.intermediate_size,
            act: Activation::from_hf(&c.hidden_act)?,
            eps: c.layer_norm_eps,
            attention_dropout: c.attention_probs_dropout_prob,
            hidden_dropout: c.hidden_dropout_prob,
            activation_dropout: 0.0,
            std,
            pre_norm: true,
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let names = EncoderLayerNames::vit(&format!("vit.encoder.layer.{i}"));
                EncoderLayer::new(store, &names, &layer)
            })
            .collect::<Result<Vec<_>>>()?;
        let layernorm = LayerNorm::new(store, "vit.layernorm", d, c.layer_norm_eps, true)?;
        let classifier = if classifier {
            let n = c.labels()?.len();
            Some(Projection::linear(store, "classifier", d, n, true, std)?)
        } else {
            None
        };
        Ok(Vit {
            config: c.clone(),
            patch_weight,
            patch_bias,
            cls_token,
            position_embeddings,
            dropout: Dropout::new(c.hidden_dropout_prob)?,
            layers,
            layernorm,
            classifier,
        })
    }

    /// A freshly initialised model and its parameter store.
    pub fn init(config: &VitConfig, device: &Device, seed: u64) -> Result<(Self, ParamStore)> {
        super::hf::init(device, seed, |s| Vit::new(config, s, true))
    }

    pub fn device(&self) -> &Device {
        self.cls_token.device()
    }

    /// The patch tokens `[b, gh * gw, hidden]` of `pixels` `[b, channels, h, w]`, row by row:
    /// each `patch x patch` square flattened channel-major and projected, which is what the
    /// stride-`patch` convolution computes (pixels past the last whole patch are dropped, as
    /// the convolution drops them).
    pub fn patch_embeddings(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.config.patch_size;
        if c != self.config.num_channels {
            return Err(Error::Config(format!(
                "the images have {c} channels, the model takes {}",
                self.config.num_channels
            )));
        }
        let (gh, gw) = (h / p, w / p);
        if gh == 0 || gw == 0 {
            return Err(Error::Config(format!(
                "a {h}x{w} image is smaller than one {p}x{p} patch"
            )));
        }
        let x = pixels
            .narrow(2, 0, gh * p)?
            .narrow(3, 0, gw * p)?
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, c * p * p))?;
        let d = self.config.hidden_size;
        let w = self.patch_weight.reshape((d, c * p * p))?;
        let y = crate::nn::Linear::plain(w, Some(self.patch_bias.clone()), false).forward(&x)?;
        Ok(y.reshape((b, gh * gw, d))?)
    }

    /// The position embeddings for a `gh x gw` grid of patches `[1, 1 + gh * gw, hidden]`: the
    /// trained ones, or with `interpolate` the patch part resized bicubically (transformers'
    /// `interpolate_pos_encoding`: `F.interpolate(..., mode="bicubic", align_corners=False)`).
    pub fn positions(&self, gh: usize, gw: usize, interpolate: bool) -> Result<Tensor> {
        let g = self.config.grid();
        if gh == g && gw == g {
            return Ok(self.position_embeddings.clone());
        }
        if !interpolate {
            let s = self.config.image_size;
            return Err(Error::Config(format!(
                "the model takes {s}x{s} images ({g}x{g} patches), these give {gh}x{gw} patches; resize them or interpolate the position embeddings"
            )));
        }
        let d = self.config.hidden_size;
        let dev = self.device();
        let cls = self.position_embeddings.narrow(1, 0, 1)?;
        let grid = self
            .position_embeddings
            .narrow(1, 1, g * g)?
            .reshape((g, g, d))?;
        let rows = Tensor::from_vec(bicubic_matrix(g, gh), (gh, g), dev)?;
        let cols = Tensor::from_vec(bicubic_matrix(g, gw), (gw, g), dev)?;
        // out[i, j] = sum_{a, b} rows[i, a] * grid[a, b] * cols[j, b]
        let by_rows = rows
            .matmul(&grid.reshape((g, g * d))?)?
            .reshape((gh, g, d))?;
        let both = cols
            .broadcast_left(gh)?
            .matmul(&by_rows)?
            .reshape((1, gh * gw, d))?;
        Ok(Tensor::cat(&[&cls, &both], 1)?)
    }

    /// The final hidden states `[b, 1 + patches, hidden]` (after the last LayerNorm) of
    /// normalised `pixels` `[b, channels, h, w]`; `interpolate` accepts other image sizes;
    /// `rng` enables dropout.
    pub fn forward(
        &self,
        pixels: &Tensor,
        interpolate: bool,
        mut rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let mut x = self.embed(pixels, interpolate, rng.as_deref_mut())?;
        for layer in &self.layers {
            let l = layer.clone();
            x = crate::nn::checkpoint::layer(&[&x], rng.as_deref_mut(), move |xs, rng| {
                l.forward(&xs[0], None, rng)
            })?;
        }
        self.layernorm.forward(&x)
    }

    /// The embeddings `[b, 1 + patches, hidden]` (class token, patches, positions, dropout).
    pub fn embed(
        &self,
        pixels: &Tensor,
        interpolate: bool,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let (b, _, h, w) = pixels.dims4()?;
        let p = self.config.patch_size;
        let patches = self.patch_embeddings(pixels)?;
        let d = self.config.hidden_size;
        let cls = self.cls_token.broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?;
        let x = x.broadcast_add(&self.positions(h / p, w / p, interpolate)?)?;
        self.dropout.forward(&x, rng)
    }

    /// Class logits `[b, num_labels]` of the final hidden states' class token.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self
            .classifier
            .as_ref()
            .ok_or_else(|| Error::Config("this ViT has no classification head".into()))?;
        head.forward(&hidden.narrow(1, 0, 1)?.squeeze(1)?)
    }

    /// Each layer's attention probabilities `[b, heads, 1 + patches, 1 + patches]` for
    /// `pixels` (no dropout).
    pub fn attentions(&self, pixels: &Tensor, interpolate: bool) -> Result<Vec<Tensor>> {
        let mut x = self.embed(pixels, interpolate, None)?;
        let mut out = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            out.push(layer.attention_probs(&x, None)?);
            x = layer.forward(&x, None, None)?;
        }
        Ok(out)
    }
}

/// The `[out, in]` matrix of PyTorch's 1-D bicubic resampling from `n_in` to `n_out` points
/// with `align_corners=False` (cubic convolution, A = -0.75, edge indices clamped).
pub fn bicubic_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let cubic1 = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0; // |x| <= 1
    let cubic2 = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A; // 1 < |x| < 2
    let scale = n_in as f64 / n_out as f64;
    let mut m = vec![0f32; n_out * n_in];
    for o in 0..n_out {
        let src = (o as f64 + 0.5) * scale - 0.5;
        let base = src.floor();
        let t = src - base;
        let weights = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
        for (k, wgt) in weights.iter().enumerate() {
            let idx = (base as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
            m[o * n_in + idx] += *wgt as f32;
        }
    }
    m
}

/// transformers' names, for a `ViTForImageClassification` or a bare `ViTModel` file (whose keys
/// lack the `vit.` prefix); the pooler and the masked-image-modelling token are not used.
fn normalize_keys(tensors: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tensors
        .into_iter()
        .filter(|(k, _)| !(k.contains("pooler.") || k.ends_with("embeddings.mask_token")))
        .map(|(k, t)| {
            if k.starts_with("vit.") || k.starts_with("classifier.") {
                (k, t)
            } else {
                (format!("vit.{k}"), t)
            }
        })
        .collect()
}

/// Loads a ViT directory (`config.json` and safetensors weights; a classification head if the
/// weights hold one).
pub fn load_dir(dir: &Path, device: &Device) -> Result<(Vit, ParamStore)> {
    let d = super::hf::ModelDir::open(dir)?;
    let config: VitConfig = d.parse_config(VitConfig::validate)?;
    let mut w = d.weights(device)?;
    w.tensors = normalize_keys(w.tensors);
    let classifier = w.tensors.contains_key("classifier.weight");
    d.build(w, device, |s| Vit::new(&config, s, classifier))
}

/// Parameter names and shapes of a configuration.
pub fn param_shapes(config: &VitConfig, classifier: bool) -> Result<BTreeMap<String, Vec<usize>>> {
    super::hf::param_shapes(|s| Vit::new(config, s, classifier).map(|_| ()))
}

/// Writes `config.json` and `model.safetensors` (transformers' layout).
pub fn save_dir(dir: &Path, model: &Vit, store: &ParamStore) -> Result<()> {
    super::hf::save_dir(
        dir,
        &model.config.to_json(model.classifier.is_some()),
        store,
    )
}

/// Softmax probabilities of `logits` `[b, n]`, row by row.
pub fn probabilities(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(crate::nn::ops::softmax(&logits.to_dtype(candle_core::DType::F32)?)?.to_vec2::<f32>()?)
}

/// Attention rollout (Abnar & Zuidema, 2020): per layer the heads' mean attention plus the
/// identity (the residual), rows renormalised, multiplied through the layers; returns the class
/// token's row over the patches `[b, patches]`, scaled to a maximum of 1.
pub fn attention_rollout(attentions: &[Tensor]) -> Result<Tensor> {
    let first = attentions
        .first()
        .ok_or_else(|| Error::Config("no attention layers".into()))?;
    let (b, _, t, _) = first.dims4()?;
    let eye = Tensor::eye(t, candle_core::DType::F32, first.device())?;
    let mut roll = eye.broadcast_left(b)?.contiguous()?;
    for a in attentions {
        let m = (a.mean(1)?.broadcast_add(&eye)? * 0.5)?;
        let m = m.broadcast_div(&m.sum_keepdim(D::Minus1)?)?;
        roll = m.matmul(&roll)?;
    }
    let cls = roll.narrow(1, 0, 1)?.squeeze(1)?.narrow(1, 1, t - 1)?;
    Ok(cls.broadcast_div(&cls.max_keepdim(D::Minus1)?)?)
}
