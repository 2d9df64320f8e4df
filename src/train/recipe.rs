//! Recipes: a TOML file describing one training job (data, model, training, sampling), with
//! any key overridable from the command line as `--set section.key=value`.
//!
//! Length: the recipe schema is one concept; most lines are documented fields and their
//! defaults, which users read here, and a sixth of the file is tests.

use crate::data::lexicon::Lexicon;
use crate::objective::mlm::MaskingConfig;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

fn d_utf8() -> String {
    "utf-8".into()
}
fn d_objective() -> String {
    "clm".into()
}
fn d_tokenizer() -> String {
    "char".into()
}
fn d_vocab() -> usize {
    8192
}
fn d_val() -> f64 {
    0.1
}
fn d_act() -> String {
    "gelu".into()
}
fn d_true() -> bool {
    true
}
fn d_pos() -> String {
    "learned".into()
}
fn d_arch() -> String {
    "gpt2".into()
}
fn d_theta() -> f64 {
    10000.0
}
fn d_eps_ln() -> f64 {
    1e-5
}
fn d_one() -> usize {
    1
}
fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.95
}
fn d_adam_eps() -> f64 {
    1e-8
}
fn d_wd() -> f64 {
    0.1
}
fn d_clip() -> f64 {
    1.0
}
fn d_eval_iters() -> usize {
    20
}
fn d_log() -> usize {
    10
}
fn d_keep() -> usize {
    2
}
fn d_seed() -> u64 {
    1337
}
fn d_prompt() -> String {
    "\n".into()
}
fn d_max_tokens() -> usize {
    500
}
fn d_temp() -> f64 {
    0.8
}

/// A whole training job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Short name, used in logs.
    pub name: String,
    /// Training objective: `clm` (causal language modelling: GPT-2, Llama), `sft` (instruction
    /// tuning of a causal LM: loss on the responses, see [`SftConfig`]), `mlm` (masked
    /// language modelling: BERT), `seq2seq` (source/target pairs: Marian), `classify` (image
    /// classification with a ViT; text classification with BERT, GPT-2 or Llama) or `transe`
    /// (knowledge-graph embeddings from triples).
    #[serde(default = "d_objective")]
    pub objective: String,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub sample: SampleConfig,
    /// Masking for the `mlm` objective.
    #[serde(default)]
    pub mlm: MaskingConfig,
    /// Training-image augmentation for the `classify` objective.
    #[serde(default)]
    pub augment: AugmentConfig,
    /// Parameter-efficient fine-tuning: train an adapter (LoRA, IA3) on the frozen
    /// `model.init`, with PEFT's option names (`peft_type`, `r`, `lora_alpha`,
    /// `target_modules`, ...). The run directory then holds the adapter, as PEFT saves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft: Option<crate::peft::PeftConfig>,
    /// Instruction tuning (objective `sft`): template, what the loss covers, packing.
    #[serde(default)]
    pub sft: SftConfig,
    /// Knowledge-graph embeddings (objective `transe`): scoring norm and margin; the
    /// dimension is `model.n_embd`, the data a split directory in `data.corpus`.
    #[serde(default)]
    pub transe: TranseRecipe,
    /// The file it was read from (named in errors; not part of the recipe).
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
}

/// TransE's scoring (objective `transe`, model.architecture `transe`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TranseRecipe {
    /// Distance: 1 (L1, Bordes et al.'s choice for WordNet) or 2.
    #[serde(default = "d_transe_norm")]
    pub norm: u8,
    /// Margin of the ranking loss (6: best on WordNet's validation MRR of 1, 2, 4, 6).
    #[serde(default = "d_transe_margin")]
    pub margin: f64,
}

fn d_transe_norm() -> u8 {
    1
}

fn d_transe_margin() -> f64 {
    6.0
}

impl Default for TranseRecipe {
    fn default() -> Self {
        TranseRecipe {
            norm: d_transe_norm(),
            margin: d_transe_margin(),
        }
    }
}

