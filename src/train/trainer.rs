//! The training loop: one optimizer step at a time, with evaluation, logging, checkpoints and
//! exact resume.

use crate::assets;
use crate::chat::ChatTemplate;
use crate::data::corpus::for_each_chunk;
use crate::data::images::{self, ImageSet, ImageSplit, Preprocessor};
use crate::data::lexicon::Part;
use crate::data::{corpus_files, Split, TokenShard};
use crate::models::bert::{self, Bert, BertConfig, BertHeads};
use crate::models::marian::{self, Marian, MarianConfig};
use crate::models::sequence_classifier::{self, Body, Pooling, SequenceClassifier};
use crate::models::vit::{self, Vit, VitConfig};
use crate::models::{self, registry, ArchConfig, CausalModel, Sizes};
use crate::nn::ParamStore;
use crate::objective::mlm::MaskedLm;
use crate::objective::seq2seq::{grouped_loss_scale, pad_batch, pair_loss, sample, PairData};
use crate::objective::sft::{self, SftBatch, Tokenized};
use crate::objective::CausalLm;
use crate::rng::Rng;
use crate::semnet::transe::{TransE, TransEConfig};
use crate::tokenizer::{Tokenizer, EOT};
use crate::train::checkpoint::{self, Checkpoint, TrainerState};
use crate::train::metrics::{peak_rss, reset_peak_rss, MetricsLog};
use crate::train::plot::plot_losses;
use crate::train::{AdamW, AdamWConfig, GradAccumulator, LrSchedule, Recipe};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Set by the Ctrl-C handler; the loop saves a checkpoint and stops at the end of the step.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Loss and bookkeeping of one optimizer step.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub step: usize,
    /// Tokens the step trained on (padding excluded).
    pub tokens: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// One batch's loss, the tokens (or images) it held, and for the masked LM and images the
/// predictions scored and those right.
struct BatchLoss {
    loss: Tensor,
    tokens: usize,
    hits: Option<(usize, usize)>,
}

/// Mean loss over fixed evaluation batches (for the masked LM, over the masked positions),
/// and for the masked LM the fraction of masked positions predicted right.
#[derive(Debug, Clone, Copy)]
pub struct EvalStats {
    pub step: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub train_accuracy: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// Sequence-to-sequence: error rates of greedy outputs on validation inputs.
    pub val_error_rates: Option<crate::objective::seq2seq::ErrorRates>,
}

/// What a run trains on.
pub enum TrainData {
    /// A token stream (language modelling): training and validation ranges.
    Tokens {
        shard: TokenShard,
        train: Split,
        val: Split,
    },
    /// Source/target pairs (sequence-to-sequence).
    Pairs(Box<PairData>),
    /// Labelled images (classification): training and held-out validation images.
    Images { train: ImageSet, val: ImageSet },
    /// Instruction examples (objective `sft`): tokenised with their trained positions, and the
    /// rows batches are made of (each a list of example indices: one, or several packed).
    Instruct {
        train: Vec<Tokenized>,
        val: Vec<Tokenized>,
        train_rows: Vec<Vec<usize>>,
        val_rows: Vec<Vec<usize>>,
        packed: bool,
        /// What reading and tokenising found (skipped records, truncations), for the user.
        notes: Vec<String>,
    },
    /// Labelled texts (classification): token ids and class index of each, and the classes.
    Texts {
        train: Vec<(Vec<u32>, u32)>,
        val: Vec<(Vec<u32>, u32)>,
        classes: Vec<String>,
    },
    /// Knowledge-graph triples (objective `transe`): the split and every known triple.
    Triples {
        split: Box<crate::semnet::kg::KgSplit>,
        known: std::collections::HashSet<crate::semnet::kg::Triple>,
    },
}

impl TrainData {
    /// Training and validation sizes, and their unit.
    pub fn sizes(&self) -> (usize, usize, &'static str) {
        match self {
            TrainData::Tokens { train, val, .. } => (train.len(), val.len(), "tokens"),
            TrainData::Pairs(p) => (p.train.len(), p.valid.len(), "pairs"),
            TrainData::Images { train, val } => (train.len(), val.len(), "images"),
            TrainData::Texts { train, val, .. } => (train.len(), val.len(), "texts"),
            TrainData::Instruct { train, val, .. } => (train.len(), val.len(), "examples"),
            TrainData::Triples { split, .. } => (split.train.len(), split.valid.len(), "triples"),
        }
    }

    /// What preparing the data found that the user should know (instruction runs: skipped
    /// records, truncated examples).
    pub fn notes(&self) -> &[String] {
        match self {
            TrainData::Instruct { notes, .. } => notes,
            _ => &[],
        }
    }

    /// Image runs: the number of classes (0 otherwise).
    pub fn classes(&self) -> usize {
        match self {
            TrainData::Images { train, .. } => train.classes.len(),
            TrainData::Texts { classes, .. } => classes.len(),
            _ => 0,
        }
    }
}

/// The model a run trains, with its objective.
// One per run: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum TrainModel {
    /// A causal LM (GPT-2, Llama), trained to predict the next token.
    Causal(CausalModel),
    /// BERT, trained with masked language modelling.
    Masked { model: Bert, objective: MaskedLm },
    /// An encoder-decoder model, trained on pairs with teacher forcing.
    Marian {
        model: Box<Marian>,
        target_tokenizer: Box<Tokenizer>,
    },
    /// A Vision Transformer with its image preprocessing, trained to classify.
    Vit {
        model: Box<Vit>,
        preprocessor: Box<Preprocessor>,
    },
    /// A text classifier (an encoder or decoder with a classification head).
    Text(Box<SequenceClassifier>),
    /// Knowledge-graph embeddings.
    TransE(Box<TransE>),
}

impl TrainModel {
    pub fn vocab_size(&self) -> usize {
        match self {
            TrainModel::Causal(m) => m.vocab_size(),
            TrainModel::Masked { model, .. } => model.config.vocab_size,
            TrainModel::Marian { model, .. } => model.config.vocab_size,
            TrainModel::Vit { .. } | TrainModel::Text(_) | TrainModel::TransE(_) => 0,
        }
    }

    pub fn max_positions(&self) -> usize {
        match self {
            TrainModel::Causal(m) => m.max_positions(),
            TrainModel::Masked { model, .. } => model.config.max_position_embeddings,
            TrainModel::Marian { model, .. } => model.config.max_position_embeddings,
            TrainModel::Vit { model, .. } => model.config.grid().pow(2) + 1,
            TrainModel::Text(m) => m.max_positions(),
            TrainModel::TransE(_) => 0,
        }
    }

    /// The same model built again from `store`: after [`ParamStore::freeze`], so frozen
    /// parameters enter it as constants.
    pub fn rebuild(self, store: &mut ParamStore) -> Result<Self> {
        Ok(match self {
            TrainModel::Causal(m) => TrainModel::Causal(CausalModel::new(&m.config(), store)?),
            TrainModel::Masked { model, objective } => {
                let heads = BertHeads {
                    pooler: model.pooler.is_some(),
                    mlm: model.mlm.is_some(),
                };
                TrainModel::Masked {
                    model: Bert::new(&model.config, store, heads)?,
                    objective,
                }
            }
            TrainModel::Marian {
                model,
                target_tokenizer,
            } => TrainModel::Marian {
                model: Box::new(Marian::new(&model.config, store)?),
                target_tokenizer,
            },
            TrainModel::Vit {
                model,
                preprocessor,
            } => TrainModel::Vit {
                model: Box::new(Vit::new(&model.config, store, model.classifier.is_some())?),
                preprocessor,
            },
            TrainModel::Text(m) => TrainModel::Text(Box::new(m.rebuild(store)?)),
            TrainModel::TransE(m) => TrainModel::TransE(Box::new(TransE::new(&m.config, store)?)),
        })
    }

