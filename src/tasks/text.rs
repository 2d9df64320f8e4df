//! What the text tasks share: a tokenizer trained on the corpus (or the starting model's),
//! corpus files held out whole for validation, a token stream cut into training and
//! validation ranges, and the starting causal LM with the files its run carries over.

use crate::data::corpus::for_each_chunk;
use crate::data::{Split, TokenShard};
use crate::models::{self, ArchConfig, CausalModel, Sizes};
use crate::nn::ParamStore;
use crate::text::chat::ChatTemplate;
use crate::text::tokenizer::{Tokenizer, EOT};
use crate::train::engine::ModelFiles;
use crate::train::Recipe;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

pub fn is_gguf(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|x| x == "gguf")
}

/// A char-level vocabulary of every character in `files`.
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

/// The tokenizer `data.tokenizer` names: trained on the corpus (`char`, `bpe`, `wordpiece`),
/// or a `tokenizer.json` path.
pub fn corpus_tokenizer(recipe: &Recipe, files: &[PathBuf]) -> Result<Tokenizer> {
    let d = &recipe.data;
    match d.tokenizer.as_str() {
        "char" => char_tokenizer(files),
        "bpe" => Tokenizer::train_bpe(files, d.vocab_size, 2),
        "wordpiece" => Tokenizer::train_wordpiece(files, d.vocab_size, 2, d.lowercase),
        path => Tokenizer::load(Path::new(path)),
    }
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

/// A token stream (memory-mapped) and its training and validation ranges.
pub struct Tokens {
    pub shard: TokenShard,
    pub train: Split,
    pub val: Split,
}

impl Tokens {
    /// The corpus files tokenised into `out_dir/data/tokens.bin` (built once, reopened on
    /// resume): `data.val_files` held out whole (they go last, so the validation range is
    /// exactly their tokens), else the last `data.val_fraction`.
    pub fn build(
        recipe: &Recipe,
        files: &[PathBuf],
        tokenizer: &Tokenizer,
        out_dir: &Path,
    ) -> Result<Self> {
        let (train_files, val_files) = held_out(files, &recipe.data.val_files)?;
        let ordered: Vec<PathBuf> = train_files.iter().chain(&val_files).cloned().collect();
        let shard =
            TokenShard::build_or_open(&ordered, tokenizer, &out_dir.join("data/tokens.bin"))?;
        let context = recipe.train.context;
        let (train, val) = if val_files.is_empty() {
            shard.split(recipe.data.val_fraction, context)?
        } else {
            shard.split_files(train_files.len(), context)?
        };
        Ok(Tokens { shard, train, val })
    }

    /// Whether the validation range holds a whole window.
    pub fn has_validation(&self, context: usize) -> bool {
        self.val.len() > context
    }
}

/// Files a causal LM's run directory carries over from the model it started from, so the
/// fine-tuned model keeps its special tokens and chat template (transformers' names).
const CARRIED_FILES: &[&str] = &[
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// The causal LM a text task starts from, with its tokenizer, chat template and carried files.
pub struct CausalStart {
    pub model: CausalModel,
    pub store: ParamStore,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub files: ModelFiles,
}

/// The starting causal LM: `from` (a llama.cpp file, its weights dequantized to f32 unless
/// `model.quantized`, its own tokenizer; or a model directory), else a fresh model of the
/// recipe's family and sizes with a tokenizer trained on `files`.
pub fn causal_start(
    recipe: &Recipe,
    from: Option<&Path>,
    files: &[PathBuf],
    device: &candle_core::Device,
) -> Result<CausalStart> {
    let mut carried = ModelFiles::new();
    if let Some(file) = from.filter(|p| is_gguf(p)) {
        let p = crate::infer::pretrained::PretrainedCausalLm::from_gguf(
            file,
            device,
            recipe.model.quantized,
        )?;
        for (name, v) in p.tokenizer_files() {
            let bytes = serde_json::to_vec_pretty(&v).expect("JSON serialises");
            carried.push((name.to_string(), bytes));
        }
        let template = p.chat().ok();
        return Ok(CausalStart {
            model: p.model,
            store: p.store,
            tokenizer: p.tokenizer,
            template,
            files: carried,
        });
    }
    if let Some(dir) = from {
        let template = crate::infer::pretrained::PretrainedCausalLm::dir_chat_template(dir)?;
        for name in CARRIED_FILES {
            let path = dir.join(name);
            if path.is_file() {
                let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                carried.push((name.to_string(), bytes));
            }
        }
        let tokenizer = Tokenizer::load_dir(dir)?;
        let (model, store) = models::load_dir(dir, device)?;
        return Ok(CausalStart {
            model,
            store,
            tokenizer,
            template,
            files: carried,
        });
    }
    let tokenizer = corpus_tokenizer(recipe, files)?;
    let (model, store) = CausalModel::init(
        &fresh_config(recipe, &tokenizer)?,
        device,
        recipe.train.seed,
    )?;
    Ok(CausalStart {
        model,
        store,
        tokenizer,
        template: None,
        files: carried,
    })
}

/// A fresh causal LM of the recipe's family and sizes, for `tokenizer`'s vocabulary.
fn fresh_config(recipe: &Recipe, tokenizer: &Tokenizer) -> Result<ArchConfig> {
    let m = &recipe.model;
    let family = models::registry::by_name(&m.architecture)?;
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

/// The model takes the tokenizer's every id and (for token streams) the training context.
pub fn check_fits(
    vocab_size: usize,
    max_positions: usize,
    tokenizer: &Tokenizer,
    context: Option<usize>,
) -> Result<()> {
    if vocab_size < tokenizer.vocab_size() {
        return Err(Error::Config(format!(
            "the model's vocab_size ({vocab_size}) is smaller than the tokenizer's ({})",
            tokenizer.vocab_size()
        )));
    }
    if let Some(c) = context.filter(|&c| max_positions < c) {
        return Err(Error::Config(format!(
            "train.context ({c}) exceeds the model's maximum positions ({max_positions})"
        )));
    }
    Ok(())
}

/// `dir/data/split.json`: which examples each part holds, so other tools (the PyTorch
/// benchmarks) use the same split.
pub fn write_split(out_dir: &Path, split: &serde_json::Value) -> Result<()> {
    let data_dir = out_dir.join("data");
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
    crate::io::write_json_atomic(&data_dir.join("split.json"), split)
}