/// Supervised fine-tuning on instruction data (objective `sft`; `data.corpus` names the files
/// or directories: Alpaca, ShareGPT, messages or prompt-completion records).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// The chat template: `model` (the model's own, from tokenizer_config.json or the GGUF),
    /// a built-in (`chatml`, `alpaca`, `llama-2`) or a path to a Jinja file.
    pub template: String,
    /// What the loss covers: `responses` (assistant turns and completions, TRL's
    /// assistant_only_loss / completion_only_loss) or `all` (every token).
    pub train_on: String,
    /// Pack several examples into each `train.context`-token row (best-fit decreasing), each
    /// attending only to itself with positions from 0; off: one example per row, padded.
    pub packing: bool,
    /// Examples longer than `train.context`: `truncate` (keep the start) or `drop`.
    pub overflow: String,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            template: "model".into(),
            train_on: "responses".into(),
            packing: false,
            overflow: "truncate".into(),
        }
    }
}

pub use crate::data::images::AugmentConfig;

/// Where the text comes from and how it is tokenized.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Files or folders (read recursively, in name order), or `asset:NAME`.
    pub corpus: Vec<String>,
    /// `char` (one token per character), `bpe` (train byte-level BPE), `wordpiece` (train a
    /// BERT WordPiece vocabulary), or a `tokenizer.json` path.
    #[serde(default = "d_tokenizer")]
    pub tokenizer: String,
    /// Vocabulary size when training BPE or WordPiece.
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// WordPiece: lowercase and strip accents (an "uncased" vocabulary).
    #[serde(default = "d_true")]
    pub lowercase: bool,
    /// Fraction of the tokens (the last ones) held out for validation; for a
    /// sequence-to-sequence lexicon, the fraction of its words.
    #[serde(default = "d_val")]
    pub val_fraction: f64,
    /// Sequence-to-sequence: the fraction of words held out for the test split.
    #[serde(default)]
    pub test_fraction: f64,
    /// Sequence-to-sequence lexicons: keep ARPAbet stress digits (`AH0`, `AH1`, `AH2`); false
    /// strips them (`AH`), as most published CMUdict G2P results are trained and scored.
    #[serde(default = "d_true")]
    pub stress: bool,
    /// Sequence-to-sequence lexicons: learn to write each pronunciation right to left (last
    /// phoneme first). Such a model makes other mistakes than a left-to-right one; decoded
    /// together with one (`translate` / `eval seq2seq` with both as `--model`), it rescores
    /// their candidates.
    #[serde(default)]
    pub reverse_target: bool,
    /// Sequence-to-sequence: the seed of the split by word; images: of the validation images
    /// held out of the training set.
    #[serde(default = "d_seed")]
    pub split_seed: u64,
    /// Images: class names by label, for data sets that store only numbers (IDX files).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Text: corpus files held out whole for validation, by file-name glob (e.g.
    /// `["hamlet_gut.txt", "macbeth_*"]`); they are not trained on, and `val_fraction` is then
    /// ignored.
    #[serde(default)]
    pub val_files: Vec<String>,
    /// Labelled texts: k-fold cross-validation with this many folds (stratified by label,
    /// seeded by `split_seed`; 0 or 1: off, `val_fraction` is held out instead). `finetune`
    /// and `pretrain` train one run per fold and report the mean.
    #[serde(default)]
    pub folds: usize,
    /// The fold held out for validation (set per run by the k-fold loop).
    #[serde(default)]
    pub fold: Option<usize>,
    /// Labelled texts: the files' encoding, `utf-8`, `windows-1252` or `latin-1`.
    #[serde(default = "d_utf8")]
    pub encoding: String,
}

impl DataConfig {
    /// Sequence-to-sequence: the lexicon at `path` as the run trains and is scored on it
    /// (without stress digits unless `stress`; pronunciations reversed if `reverse_target`).
    pub fn lexicon(&self, path: &Path) -> Result<Lexicon> {
        let mut lex = Lexicon::read_cmudict(path)?;
        if !self.stress {
            lex = lex.without_stress();
        }
        if self.reverse_target {
            lex = lex.reversed();
        }
        Ok(lex)
    }