    /// transformers' `model_type` of the body.
    pub fn model_type(&self) -> &str {
        match self {
            TrainModel::Causal(m) => m.model_type(),
            TrainModel::Masked { .. } => "bert",
            TrainModel::Marian { .. } => "marian",
            TrainModel::Vit { .. } => "vit",
            TrainModel::Text(m) => match &m.body {
                Body::Bert(_) => "bert",
                Body::Causal(c) => c.model_type(),
            },
            TrainModel::TransE(_) => "transe",
        }
    }

    /// The causal LM, for sampling after training.
    pub fn causal(&self) -> Option<&CausalModel> {
        match self {
            TrainModel::Causal(m) => Some(m),
            TrainModel::Masked { .. }
            | TrainModel::Marian { .. }
            | TrainModel::Vit { .. }
            | TrainModel::Text(_)
            | TrainModel::TransE(_) => None,
        }
    }

    fn uses_dropout(&self) -> bool {
        match self {
            TrainModel::Causal(m) => m.uses_dropout(),
            TrainModel::Masked { model, .. } => {
                model.config.hidden_dropout_prob > 0.0
                    || model.config.attention_probs_dropout_prob > 0.0
            }
            TrainModel::Marian { model, .. } => {
                let c = &model.config;
                c.dropout > 0.0 || c.attention_dropout > 0.0 || c.activation_dropout > 0.0
            }
            TrainModel::Vit { model, .. } => {
                let c = &model.config;
                c.hidden_dropout_prob > 0.0 || c.attention_probs_dropout_prob > 0.0
            }
            TrainModel::Text(m) => m.uses_dropout(),
            TrainModel::TransE(_) => false,
        }
    }