    /// Sequence-to-sequence: the training and validation fractions [`Lexicon::split`] takes
    /// (the test split is the rest).
    pub fn split_fractions(&self) -> [f64; 2] {
        [
            1.0 - self.val_fraction - self.test_fraction,
            self.val_fraction,
        ]
    }
}

/// The model to build (sizes are ignored when `init` names an existing model).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Start from this model instead of random weights: a run or Hugging Face directory, a
    /// llama.cpp `.gguf` file (dequantized), or an asset name.
    #[serde(default)]
    pub init: Option<String>,
    /// `gpt2` (LayerNorm, GELU, learned or sinusoidal positions), `llama` (RMSNorm,
    /// SwiGLU, rotary positions, grouped-query attention) or `bert` (bidirectional post-norm
    /// encoder with the masked-LM head; objective `mlm`).
    #[serde(default = "d_arch")]
    pub architecture: String,
    /// Llama: key/value heads for grouped-query attention; defaults to `n_head`.
    #[serde(default)]
    pub n_kv_head: Option<usize>,
    /// Feed-forward width. Llama: defaults to about 8/3 `n_embd` rounded up to 64; BERT: to
    /// 4 `n_embd`.
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    /// Standard deviation of the fresh weights (normal, biases zero) of BERT, Marian and ViT
    /// models: transformers' 0.02 by default. The original Transformer's embeddings (scaled by
    /// sqrt(n_embd)) start larger, about n_embd^-0.5.
    #[serde(default)]
    pub init_std: Option<f64>,
    /// Text classification: how the hidden states become one vector: `cls` (BERT's pooler on
    /// `[CLS]`, as transformers), `mean` (over the real tokens, as sentence-transformers) or
    /// `last` (the last real token; decoders) [default: the model's, else cls / last].
    #[serde(default)]
    pub pooling: Option<String>,
    /// ViT: side of the square patches the image is cut into.
    #[serde(default)]
    pub patch_size: Option<usize>,
    /// Llama: rotary base.
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    /// Sizes of a fresh model (not needed with `init`).
    #[serde(default)]
    pub n_layer: usize,
    #[serde(default)]
    pub n_head: usize,
    #[serde(default)]
    pub n_embd: usize,
    /// Maximum positions; defaults to the training context.
    #[serde(default)]
    pub n_positions: Option<usize>,
    #[serde(default = "d_act")]
    pub activation_function: String,
    /// Dropout probability everywhere (embeddings, attention, residuals).
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    /// `learned` or `sinusoidal`.
    #[serde(default = "d_pos")]
    pub position_encoding: String,
    #[serde(default = "d_eps_ln")]
    pub layer_norm_epsilon: f64,
    /// With a `.gguf` `init` and a `[peft]` adapter: keep the base's matrices quantized
    /// (frozen, as in the file) while the adapter trains in f32 (QLoRA).
    #[serde(default)]
    pub quantized: bool,
}

/// Optimisation and bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Run directory: model, checkpoints, metrics, plots.
    pub out_dir: String,
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence (text objectives).
    #[serde(default)]
    pub context: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "d_one")]
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    pub min_lr: f64,
    pub warmup_steps: usize,
    /// Step where the decay reaches `min_lr`; defaults to `steps`.
    #[serde(default)]
    pub decay_steps: Option<usize>,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_beta1")]
    pub beta1: f64,
    #[serde(default = "d_beta2")]
    pub beta2: f64,
    #[serde(default = "d_adam_eps")]
    pub eps: f64,
    /// Label smoothing of the sequence-to-sequence loss (0 disables).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Sequence-to-sequence: draw each training batch from pairs of about the same length
    /// (little padding, so far less work per pair), its loss divided by the expected rather
    /// than its own target token count so every token weighs alike; false draws them
    /// uniformly.
    #[serde(default = "d_true")]
    pub group_by_length: bool,
    /// Clip the global gradient norm to this (0 disables).
    #[serde(default = "d_clip")]
    pub grad_clip: f64,
    /// Evaluate every this many steps (and at the end).
    pub eval_interval: usize,
    /// Batches per evaluation, for each split.
    #[serde(default = "d_eval_iters")]
    pub eval_iters: usize,
    /// Log training loss every this many steps.
    #[serde(default = "d_log")]
    pub log_interval: usize,
    /// Save a checkpoint every this many steps; defaults to `eval_interval`.
    #[serde(default)]
    pub checkpoint_interval: Option<usize>,
    /// Checkpoint folders kept (oldest removed first).
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Parameters to freeze (not trained: no gradient, no optimizer state), as name patterns:
    /// globs over dot-separated segments and layer ranges, e.g. `["embed_tokens",
    /// "layers.0-25"]` (see `peft::freeze`).
    #[serde(default)]
    pub freeze: Vec<String>,
    /// If not empty, only parameters matching these patterns train (`freeze` then applies to
    /// them too).
    #[serde(default)]
    pub train_only: Vec<String>,
    /// Activation checkpointing: each layer keeps only its input for the backward pass and
    /// recomputes its activations there (less memory, about a third more compute). CPU only.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// `"f32"` (default) or `"bf16"`: mixed precision, matrix products with bf16 operands
    /// and f32 accumulation (master weights, optimizer state, norms, softmax and the loss stay
    /// f32), and frozen base matrices under PEFT held in bf16. CPU only.
    #[serde(default)]
    pub precision: crate::nn::kernels::bf16::Precision,
}

/// The sample generated after training.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    #[serde(default = "d_prompt")]
    pub prompt: String,
    #[serde(default = "d_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "d_temp")]
    pub temperature: f64,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub top_p: Option<f64>,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            prompt: d_prompt(),
            max_tokens: d_max_tokens(),
            temperature: d_temp(),
            top_k: Some(200),
            top_p: None,
        }
    }
}

/// Sets `path.to.key = value` in a TOML table; `value` is parsed as a TOML value when it can
/// be, else taken as a string.
fn set_override(root: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| Error::Config(format!("--set expects key=value, got {assignment:?}")))?;
    let key = key.trim();
    let value = match format!("v = {}", raw.trim()).parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut table = root;
    for p in &parts[..parts.len() - 1] {
        table = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| Error::Config(format!("--set {key}: {p} is not a section")))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