    /// Writes the Hugging Face model directory: config, weights, tokenizer (and for BERT the
    /// tokenizer config naming `[MASK]` and the other special tokens; for ViT the image
    /// processor's `preprocessor_config.json`).
    pub fn save_dir(
        &self,
        dir: &Path,
        store: &ParamStore,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<()> {
        match self {
            TrainModel::Causal(m) => models::save_dir(dir, &m.config(), store)?,
            TrainModel::Masked { model, .. } => {
                bert::save_dir(dir, model, store)?;
                if let Some(tok) = tokenizer {
                    tok.save_bert_config(
                        &dir.join("tokenizer_config.json"),
                        model.config.max_position_embeddings,
                    )?;
                }
            }
            TrainModel::Marian {
                model,
                target_tokenizer,
            } => {
                marian::save_dir(dir, model, store)?;
                target_tokenizer.save(&dir.join("target_tokenizer.json"))?;
            }
            TrainModel::Vit {
                model,
                preprocessor,
            } => {
                vit::save_dir(dir, model, store)?;
                preprocessor.save(&dir.join("preprocessor_config.json"))?;
            }
            TrainModel::TransE(m) => m.save_dir(dir, store, None)?,
            TrainModel::Text(m) => {
                sequence_classifier::save_dir(dir, m, store)?;
                if let (Body::Bert(b), Some(tok)) = (&m.body, tokenizer) {
                    tok.save_bert_config(
                        &dir.join("tokenizer_config.json"),
                        b.config.max_position_embeddings,
                    )?;
                }
            }
        }
        match tokenizer {
            Some(tok) => tok.save(&dir.join("tokenizer.json")),
            None => Ok(()),
        }
    }
}

/// What the loop reports as it goes.
pub enum Event<'a> {
    Eval(&'a EvalStats),
    Checkpoint(&'a Path),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished,
    Interrupted { step: usize, checkpoint: PathBuf },
}

/// A prepared training run.
pub struct Trainer {
    pub recipe: Recipe,
    pub model: TrainModel,
    pub store: ParamStore,
    /// The text models' tokenizer (none for images).
    pub tokenizer: Option<Tokenizer>,
    pub optimizer: AdamW,
    pub schedule: LrSchedule,
    pub data: TrainData,
    pub state: TrainerState,
    pub out_dir: PathBuf,
    metrics: MetricsLog,
    device: Device,
    /// Image runs: the current epoch and its permutation of the training images.
    epoch_order: std::sync::Mutex<Option<(usize, Vec<usize>)>>,
    /// The highest peak resident memory of the training steps in any logging window of this
    /// process (bytes; evaluation excluded).
    pub peak_step_rss: Option<u64>,
    /// Classification runs: the validation scores at the end of training.
    pub val_scores: Option<crate::classify::Scores>,
    /// Files carried over from the starting model into every checkpoint (a causal LM's
    /// tokenizer_config.json with its chat template, generation_config.json, ...).
    model_files: ModelFiles,
}

fn char_tokenizer(files: &[PathBuf]) -> Result<Tokenizer> {
    let mut chars = std::collections::BTreeSet::new();
    for f in files {
        for_each_chunk(f, 1 << 20, |text| {
            chars.extend(text.chars());
            Ok(())
        })?;
    }
    let s: String = chars.into_iter().collect();
    if s.is_empty() {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(Error::Data(format!(
            "the corpus is empty: {}",
            names.join(", ")
        )));
    }
    Tokenizer::train_char([s.as_str()])
}

/// A BERT of the recipe's sizes, for `tokenizer`'s vocabulary.
fn bert_config(recipe: &Recipe, tokenizer: &Tokenizer) -> BertConfig {
    let m = &recipe.model;
    let mut extra = serde_json::Map::new();
    if let Some(pad) = tokenizer.token_id("[PAD]") {
        extra.insert("pad_token_id".into(), json!(pad));
    }
    BertConfig {
        model_type: "bert".into(),
        vocab_size: tokenizer.vocab_size(),
        hidden_size: m.n_embd,
        num_hidden_layers: m.n_layer,
        num_attention_heads: m.n_head,
        intermediate_size: m.intermediate_size.unwrap_or(4 * m.n_embd),
        hidden_act: m.activation_function.clone(),
        hidden_dropout_prob: m.dropout,
        attention_probs_dropout_prob: m.dropout,
        max_position_embeddings: m.n_positions.unwrap_or(recipe.train.context),
        type_vocab_size: 2,
        initializer_range: m.init_std.unwrap_or(0.02),
        layer_norm_eps: m.layer_norm_epsilon,
        position_embedding_type: "absolute".into(),
        extra,
    }
}

/// The model a run starts from: its checkpoint, `model.init`, or fresh weights.
fn build_model(
    recipe: &Recipe,
    tokenizer: &Tokenizer,
    target: Option<&Tokenizer>,
    from: Option<&Path>,
    preloaded: Option<(CausalModel, ParamStore)>,
    device: &Device,
) -> Result<(TrainModel, ParamStore)> {
    if recipe.objective == "mlm" {
        let objective = MaskedLm::new(tokenizer, recipe.mlm)?;
        let (model, store) = match from {
            Some(dir) => bert::load_dir_for_mlm(dir, device, recipe.train.seed)?,
            None => {
                let heads = BertHeads {
                    pooler: false,
                    mlm: true,
                };
                Bert::init(
                    &bert_config(recipe, tokenizer),
                    heads,
                    device,
                    recipe.train.seed,
                )?
            }
        };
        return Ok((TrainModel::Masked { model, objective }, store));
    }
    if recipe.objective == "seq2seq" {
        let target_tokenizer = target.cloned().ok_or_else(|| {
            Error::Config("a sequence-to-sequence run needs a target vocabulary".into())
        })?;
        let (model, store) = match from {
            Some(dir) => marian::load_dir(dir, device)?,
            None => Marian::init(
                &seq2seq_config(recipe, tokenizer, &target_tokenizer),
                device,
                recipe.train.seed,
            )?,
        };
        return Ok((
            TrainModel::Marian {
                model: Box::new(model),
                target_tokenizer: Box::new(target_tokenizer),
            },
            store,
        ));
    }
    let (model, store) = match (preloaded, from) {
        (Some(loaded), _) => loaded,
        (None, Some(dir)) => models::load_dir(dir, device)?,
        (None, None) => {
            CausalModel::init(&model_config(recipe, tokenizer)?, device, recipe.train.seed)?
        }
    };
    Ok((TrainModel::Causal(model), store))
}

/// An encoder-decoder model of the recipe's sizes (`n_layer` layers on each side) with
/// separate source and target vocabularies, the output projection tied to the target
/// embeddings, Marian's ids (`<pad>` 0 also starts the decoder, `</s>` 1).
fn seq2seq_config(recipe: &Recipe, source: &Tokenizer, target: &Tokenizer) -> MarianConfig {
    let m = &recipe.model;
    let ffn = m.intermediate_size.unwrap_or(4 * m.n_embd);
    MarianConfig {
        model_type: "marian".into(),
        vocab_size: source.vocab_size(),
        decoder_vocab_size: Some(target.vocab_size()),
        d_model: m.n_embd,
        encoder_layers: m.n_layer,
        decoder_layers: m.n_layer,
        encoder_attention_heads: m.n_head,
        decoder_attention_heads: m.n_head,
        encoder_ffn_dim: ffn,
        decoder_ffn_dim: ffn,
        max_position_embeddings: m.n_positions.unwrap_or(recipe.train.context),
        activation_function: m.activation_function.clone(),
        dropout: m.dropout,
        attention_dropout: m.dropout,
        activation_dropout: m.dropout,
        init_std: m.init_std.unwrap_or(0.02),
        scale_embedding: true,
        pad_token_id: 0,
        eos_token_id: 1,
        decoder_start_token_id: 0,
        share_encoder_decoder_embeddings: false,
        tie_word_embeddings: m.tie_word_embeddings,
        extra: serde_json::Map::new(),
    }
}

/// A fresh causal LM of the recipe's family and sizes, for `tokenizer`'s vocabulary.
fn model_config(recipe: &Recipe, tokenizer: &Tokenizer) -> Result<ArchConfig> {
    let m = &recipe.model;
    let family = registry::by_name(&m.architecture)?;
    let sizes = Sizes {
        vocab_size: tokenizer.vocab_size(),
        hidden: m.n_embd,
        layers: m.n_layer,
        heads: m.n_head,
        kv_heads: m.n_kv_head,
        intermediate: m.intermediate_size,
        positions: m.n_positions.unwrap_or(recipe.train.context),
        activation: m.activation_function.clone(),
        dropout: m.dropout,
        tie_word_embeddings: m.tie_word_embeddings,
        position_encoding: m.position_encoding.clone(),
        norm_eps: m.layer_norm_epsilon,
        rope_theta: m.rope_theta,
        eot: tokenizer.token_id(EOT),
    };
    ArchConfig::from_box((family.causal()?.from_sizes)(&sizes)?)
}

/// Puts adapter `default` (configured by `cfg`, or read from the checkpoint `resume`) on
/// `model`, freezes everything it does not train, and returns the model rebuilt.
fn attach_adapter(
    model: TrainModel,
    store: &mut ParamStore,
    cfg: &crate::peft::PeftConfig,
    base: Option<&str>,
    resume: Option<&Path>,
    tokenizer: Option<&Tokenizer>,
) -> Result<TrainModel> {
    match resume {
        Some(ck) => crate::peft::adapter_io::load_adapter(store, ck, "default")?,
        None => {
            let mut cfg = cfg.clone();
            cfg.fill_default_targets(model.model_type())?;
            cfg.base_model_name_or_path = base.map(str::to_string);
            store.add_adapter("default", cfg, None)?;
        }
    }
    if let (None, Some(text), Some(tok)) =
        (resume, cfg.prompt_tuning_init_text.as_deref(), tokenizer)
    {
        if cfg.prompt_tuning_init.as_deref() == Some("TEXT") {
            init_prompt_from_text(store, cfg, text, tok)?;
        }
    }
    let model = model.rebuild(store)?;
    if store.peft().modules.is_empty() {
        let what = if cfg.peft_type.wraps_linear() {
            "linear layer"
        } else {
            "norm"
        };
        let mut names: Vec<String> = store
            .vars()
            .keys()
            .filter_map(|k| k.strip_suffix(".weight"))
            .filter_map(|m| m.rsplit('.').next())
            .map(str::to_string)
            .collect();
        names.sort();
        names.dedup();
        return Err(Error::Config(format!(
            "[peft] target_modules {} match no {what} of this model (module names end in: {})",
            serde_json::to_string(&cfg.target_modules).expect("serialises"),
            names.join(", ")
        )));
    }
    store.freeze_all_but_adapters()?;
    model.rebuild(store)
}

/// Prompt tuning's `TEXT` initialisation (as PEFT): the embeddings of the text's tokens,
/// repeated or cut to `num_virtual_tokens`.
fn init_prompt_from_text(
    store: &mut ParamStore,
    cfg: &crate::peft::PeftConfig,
    text: &str,
    tokenizer: &Tokenizer,
) -> Result<()> {
    let n = cfg.num_virtual_tokens.unwrap_or(0);
    let ids = tokenizer.encode(text)?;
    if ids.is_empty() {
        return Err(Error::Config(
            "prompt_tuning_init_text encodes to no tokens".into(),
        ));
    }
    let ids: Vec<u32> = ids.iter().cycle().take(n).copied().collect();
    let table = ["model.embed_tokens.weight", "transformer.wte.weight"]
        .iter()
        .find_map(|k| store.vars().get(*k))
        .ok_or_else(|| {
            Error::Config("prompt_tuning_init TEXT needs a dense token embedding table".into())
        })?
        .as_tensor()
        .detach();
    let rows = table.index_select(&Tensor::new(ids.as_slice(), table.device())?, 0)?;
    let key =
        crate::peft::registry::param_name("prompt_embeddings", "prompt_embeddings", "default");
    store.insert(&key, rows)
}

fn is_gguf(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|x| x == "gguf")
}

/// `files` split into those trained on and those held out whole for validation (whose file
/// names match one of `patterns`); each pattern must match a file.
fn held_out(files: &[PathBuf], patterns: &[String]) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let name = |f: &PathBuf| {
        f.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    for p in patterns {
        if !files.iter().any(|f| crate::io::glob_match(p, &name(f))) {
            return Err(Error::Config(format!(
                "data.val_files: {p:?} matches no corpus file ({} files, e.g. {})",
                files.len(),
                files
                    .iter()
                    .take(3)
                    .map(name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let (val, train): (Vec<PathBuf>, Vec<PathBuf>) = files
        .iter()
        .cloned()
        .partition(|f| patterns.iter().any(|p| crate::io::glob_match(p, &name(f))));
    if !patterns.is_empty() && train.is_empty() {
        return Err(Error::Config(
            "data.val_files holds out every corpus file; nothing is left to train on".into(),
        ));
    }
    Ok((train, val))
}

/// Files a causal LM's run directory carries over from the model it started from, so the
/// fine-tuned model keeps its special tokens and chat template (transformers' names).
const CARRIED_FILES: &[&str] = &[
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// What a run starts from besides weights: files written into every checkpoint verbatim.
type ModelFiles = Vec<(String, Vec<u8>)>;

/// The tokenizer, data and model of a text run (language modelling or sequence to sequence),
/// and the files a causal LM carries over from the model it starts from.
fn text_run(
    recipe: &Recipe,
    corpus: &[PathBuf],
    from: Option<&Path>,
    out_dir: &Path,
    device: &Device,
) -> Result<(Tokenizer, TrainData, TrainModel, ParamStore, ModelFiles)> {
    let files = corpus_files(corpus)?;
    let mut preloaded = None;
    let mut carried = ModelFiles::new();
    let mut model_template = None;
    let (tokenizer, data) = if recipe.objective == "seq2seq" {
        let lex = recipe.data.lexicon(&corpus[0])?;
        let tokenizers = match from {
            Some(dir) => Some((
                Tokenizer::load_dir(dir)?,
                Tokenizer::load(&dir.join("target_tokenizer.json"))?,
            )),
            None => None,
        };
        let d = &recipe.data;
        let max_len = recipe.model.n_positions.unwrap_or(recipe.train.context);
        let fractions = d.split_fractions();
        let (tok, pairs) =
            PairData::from_lexicon(&lex, d.split_seed, fractions, tokenizers, max_len)?;
        // The words of each part, so other tools (bench/g2p_torch.py) use the same split.
        let part = |p| -> Vec<&str> {
            lex.split(d.split_seed, fractions, p)
                .iter()
                .map(|e| e.word.as_str())
                .collect()
        };
        let data_dir = out_dir.join("data");
        std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
        crate::io::write_json_atomic(
            &data_dir.join("split.json"),
            &json!({
                "train": part(Part::Train), "valid": part(Part::Valid), "test": part(Part::Test),
            }),
        )?;
        (tok, TrainData::Pairs(Box::new(pairs)))
    } else {
        let tokenizer = if let Some(file) = from.filter(|p| is_gguf(p)) {
            // A llama.cpp file: its weights dequantized to f32, its own tokenizer.
            let p = crate::pretrained::Pretrained::from_gguf(file, device, recipe.model.quantized)?;
            for (name, v) in p.tokenizer_files() {
                let bytes = serde_json::to_vec_pretty(&v).expect("JSON serialises");
                carried.push((name.to_string(), bytes));
            }
            model_template = p.chat().ok();
            preloaded = Some((p.model, p.store));
            p.tokenizer
        } else if let Some(dir) = from {
            model_template = crate::pretrained::Pretrained::dir_chat_template(dir)?;
            if matches!(recipe.objective.as_str(), "clm" | "sft") {
                for name in CARRIED_FILES {
                    let path = dir.join(name);
                    if path.is_file() {
                        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                        carried.push((name.to_string(), bytes));
                    }
                }
            }
            Tokenizer::load_dir(dir)?
        } else {
            let d = &recipe.data;
            match d.tokenizer.as_str() {
                "char" => char_tokenizer(&files)?,
                "bpe" => Tokenizer::train_bpe(&files, d.vocab_size, 2)?,
                "wordpiece" => Tokenizer::train_wordpiece(&files, d.vocab_size, 2, d.lowercase)?,
                path => Tokenizer::load(Path::new(path))?,
            }
        };
        if recipe.objective == "sft" {
            let data = instruct_data(recipe, corpus, &tokenizer, model_template.as_ref())?;
            (tokenizer, data)
        } else {
            // Held-out files go last, so the validation range is exactly their tokens.
            let (train_files, val_files) = held_out(&files, &recipe.data.val_files)?;
            let ordered: Vec<PathBuf> = train_files.iter().chain(&val_files).cloned().collect();
            let shard =
                TokenShard::build_or_open(&ordered, &tokenizer, &out_dir.join("data/tokens.bin"))?;
            let (train, val) = if val_files.is_empty() {
                shard.split(recipe.data.val_fraction, recipe.train.context)?
            } else {
                shard.split_files(train_files.len(), recipe.train.context)?
            };
            (tokenizer, TrainData::Tokens { shard, train, val })
        }
    };
    tokenizer.save(&out_dir.join("tokenizer.json"))?;

    let target = match &data {
        TrainData::Pairs(p) => Some(&p.target_tokenizer),
        _ => None,
    };
    let (model, store) = build_model(recipe, &tokenizer, target, from, preloaded, device)?;
    if model.vocab_size() < tokenizer.vocab_size() {
        return Err(Error::Config(format!(
            "the model's vocab_size ({}) is smaller than the tokenizer's ({})",
            model.vocab_size(),
            tokenizer.vocab_size()
        )));
    }
    if matches!(data, TrainData::Tokens { .. }) && model.max_positions() < recipe.train.context {
        return Err(Error::Config(format!(
            "train.context ({}) exceeds the model's maximum positions ({})",
            recipe.train.context,
            model.max_positions()
        )));
    }

    Ok((tokenizer, data, model, store, carried))
}

/// The instruction examples of an `sft` run: read from `corpus`, rendered with the template,
/// tokenised with their trained positions, split (seeded, `data.val_fraction` of the examples
/// held out) and arranged in rows (packed best-fit decreasing with `sft.packing`).
fn instruct_data(
    recipe: &Recipe,
    corpus: &[PathBuf],
    tokenizer: &Tokenizer,
    own_template: Option<&ChatTemplate>,
) -> Result<TrainData> {
    let mut examples = vec![];
    let mut notes = vec![];
    for path in corpus {
        let (ex, report) = crate::data::instruct::read(path)?;
        if let Some(s) = report.summary() {
            notes.push(format!("{}: {s}", path.display()));
        }
        examples.extend(ex);
    }
    // Plain prompt-completion text needs no template.
    let needs_template = examples
        .iter()
        .any(|e| !matches!(e, crate::data::instruct::Example::Text { .. }));
    let template = if needs_template {
        Some(sft::resolve_template(
            &recipe.sft.template,
            own_template,
            tokenizer,
        )?)
    } else {
        None
    };
    let s = &recipe.sft;
    let context = recipe.train.context;
    let (mut all, report) = sft::tokenize_all(
        &examples,
        template.as_ref(),
        tokenizer,
        s.train_on == "all",
        context,
        sft::Overflow::parse(&s.overflow)?,
    )?;
    if report.truncated + report.dropped > 0 {
        notes.push(format!(
            "of {} examples, {} longer than train.context ({context}) were {}, {} left out{}",
            report.examples,
            report.truncated
                + if s.overflow == "drop" {
                    report.dropped
                } else {
                    0
                },
            if s.overflow == "drop" {
                "left out"
            } else {
                "truncated"
            },
            report.dropped,
            if s.overflow == "drop" {
                ""
            } else {
                " (nothing left to train)"
            }
        ));
    }
    if all.is_empty() {
        return Err(Error::Data(
            "no instruction example has anything to train".into(),
        ));
    }
    let mut rng = Rng::new(recipe.data.split_seed);
    rng.shuffle(&mut all);
    let n_val = if recipe.data.val_fraction > 0.0 && all.len() > 1 {
        ((all.len() as f64 * recipe.data.val_fraction).round() as usize).clamp(1, all.len() - 1)
    } else {
        0
    };
    let train = all.split_off(n_val);
    let val = all;
    let rows = |set: &[Tokenized]| -> Vec<Vec<usize>> {
        if s.packing {
            let lengths: Vec<usize> = set.iter().map(|e| e.ids.len()).collect();
            sft::pack_bfd(&lengths, context)
        } else {
            (0..set.len()).map(|i| vec![i]).collect()
        }
    };
    Ok(TrainData::Instruct {
        train_rows: rows(&train),
        val_rows: rows(&val),
        train,
        val,
        packed: s.packing,
        notes,
    })
}

/// The tokenizer, data and model of a text classification run: the labelled texts of the
/// corpus files, split by `data.folds` / `data.fold` (stratified k-fold) or `data.val_fraction`
/// (seeded), and the pretrained model in `from` with a classification head (its own, or a fresh
/// one for the data's classes).
fn text_classification_run(
    recipe: &Recipe,
    corpus: &[PathBuf],
    from: Option<&Path>,
    out_dir: &Path,
    device: &Device,
) -> Result<(Tokenizer, TrainData, TrainModel, ParamStore)> {
    let from = from.ok_or_else(|| {
        Error::Config(
            "text classification fine-tunes a pretrained model: set model.init or pass --from"
                .into(),
        )
    })?;
    if is_gguf(from) {
        return Err(Error::format(
            from,
            "a classifier starts from a model directory; convert the GGUF file first (ferroformer convert)",
        ));
    }
    let mut examples = vec![];
    for f in corpus_files(corpus)? {
        examples.extend(crate::data::labelled::read_labelled(
            &f,
            &recipe.data.encoding,
        )?);
    }
    let data_classes = crate::data::labelled::label_names(&examples);
    let pooling = recipe
        .model
        .pooling
        .as_deref()
        .map(Pooling::parse)
        .transpose()?;
    let (model, store) = sequence_classifier::load_dir(
        from,
        device,
        Some(&data_classes),
        pooling,
        recipe.train.seed,
    )?;
    let tokenizer = Tokenizer::load_dir(from)?;
    let classes = model.labels.clone();
    let encoded: Vec<(Vec<u32>, u32)> = examples
        .iter()
        .map(|e| {
            let label = classes
                .iter()
                .position(|c| *c == e.label)
                .expect("load_dir checked the labels") as u32;
            Ok((
                model.encode(&tokenizer, &e.text, recipe.train.context)?,
                label,
            ))
        })
        .collect::<Result<_>>()?;
    let d = &recipe.data;
    let (train_idx, val_idx) = if d.folds >= 2 {
        let labels: Vec<usize> = encoded.iter().map(|(_, l)| *l as usize).collect();
        let fold_of = crate::data::labelled::stratified_folds(&labels, d.folds, d.split_seed)?;
        let k = d.fold.ok_or_else(|| {
            Error::Config(format!(
                "data.folds is {}: name the held-out fold with data.fold",
                d.folds
            ))
        })?;
        (0..encoded.len()).partition(|&i| fold_of[i] != k)
    } else {
        images::split_indices(encoded.len(), d.val_fraction, d.split_seed)
    };
    if train_idx.is_empty() {
        return Err(Error::Data("no training texts left after the split".into()));
    }
    let data_dir = out_dir.join("data");
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
    crate::io::write_json_atomic(
        &data_dir.join("split.json"),
        &json!({ "val": val_idx, "classes": classes }),
    )?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| encoded[i].clone()).collect();
    let data = TrainData::Texts {
        train: pick(&train_idx),
        val: pick(&val_idx),
        classes,
    };
    tokenizer.save(&out_dir.join("tokenizer.json"))?;
    Ok((tokenizer, data, TrainModel::Text(Box::new(model)), store))
}

/// The data and model of an image classification run: the training images less a seeded
/// `data.val_fraction` held out for validation, and a fresh ViT of the recipe's sizes for them
/// (its preprocessing normalises each channel with the training images' mean and deviation),
/// or the ViT in `from` with its own preprocessing.
fn image_run(
    recipe: &Recipe,
    root: &Path,
    from: Option<&Path>,
    out_dir: &Path,
    device: &Device,
) -> Result<(TrainData, TrainModel, ParamStore)> {
    let d = &recipe.data;
    let loaded = match from {
        Some(dir) => {
            let (model, store) = vit::load_dir(dir, device)?;
            let pre = Preprocessor::load(
                &dir.join("preprocessor_config.json"),
                model.config.num_channels,
            )?;
            Some((model, store, pre))
        }
        None => None,
    };
    let channels = loaded.as_ref().map(|(m, _, _)| m.config.num_channels);
    let all = images::read_dataset(root, ImageSplit::Train, channels, &d.labels)?;
    let (train, val) = all.split_off(d.val_fraction, d.split_seed);
    // The held-out images' indices, so other tools (bench/vit_torch.py) use the same split.
    let (_, held) = images::split_indices(all.len(), d.val_fraction, d.split_seed);
    let data_dir = out_dir.join("data");
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
    crate::io::write_json_atomic(&data_dir.join("split.json"), &json!({ "val": held }))?;
    if train.is_empty() {
        return Err(Error::format(
            root,
            format!(
                "no training images ({} read, data.val_fraction {})",
                all.len(),
                d.val_fraction
            ),
        ));
    }
    let (model, store, pre) = match loaded {
        Some((model, store, pre)) => {
            let n = model.config.labels()?.len();
            if train.classes.len() > n {
                return Err(Error::Config(format!(
                    "the data has {} classes, the model {n}",
                    train.classes.len()
                )));
            }
            (model, store, pre)
        }
        None => {
            let m = &recipe.model;
            if train.height != train.width {
                return Err(Error::format(
                    root,
                    format!(
                        "a ViT takes square images; these are {}x{}",
                        train.width, train.height
                    ),
                ));
            }
            let patch = m
                .patch_size
                .ok_or_else(|| Error::Config("model.patch_size is needed to build a ViT".into()))?;
            if !train.height.is_multiple_of(patch) {
                return Err(Error::Config(format!(
                    "model.patch_size {patch} does not divide the {}-pixel images",
                    train.height
                )));
            }
            let mut config = VitConfig {
                model_type: "vit".into(),
                hidden_size: m.n_embd,
                num_hidden_layers: m.n_layer,
                num_attention_heads: m.n_head,
                intermediate_size: m.intermediate_size.unwrap_or(4 * m.n_embd),
                hidden_act: m.activation_function.clone(),
                hidden_dropout_prob: m.dropout,
                attention_probs_dropout_prob: m.dropout,
                initializer_range: m.init_std.unwrap_or(0.02),
                layer_norm_eps: m.layer_norm_epsilon,
                image_size: train.height,
                patch_size: patch,
                num_channels: train.channels,
                qkv_bias: true,
                id2label: Default::default(),
                label2id: Default::default(),
                extra: Default::default(),
            };
            config.set_labels(&train.classes);
            let (model, store) = Vit::init(&config, device, recipe.train.seed)?;
            let (mean, std) = train.channel_stats();
            let pre = Preprocessor::new(train.height, train.width, mean, std);
            (model, store, pre)
        }
    };
    Ok((
        TrainData::Images { train, val },
        TrainModel::Vit {
            model: Box::new(model),
            preprocessor: Box::new(pre),
        },
        store,
    ))
}

/// `b` image indices for samples `first..first + b` of a run that goes through `n` images in
/// epochs, each a fresh permutation seeded by `seed` and the epoch number (so resuming at a
/// step reproduces them). `cache` keeps the current epoch's permutation between batches.
fn epoch_indices(
    n: usize,
    first: usize,
    b: usize,
    seed: u64,
    cache: &std::sync::Mutex<Option<(usize, Vec<usize>)>>,
) -> Vec<usize> {
    let mut perm = cache.lock().unwrap_or_else(|e| e.into_inner());
    (first..first + b)
        .map(|k| {
            let epoch = k / n;
            if perm
                .as_ref()
                .is_none_or(|(e, p)| *e != epoch || p.len() != n)
            {
                let mut p: Vec<usize> = (0..n).collect();
                Rng::new(seed).fork(1000 + epoch as u64).shuffle(&mut p);
                *perm = Some((epoch, p));
            }
            perm.as_ref().expect("set above").1[k % n]
        })
        .collect()
}

/// A TransE run: the split directory's triples and fresh (or `from`'s) embeddings, sized
/// by the split.
fn transe_run(
    recipe: &Recipe,
    split_dir: &Path,
    from: Option<&Path>,
    device: &Device,
) -> Result<(TrainData, TrainModel, ParamStore)> {
    let split = crate::semnet::kg::KgSplit::load(split_dir)?;
    let config = TransEConfig {
        model_type: "transe".into(),
        n_entities: split.entities.len(),
        n_relations: split.relations.len(),
        dim: recipe.model.n_embd,
        norm: recipe.transe.norm,
        margin: recipe.transe.margin,
    };
    let mut store = match from {
        Some(dir) => {
            let path = dir.join("model.safetensors");
            let tensors = crate::io::safetensors::load(&path, device)?;
            let mut s = ParamStore::from_tensors(tensors, device, Some(&path))?;
            s.allow_init(recipe.train.seed);
            s
        }
        None => ParamStore::new_init(device, recipe.train.seed),
    };
    let model = TransE::new(&config, &mut store)?;
    let known = split.known();
    Ok((
        TrainData::Triples {
            split: Box::new(split),
            known,
        },
        TrainModel::TransE(Box::new(model)),
        store,
    ))
}

/// Cross-entropy (label-smoothed by `smoothing`) of a ViT's class logits for images `x`, and
/// how many it classifies right.
fn image_loss(
    model: &Vit,
    x: &Tensor,
    labels: &[u32],
    smoothing: f64,
    dropout: Option<&mut Rng>,
) -> Result<(Tensor, usize)> {
    let logits = model.logits(&model.forward(x, false, dropout)?)?;
    let y = Tensor::new(labels, x.device())?;
    let loss = crate::objective::seq2seq::smoothed_cross_entropy(&logits, &y, smoothing)?;
    let predicted = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
    let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    Ok((loss, correct))
}

impl Trainer {
    /// Prepares a run: tokenizer, token shard, model and optimizer, either fresh or (with
    /// `resume`) from the newest checkpoint in the recipe's `out_dir`.
    pub fn prepare(recipe: Recipe, resume: bool, device: &Device) -> Result<Self> {
        let out_dir = PathBuf::from(&recipe.train.out_dir);
        let checkpoints = checkpoint::list_checkpoints(&out_dir)?;
        let resume_from = if resume {
            Some(checkpoints.last().cloned().ok_or_else(|| {
                Error::format(
                    &out_dir,
                    "nothing to resume: the run directory has no checkpoint-<step> folder",
                )
            })?)
        } else {
            if !checkpoints.is_empty() {
                return Err(Error::format(
                    &out_dir,
                    "this run directory already holds checkpoints; pass --resume to continue it, or set train.out_dir to a new directory",
                ));
            }
            None
        };
        std::fs::create_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, e))?;

        let corpus: Vec<PathBuf> = recipe
            .data
            .corpus
            .iter()
            .map(|c| assets::resolve(c))
            .collect::<Result<_>>()?;
        // An adapter run resumes from its base: the checkpoint holds only the adapter.
        let from = match (&resume_from, &recipe.model.init) {
            (Some((_, ck)), _) if recipe.peft.is_none() => Some(ck.clone()),
            (_, Some(init)) => Some(crate::pretrained::resolve_model(init)?),
            (_, None) => None,
        };
        if recipe.model.quantized && !from.as_deref().is_some_and(is_gguf) {
            return Err(Error::Config(
                "model.quantized needs a .gguf model.init (the base whose matrices stay quantized)"
                    .into(),
            ));
        }
        let (tokenizer, data, mut model, mut store, model_files) = if recipe
            .is_text_classification()
        {
            let (tokenizer, data, model, store) =
                text_classification_run(&recipe, &corpus, from.as_deref(), &out_dir, device)?;
            (Some(tokenizer), data, model, store, vec![])
        } else if recipe.objective == "transe" {
            let (data, model, store) = transe_run(&recipe, &corpus[0], from.as_deref(), device)?;
            (None, data, model, store, vec![])
        } else if recipe.objective == "classify" {
            let (data, model, store) =
                image_run(&recipe, &corpus[0], from.as_deref(), &out_dir, device)?;
            (None, data, model, store, vec![])
        } else {
            let (tokenizer, data, model, store, files) =
                text_run(&recipe, &corpus, from.as_deref(), &out_dir, device)?;
            (Some(tokenizer), data, model, store, files)
        };
        let spec = crate::peft::FreezeSpec {
            freeze: recipe.train.freeze.clone(),
            train_only: recipe.train.train_only.clone(),
        };
        if spec != crate::peft::FreezeSpec::default() {
            let names: Vec<&str> = store.vars().keys().map(String::as_str).collect();
            let frozen = crate::peft::frozen_names(&names, &spec)?;
            store.freeze(&frozen)?;
            model = model.rebuild(&mut store)?;
        }
        if let Some(cfg) = &recipe.peft {
            model = attach_adapter(
                model,
                &mut store,
                cfg,
                recipe.model.init.as_deref(),
                resume_from.as_ref().map(|(_, ck)| ck.as_path()),
                tokenizer.as_ref(),
            )?;
        }

        let t = &recipe.train;
        let mut optimizer = AdamW::new(AdamWConfig {
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            weight_decay: t.weight_decay,
        });
        if matches!(model, TrainModel::TransE(_)) {
            optimizer.no_decay = crate::semnet::transe::NO_DECAY.to_vec();
        }
        let mut state = match &resume_from {
            Some((_, ck)) => {
                let st = checkpoint::load_state(ck)?;
                optimizer.load(&ck.join("optimizer.safetensors"), &store, st.step as u64)?;
                st
            }
            None => {
                let root = Rng::new(t.seed);
                TrainerState {
                    step: 0,
                    data_rng: root.fork(1),
                    dropout_rng: root.fork(2),
                    tokens_seen: 0,
                    best_val_loss: None,
                    elapsed_s: 0.0,
                    trainable: None,
                }
            }
        };
        state.trainable = Some(store.trainable_count());
        let schedule = LrSchedule {
            lr: t.lr,
            min_lr: t.min_lr,
            warmup_steps: t.warmup_steps,
            decay_steps: t.decay_steps.unwrap_or(t.steps),
        };
        crate::io::write_atomic(&out_dir.join("recipe.toml"), recipe.to_toml().as_bytes())?;
        let metrics = MetricsLog::open(
            &out_dir.join("metrics.jsonl"),
            resume_from.as_ref().map(|_| state.step),
        )?;
        Ok(Trainer {
            recipe,
            model,
            store,
            tokenizer,
            optimizer,
            schedule,
            data,
            state,
            out_dir,
            metrics,
            device: device.clone(),
            epoch_order: Default::default(),
            peak_step_rss: None,
            val_scores: None,
            model_files,
        })
    }

    /// Loss of one batch drawn from the training (`val` false) or validation data, with the
    /// tokens it holds (padding excluded) and, for the masked LM, the masked positions and
    /// correct predictions (for images, the images and those classified right). `dropout`
    /// enables dropout; `train` marks a training step's batch (`micro` of the step's
    /// micro-batches): the causal LM's fused training loss, images in epochs of a seeded
    /// permutation and augmented.
    fn batch_loss(
        &self,
        val: bool,
        rng: &mut Rng,
        dropout: Option<&mut Rng>,
        train: bool,
        micro: usize,
    ) -> Result<BatchLoss> {
        let (b, t) = (self.recipe.train.batch_size, self.recipe.train.context);
        let device = &self.device;
        match (&self.model, &self.data) {
            (
                TrainModel::Causal(m),
                TrainData::Tokens {
                    shard,
                    train: tr,
                    val: va,
                },
            ) => {
                let split = if val { *va } else { *tr };
                let (x, y) = shard.sample_batch(split, b, t, rng);
                let x = Tensor::from_vec(x, (b, t), device)?;
                let y = Tensor::from_vec(y, (b, t), device)?;
                let loss = if train {
                    CausalLm::train_loss(m, &x, &y, dropout)?
                } else {
                    CausalLm::loss(m, &x, &y, dropout)?
                };
                Ok(BatchLoss {
                    loss,
                    tokens: b * t,
                    hits: None,
                })
            }
            (
                TrainModel::Masked { model, objective },
                TrainData::Tokens {
                    shard,
                    train: tr,
                    val: va,
                },
            ) => {
                let split = if val { *va } else { *tr };
                let batch = objective.batch(shard, split, b, t, rng, device)?;
                let l = objective.loss(model, &batch, dropout)?;
                Ok(BatchLoss {
                    loss: l.loss,
                    tokens: b * t,
                    hits: Some((l.count, l.correct)),
                })
            }
            (
                TrainModel::Causal(m),
                TrainData::Instruct {
                    train: tr,
                    val: va,
                    train_rows,
                    val_rows,
                    packed,
                    ..
                },
            ) => {
                let (set, rows) = if val {
                    (va, val_rows)
                } else {
                    (tr, train_rows)
                };
                let idx = self.example_indices(rows.len(), train, micro, rng);
                let batch_rows: Vec<Vec<&Tokenized>> = idx
                    .iter()
                    .map(|&r| rows[r].iter().map(|&i| &set[i]).collect())
                    .collect();
                let pad = self
                    .tokenizer
                    .as_ref()
                    .and_then(|t| t.token_id(EOT))
                    .unwrap_or(0);
                let batch = SftBatch::new(&batch_rows, *packed, t, pad, device)?;
                let loss = sft::loss(m, &batch, dropout, train)?;
                Ok(BatchLoss {
                    loss,
                    tokens: batch_rows.iter().flatten().map(|e| e.ids.len()).sum(),
                    hits: None,
                })
            }
            (TrainModel::Marian { model, .. }, TrainData::Pairs(p)) => {
                let pairs = if val { &p.valid } else { &p.train };
                let c = &model.config;
                let grouped = !val && self.recipe.train.group_by_length;
                let drawn = sample(pairs, b, grouped, rng);
                let tokens = drawn.iter().map(|p| p.src.len() + p.tgt.len()).sum();
                let batch = pad_batch(&drawn, c.pad_token_id, c.decoder_start_token_id, device)?;
                let (mut loss, _) =
                    pair_loss(model, &batch, self.recipe.train.label_smoothing, dropout)?;
                if grouped {
                    loss = (loss * grouped_loss_scale(&drawn, p.mean_target_len))?;
                }
                Ok(BatchLoss {
                    loss,
                    tokens,
                    hits: None,
                })
            }
            (
                TrainModel::Vit {
                    model,
                    preprocessor,
                },
                TrainData::Images { train: tr, val: va },
            ) => {
                let set = if val { va } else { tr };
                let idx = self.example_indices(set.len(), train, micro, rng);
                let aug = train.then_some((&self.recipe.augment, &mut *rng));
                let (x, labels) = crate::classify::batch(set, &idx, preprocessor, aug, device)?;
                let (loss, correct) = image_loss(
                    model,
                    &x,
                    &labels,
                    self.recipe.train.label_smoothing,
                    dropout,
                )?;
                Ok(BatchLoss {
                    loss,
                    tokens: b,
                    hits: Some((b, correct)),
                })
            }
            (
                TrainModel::Text(model),
                TrainData::Texts {
                    train: tr, val: va, ..
                },
            ) => {
                let set = if val { va } else { tr };
                let idx = self.example_indices(set.len(), train, micro, rng);
                let seqs: Vec<&[u32]> = idx.iter().map(|&i| set[i].0.as_slice()).collect();
                let labels: Vec<u32> = idx.iter().map(|&i| set[i].1).collect();
                let (loss, correct) = crate::classify::text_loss(
                    model,
                    &seqs,
                    &labels,
                    self.recipe.train.label_smoothing,
                    dropout,
                )?;
                Ok(BatchLoss {
                    loss,
                    tokens: seqs.iter().map(|s| s.len()).sum(),
                    hits: Some((b, correct)),
                })
            }
            (TrainModel::TransE(model), TrainData::Triples { split, .. }) => {
                let set = if val { &split.valid } else { &split.train };
                let idx = self.example_indices(set.len(), train, micro, rng);
                let pos: Vec<_> = idx.iter().map(|&i| set[i]).collect();
                let neg = TransE::corrupt(&pos, model.config.n_entities, rng);
                let l = model.margin_loss(&pos, &neg)?;
                Ok(BatchLoss {
                    loss: l.loss,
                    tokens: b,
                    hits: Some((b, l.correct)),
                })
            }
            _ => Err(Error::Config(
                "this model cannot be trained on this kind of data".into(),
            )),
        }
    }

    /// Classification runs: the `batch_size` examples (of `n`) of a batch: for training, the
    /// next ones of the epoch's seeded permutation (`micro` of the step's micro-batches);
    /// otherwise drawn at random from `rng`.
    fn example_indices(&self, n: usize, train: bool, micro: usize, rng: &mut Rng) -> Vec<usize> {
        let t = &self.recipe.train;
        let b = t.batch_size;
        if train {
            let first = (self.state.step * t.grad_accum + micro) * b;
            epoch_indices(n, first, b, t.seed, &self.epoch_order)
        } else {
            (0..b).map(|_| rng.below(n as u64) as usize).collect()
        }
    }

    /// Error rates of greedy outputs for the first `eval_iters * batch_size` validation inputs
    /// (sequence-to-sequence runs).
    pub fn error_rates(
        &self,
        limit: usize,
    ) -> Result<Option<crate::objective::seq2seq::ErrorRates>> {
        let (TrainModel::Marian { model, .. }, TrainData::Pairs(p)) = (&self.model, &self.data)
        else {
            return Ok(None);
        };
        let refs = &p.valid_refs[..limit.min(p.valid_refs.len())];
        let eos = model.config.eos_token_id;
        let opts = crate::translate::DecodeOptions {
            max_new_tokens: model.config.max_position_embeddings,
            ..Default::default()
        };
        let mut outputs = Vec::with_capacity(refs.len());
        for chunk in refs.chunks(self.recipe.train.batch_size.max(1) * 4) {
            let srcs: Vec<Vec<u32>> = chunk.iter().map(|(s, _)| s.clone()).collect();
            let decoded = crate::translate::decode_ids(&[model], &srcs, &opts)?;
            outputs.extend(decoded.into_iter().map(|(tokens, _)| tokens));
        }
        let references: Vec<Vec<Vec<u32>>> = refs
            .iter()
            .map(|(_, r)| {
                r.iter()
                    .map(|t| crate::translate::strip_eos(t, eos).to_vec())
                    .collect()
            })
            .collect();
        Ok(Some(crate::objective::seq2seq::error_rates(
            &outputs,
            &references,
        )))
    }

    /// One optimizer step (over `grad_accum` micro-batches).
    pub fn train_step(&mut self) -> Result<StepStats> {
        let t = &self.recipe.train;
        let accum = t.grad_accum;
        let mut acc = GradAccumulator::default();
        let mut loss_sum = 0f64;
        let mut tokens = 0usize;
        let dropout = self.model.uses_dropout();
        let adapter_dropout = self
            .store
            .peft()
            .adapters
            .iter()
            .any(|a| a.config.lora_dropout > 0.0);
        for micro in 0..accum {
            let mut rng = self.state.data_rng;
            let mut drop_rng = self.state.dropout_rng;
            // Adapter dropout draws from its own stream, seeded from the saved one, so a
            // resumed run drops the same inputs.
            self.store
                .peft()
                .set_dropout(adapter_dropout.then(|| Rng::new(drop_rng.next_u64())));
            let batch = self.batch_loss(
                false,
                &mut rng,
                dropout.then_some(&mut drop_rng),
                true,
                micro,
            );
            self.store.peft().set_dropout(None);
            let BatchLoss {
                loss, tokens: n, ..
            } = batch?;
            tokens += n;
            self.state.data_rng = rng;
            self.state.dropout_rng = drop_rng;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(Error::Training(format!(
                    "loss is {value} at step {}; try a lower train.lr (now {})",
                    self.state.step + 1,
                    t.lr
                )));
            }
            loss_sum += value;
            let loss = if accum > 1 {
                (loss / accum as f64)?
            } else {
                loss
            };
            acc.add(&self.store, &loss.backward()?)?;
        }
        let (scale, grad_norm) = if t.grad_clip > 0.0 {
            acc.clip_scale(t.grad_clip)?
        } else {
            (1.0, acc.global_norm()?)
        };
        let lr = self.schedule.at(self.state.step);
        self.optimizer.step(&self.store, acc.grads(), lr, scale)?;
        self.state.step += 1;
        self.state.tokens_seen += tokens as u64;
        Ok(StepStats {
            step: self.state.step,
            tokens,
            loss: loss_sum / accum as f64,
            lr,
            grad_norm,
        })
    }

    /// Mean loss over `eval_iters` batches of each split (for the masked LM also the accuracy
    /// over all masked positions). The batches, and their masks, are the same at every
    /// evaluation (a fixed seed), so the numbers are comparable across steps.
    pub fn evaluate(&self) -> Result<EvalStats> {
        let t = &self.recipe.train;
        let mean = |val: bool, stream: u64| -> Result<(f64, Option<f64>)> {
            let mut rng = Rng::new(t.seed).fork(stream);
            let (mut sum, mut count, mut correct) = (0f64, 0usize, 0usize);
            for _ in 0..t.eval_iters {
                let BatchLoss { loss, hits, .. } =
                    self.batch_loss(val, &mut rng, None, false, 0)?;
                sum += loss.to_scalar::<f32>()? as f64;
                if let Some((n, c)) = hits {
                    count += n;
                    correct += c;
                }
            }
            let accuracy = (count > 0).then(|| correct as f64 / count as f64);
            Ok((sum / t.eval_iters as f64, accuracy))
        };
        let (train_loss, train_accuracy) = mean(false, 100)?;
        let has_val = match &self.data {
            TrainData::Tokens { val, .. } => val.len() > t.context,
            TrainData::Pairs(p) => !p.valid.is_empty(),
            TrainData::Images { val, .. } => !val.is_empty(),
            TrainData::Texts { val, .. } => !val.is_empty(),
            TrainData::Instruct { val, .. } => !val.is_empty(),
            TrainData::Triples { split, .. } => !split.valid.is_empty(),
        };
        let (val_loss, val_accuracy) = if let (true, Some((l, a))) = (has_val, self.full_val()?) {
            (Some(l), Some(a))
        } else if has_val {
            let (l, a) = mean(true, 101)?;
            (Some(l), a)
        } else {
            (None, None)
        };
        Ok(EvalStats {
            step: self.state.step,
            train_loss,
            val_loss,
            train_accuracy,
            val_accuracy,
            val_error_rates: self.error_rates(t.eval_iters * t.batch_size)?,
        })
    }

    /// Classification runs: mean loss and accuracy over every validation example (so the
    /// accuracy is the held-out set's); `None` for other runs.
    fn full_val(&self) -> Result<Option<(f64, f64)>> {
        let bs = self.recipe.train.batch_size;
        let (mut sum, mut correct, n) = (
            0f64,
            0usize,
            match &self.data {
                TrainData::Images { val, .. } => val.len(),
                TrainData::Texts { val, .. } => val.len(),
                _ => return Ok(None),
            },
        );
        let all: Vec<usize> = (0..n).collect();
        for chunk in all.chunks(bs) {
            let (loss, c) = match (&self.model, &self.data) {
                (
                    TrainModel::Vit {
                        model,
                        preprocessor,
                    },
                    TrainData::Images { val, .. },
                ) => {
                    let (x, labels) =
                        crate::classify::batch(val, chunk, preprocessor, None, &self.device)?;
                    image_loss(model, &x, &labels, 0.0, None)?
                }
                (TrainModel::Text(model), TrainData::Texts { val, .. }) => {
                    let seqs: Vec<&[u32]> = chunk.iter().map(|&i| val[i].0.as_slice()).collect();
                    let labels: Vec<u32> = chunk.iter().map(|&i| val[i].1).collect();
                    crate::classify::text_loss(model, &seqs, &labels, 0.0, None)?
                }
                _ => return Ok(None),
            };
            sum += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            correct += c;
        }
        Ok(Some((
            sum / n.max(1) as f64,
            correct as f64 / n.max(1) as f64,
        )))
    }

    /// Classification runs: the validation set's scores (accuracy, macro-F1, confusion
    /// matrix), as `confusion.json` and `confusion.png` in the run directory.
    fn write_confusion(&mut self) -> Result<()> {
        let bs = self.recipe.train.batch_size;
        let s = match (&self.model, &self.data) {
            (
                TrainModel::Vit {
                    model,
                    preprocessor,
                },
                TrainData::Images { val, .. },
            ) if !val.is_empty() => crate::classify::score(model, preprocessor, val, bs)?,
            (TrainModel::Text(model), TrainData::Texts { val, .. }) if !val.is_empty() => {
                crate::classify::score_texts(model, val, bs)?
            }
            _ => return Ok(()),
        };
        crate::io::write_json_atomic(&self.out_dir.join("confusion.json"), &s)?;
        crate::train::plot::plot_confusion(
            &s.confusion,
            &s.classes,
            &format!(
                "validation set ({}), accuracy {:.2}%, macro-F1 {:.4}",
                s.n,
                100.0 * s.accuracy,
                s.macro_f1
            ),
            &self.out_dir.join("confusion.png"),
        )?;
        self.val_scores = Some(s);
        Ok(())
    }

    /// Saves `checkpoint-<step>` and refreshes the run directory's model.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let recipe_toml = self.recipe.to_toml();
        checkpoint::save(
            &self.out_dir,
            &Checkpoint {
                model: &self.model,
                store: &self.store,
                tokenizer: self.tokenizer.as_ref(),
                optimizer: &self.optimizer,
                state: &self.state,
                recipe_toml: &recipe_toml,
                files: &self.model_files,
                adapter_base: self
                    .recipe
                    .peft
                    .as_ref()
                    .and(self.recipe.model.init.as_deref()),
            },
            self.recipe.train.keep_checkpoints,
        )
    }

    /// Trains until `train.steps` (or an interruption), evaluating, logging and checkpointing.
    /// `on_event` receives evaluations and checkpoints (the CLI prints them).
    pub fn run(&mut self, show_progress: bool, on_event: &mut dyn FnMut(Event)) -> Result<Outcome> {
        let t = self.recipe.train.clone();
        let bar = if show_progress {
            indicatif::ProgressBar::new(t.steps as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} steps  {msg}  ETA {eta}",
            )
            .expect("valid template"),
        );
        bar.set_position(self.state.step as u64);
        let ckpt_every = self.recipe.checkpoint_interval();
        let mut window_start = Instant::now();
        let mut window_tokens = 0usize;
        let mut last_eval: Option<EvalStats> = None;
        reset_peak_rss();
        while self.state.step < t.steps {
            let started = Instant::now();
            let stats = self.train_step()?;
            self.state.elapsed_s += started.elapsed().as_secs_f64();
            window_tokens += stats.tokens;
            bar.inc(1);
            let step = stats.step;
            if step % t.log_interval == 0 || step == t.steps {
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                let tps = window_tokens as f64 / secs;
                bar.set_message(format!("loss {:.4}  {:.0} tok/s", stats.loss, tps));
                let peak = peak_rss();
                reset_peak_rss();
                if let Some(p) = peak {
                    self.peak_step_rss = Some(self.peak_step_rss.unwrap_or(0).max(p));
                }
                self.metrics.log(json!({
                    "step": step, "loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
                    "tokens_per_s": tps, "tokens_seen": self.state.tokens_seen, "elapsed_s": self.state.elapsed_s,
                    "peak_rss_mb": peak.map(|p| p as f64 / (1 << 20) as f64),
                }))?;
                window_start = Instant::now();
                window_tokens = 0;
            }
            if step % t.eval_interval == 0 || step == t.steps {
                let ev = self.evaluate()?;
                if let Some(v) = ev.val_loss {
                    if self.state.best_val_loss.is_none_or(|b| v < b) {
                        self.state.best_val_loss = Some(v);
                    }
                }
                let mut rec = json!({
                    "step": step, "train_loss": ev.train_loss, "val_loss": ev.val_loss,
                    "val_perplexity": ev.val_loss.map(f64::exp), "elapsed_s": self.state.elapsed_s,
                });
                if ev.val_accuracy.is_some() || ev.train_accuracy.is_some() {
                    rec["train_accuracy"] = json!(ev.train_accuracy);
                    rec["val_accuracy"] = json!(ev.val_accuracy);
                }
                if let Some(r) = ev.val_error_rates {
                    rec["val_wer"] = json!(r.wer);
                    rec["val_per"] = json!(r.per);
                    rec["val_words"] = json!(r.n);
                }
                self.metrics.log(rec)?;
                plot_losses(self.metrics.path(), &self.out_dir.join("loss.png"))?;
                bar.suspend(|| on_event(Event::Eval(&ev)));
                last_eval = Some(ev);
                // Evaluation time is not training time: restart the throughput window (and
                // the memory peak, which is the training steps').
                window_start = Instant::now();
                window_tokens = 0;
                reset_peak_rss();
            }
            let interrupted = INTERRUPTED.load(Ordering::SeqCst);
            if step % ckpt_every == 0 || step == t.steps || interrupted {
                let path = self.save_checkpoint()?;
                bar.suspend(|| on_event(Event::Checkpoint(&path)));
                if interrupted && step < t.steps {
                    bar.abandon();
                    // Handled: a later run in this process starts uninterrupted.
                    INTERRUPTED.store(false, Ordering::SeqCst);
                    return Ok(Outcome::Interrupted {
                        step,
                        checkpoint: path,
                    });
                }
            }
        }
        bar.finish_and_clear();
        if last_eval.is_none() {
            plot_losses(self.metrics.path(), &self.out_dir.join("loss.png"))?;
        }
        self.write_confusion()?;
        Ok(Outcome::Finished)
    }
}