impl Recipe {
    /// Parses recipe text with overrides; `origin` names it in errors.
    pub fn parse(text: &str, overrides: &[String], origin: &Path) -> Result<Self> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            Error::format(origin, format!("invalid TOML: {}", e.message()))
        })?;
        for o in overrides {
            set_override(&mut table, o)?;
        }
        // The error names the key (`train.precision: unknown variant ...`).
        let mut recipe: Recipe = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let (path, e) = (e.path().to_string(), e.into_inner());
                let at = if path == "." {
                    String::new()
                } else {
                    format!("{path}: ")
                };
                Error::format(origin, format!("invalid recipe: {at}{}", e.message()))
            })?;
        recipe.source = Some(origin.to_path_buf());
        recipe
            .validate()
            .map_err(|e| Error::format(origin, e.to_string()))?;
        Ok(recipe)
    }

    /// Reads a recipe file and applies `--set` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, overrides, path)
    }

    /// The resolved recipe as TOML (saved in the run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("recipe serialises")
    }

    /// Checks values a user can get wrong (the task checks its own options when the
    /// objective is resolved, see `crate::tasks::resolve`).
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        if let Some(p) = &self.peft {
            p.validate(true)
                .map_err(|e| Error::Config(format!("[peft]: {e}")))?;
            if self.model.init.is_none() {
                return Err(Error::Config(
                    "[peft] adapts a pretrained model: set model.init or pass --from".into(),
                ));
            }
            if !(t.freeze.is_empty() && t.train_only.is_empty()) {
                return Err(Error::Config(
                    "train.freeze / train.train_only and [peft] exclude each other: an adapter run trains the adapter (and its modules_to_save) only".into(),
                ));
            }
        }
        if self.model.quantized && self.peft.is_none() {
            return Err(Error::Config(
                "model.quantized keeps the base frozen, so it needs a [peft] adapter to train"
                    .into(),
            ));
        }
        if let Some(k) = self.data.fold {
            if k >= self.data.folds {
                return Err(Error::Config(format!(
                    "data.fold {k} is not one of the {} folds",
                    self.data.folds
                )));
            }
        }
        if t.context == 0 && self.objective != "classify" {
            return Err(Error::Config("train.context must be positive".into()));
        }
        self.mlm.validate()?;
        for (k, v) in [
            ("train.steps", t.steps),
            ("train.batch_size", t.batch_size),
            ("train.grad_accum", t.grad_accum),
            ("train.eval_interval", t.eval_interval),
            ("train.eval_iters", t.eval_iters),
            ("train.log_interval", t.log_interval),
            ("train.keep_checkpoints", t.keep_checkpoints),
        ] {
            if v == 0 {
                return Err(Error::Config(format!("{k} must be positive")));
            }
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) || t.min_lr < 0.0 || t.min_lr > t.lr {
            return Err(Error::Config(format!(
                "need 0 <= train.min_lr <= train.lr and lr > 0 (lr {}, min_lr {})",
                t.lr, t.min_lr
            )));
        }
        if !(0.0..1.0).contains(&t.beta1)
            || !(0.0..1.0).contains(&t.beta2)
            || t.eps <= 0.0
            || t.weight_decay < 0.0
        {
            return Err(Error::Config(
                "AdamW needs 0 <= beta < 1, eps > 0, weight_decay >= 0".into(),
            ));
        }
        if t.grad_clip < 0.0 {
            return Err(Error::Config("train.grad_clip must be >= 0".into()));
        }
        if self.data.corpus.is_empty() {
            return Err(Error::Config("data.corpus is empty".into()));
        }
        let m = &self.model;
        let layered = m.architecture != "transe";
        if m.init.is_none() && (m.n_embd == 0 || layered && (m.n_layer == 0 || m.n_head == 0)) {
            return Err(Error::Config(
                "a fresh model needs positive model.n_layer, model.n_head and model.n_embd (or model.init to start from a pretrained one)".into(),
            ));
        }
        if let Some(n) = self.model.n_positions {
            if n < t.context {
                return Err(Error::Config(format!(
                    "model.n_positions ({n}) is smaller than train.context ({})",
                    t.context
                )));
            }
        }
        Ok(())
    }

    /// Checkpoint interval in steps.
    pub fn checkpoint_interval(&self) -> usize {
        self.train
            .checkpoint_interval
            .unwrap_or(self.train.eval_interval)
            .max(1)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest valid recipe, for tests.
    pub(crate) const R: &str = r#"
name = "t"
[data]
corpus = ["a.txt"]
[model]
n_layer = 2
n_head = 2
n_embd = 8
[train]
out_dir = "runs/t"
steps = 10
batch_size = 2
context = 8
lr = 1e-3
min_lr = 1e-4
warmup_steps = 2
eval_interval = 5
"#;

    #[test]
    fn overrides_apply_and_unknown_keys_fail() {
        let p = Path::new("r.toml");
        let r =
            Recipe::parse(R, &["train.lr=3e-4".into(), "data.tokenizer=bpe".into()], p).unwrap();
        assert_eq!(r.train.lr, 3e-4);
        assert_eq!(r.data.tokenizer, "bpe");
        let e = Recipe::parse(R, &["train.learning_rate=1".into()], p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.toml") && e.contains("learning_rate"), "{e}");
        let e = Recipe::parse(R, &["train.steps=0".into()], p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.steps"), "{e}");
        let e = Recipe::parse(R, &["mlm.probability=0".into()], p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("probability"), "{e}");
        // Round trip through the resolved form.
        assert_eq!(Recipe::parse(&r.to_toml(), &[], p).unwrap(), r);
    }
}
