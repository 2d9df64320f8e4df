//! Pretrained causal language models as users have them: a Hugging Face directory
//! (`config.json`, `model.safetensors` or shards, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`), a llama.cpp `.gguf` file, or an asset name from `assets.toml`.
//! [`PretrainedCausalLm`] bundles the model with its tokenizer, special tokens and chat
//! template, and writes itself back as a Hugging Face directory.

use crate::io::gguf::{Gguf, Precision, SpecialTokens};
use crate::io::{read_json, write_json_atomic};
use crate::models::{self, ArchConfig, CausalModel};
use crate::nn::ParamStore;
use crate::text::chat::ChatTemplate;
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::Device;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A pretrained causal language model with everything needed to prompt it.
pub struct PretrainedCausalLm {
    pub model: CausalModel,
    pub store: ParamStore,
    pub tokenizer: Tokenizer,
    pub special: SpecialTokens,
    /// The chat template's source, when the model has one.
    pub chat_template: Option<String>,
    /// Where it was loaded from.
    pub source: PathBuf,
    /// Whether projections are kept quantized (inference only; cannot be saved).
    pub quantized: bool,
    /// Parameters held in quantized matrices (not in `store`).
    pub quantized_numel: usize,
}

/// The family support for a GGUF file's `general.architecture`.
fn gguf_support(g: &Gguf) -> Result<&'static models::family::GgufSupport> {
    let arch = g.architecture()?;
    let family = models::registry::by_gguf_architecture(arch).map_err(|e| g.err(e.to_string()))?;
    Ok(family
        .causal()?
        .gguf
        .as_ref()
        .expect("found by its GGUF architecture"))
}

/// The model configuration a GGUF file's metadata describes.
pub fn gguf_config(g: &Gguf) -> Result<ArchConfig> {
    ArchConfig::from_box((gguf_support(g)?.config)(g)?).map_err(|e| g.err(e.to_string()))
}

/// The chat template source of a model directory whose `tokenizer_config.json` is `tc`.
fn template_source(dir: &Path, tc: &Value) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return Ok(Some(
            std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?,
        ));
    }
    Ok(match tc.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        // A list of named templates: the "default" one.
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    })
}

/// A token named in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// An id or the first of a list of ids.
fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => vec![],
    }
}

impl PretrainedCausalLm {
    /// Loads a model by `--model` argument (see [`crate::assets::resolve_model`]); `quantized` keeps GGUF
    /// matrices quantized.
    pub fn load(arg: &str, device: &Device, quantized: bool) -> Result<Self> {
        let path = crate::assets::resolve_model(arg)?;
        if crate::peft::adapter_io::is_adapter_dir(&path) && !path.join("config.json").exists() {
            // A PEFT adapter directory: its base model, with it applied.
            let cfg = crate::peft::adapter_io::read_config(&path)?;
            let base = cfg.base_model_name_or_path.ok_or_else(|| {
                Error::format(
                    &path,
                    "an adapter without base_model_name_or_path: pass the base as --model and this directory as --adapter",
                )
            })?;
            return Self::load(&base, device, quantized)?
                .with_adapters(&[("default".to_string(), path.clone())]);
        }
        if path.is_dir() {
            if quantized {
                return Err(Error::format(
                    &path,
                    "--quantized applies to GGUF files; this is a safetensors model directory",
                ));
            }
            Self::from_dir(&path, device)
        } else if path.extension().is_some_and(|x| x == "gguf") {
            Self::from_gguf(&path, device, quantized)
        } else {
            Err(Error::format(
                &path,
                "expected a Hugging Face model directory or a .gguf file",
            ))
        }
    }

    /// The chat template of a Hugging Face directory (`chat_template.jinja`, else
    /// `tokenizer_config.json`'s `chat_template`) with the special tokens it may name, without
    /// loading the weights.
    pub fn dir_chat_template(dir: &Path) -> Result<Option<ChatTemplate>> {
        let tc_path = dir.join("tokenizer_config.json");
        let tc: Value = if tc_path.exists() {
            read_json(&tc_path)?
        } else {
            json!({})
        };
        template_source(dir, &tc)?
            .map(|src| {
                ChatTemplate::new(
                    &src,
                    token_str(tc.get("bos_token")),
                    token_str(tc.get("eos_token")),
                )
            })
            .transpose()
    }

    /// Loads a Hugging Face directory.
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self> {
        let (model, store) = models::load_dir(dir, device)?;
        let tokenizer = Tokenizer::load_dir(dir)?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc: Value = if tc_path.exists() {
            read_json(&tc_path)?
        } else {
            json!({})
        };
        let chat_template = template_source(dir, &tc)?;
        let cfg = model.config().to_json();
        let gen_path = dir.join("generation_config.json");
        let gen: Value = if gen_path.exists() {
            read_json(&gen_path)?
        } else {
            json!({})
        };
        let id_of = |key: &str, token_key: &str| -> Option<u32> {
            ids(gen.get(key))
                .first()
                .copied()
                .or_else(|| ids(cfg.get(key)).first().copied())
                .or_else(|| token_str(tc.get(token_key)).and_then(|t| tokenizer.token_id(&t)))
        };
        let special = SpecialTokens {
            bos: id_of("bos_token_id", "bos_token"),
            eos: id_of("eos_token_id", "eos_token"),
            pad: id_of("pad_token_id", "pad_token"),
            unk: token_str(tc.get("unk_token")).and_then(|t| tokenizer.token_id(&t)),
            add_bos: tc
                .get("add_bos_token")
                .and_then(|b| b.as_bool())
                .unwrap_or(false),
        };
        Ok(PretrainedCausalLm {
            model,
            store,
            tokenizer,
            special,
            chat_template,
            source: dir.to_path_buf(),
            quantized: false,
            quantized_numel: 0,
        })
    }

    /// Loads a llama.cpp GGUF file: f32 (dequantized, trainable) or with its matrices kept
    /// quantized. `general.architecture` chooses the family.
    pub fn from_gguf(path: &Path, device: &Device, quantized: bool) -> Result<Self> {
        let mut g = Gguf::open(path)?;
        let arch = g.architecture()?.to_string();
        let support = gguf_support(&g)?;
        let config = gguf_config(&g)?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        if tokenizer.vocab_size() != config.vocab_size() {
            return Err(Error::format(
                path,
                format!(
                    "the tokenizer has {} tokens but the model {}",
                    tokenizer.vocab_size(),
                    config.vocab_size()
                ),
            ));
        }
        let special = g.special_tokens()?;
        let chat_template = g.chat_template();
        let precision = if quantized {
            Precision::Quantized
        } else {
            Precision::F32
        };
        let (dense, quant) = g.weights(
            &arch,
            &support.tensor_name,
            &|hf, q| (support.transform)(&*config, hf, q),
            precision,
            device,
        )?;
        let mut store = ParamStore::from_tensors(dense, device, Some(path))?;
        let quantized_numel = quant
            .iter()
            // A table also dequantized into the store is counted there.
            .filter(|(k, _)| !store.vars().contains_key(*k))
            .map(|(_, q)| q.dims().iter().product::<usize>())
            .sum();
        let quant_keys: Vec<String> = quant.keys().cloned().collect();
        store.set_quantized(quant);
        let model = CausalModel::new(&config, &mut store)?;
        let mut used: Vec<String> = config.param_shapes()?.into_keys().collect();
        used.extend(quant_keys.iter().cloned());
        models::hf::check_all_used(&store, &used, path, "the file's metadata")?;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: no arguments to get wrong. Reading the file went through buffers as large as
        // the model, which glibc would otherwise keep for later.
        unsafe {
            libc::malloc_trim(0);
        }
        Ok(PretrainedCausalLm {
            model,
            store,
            tokenizer,
            special,
            chat_template,
            source: path.to_path_buf(),
            quantized: !quant_keys.is_empty(),
            quantized_numel,
        })
    }

    /// The model for inference only: every parameter frozen, so forward passes build no
    /// backward graph (which would keep each layer's activations alive: a perplexity run over
    /// 512-token windows of SmolLM2 peaked at 8.5 GB that way). Quantized models are left as
    /// they are (their matrices are constants already).
    pub fn for_inference(mut self) -> Result<Self> {
        let all = self.store.vars().keys().cloned().collect();
        self.store.freeze(&all)?;
        self.model = CausalModel::new(&self.model.config(), &mut self.store)?;
        Ok(self)
    }

    /// Loads PEFT adapter directories `(name, dir)` onto the model (the first loaded is the
    /// active one; switch with `store.peft().set_active`).
    pub fn with_adapters(self, adapters: &[(String, PathBuf)]) -> Result<Self> {
        let Self {
            model, mut store, ..
        } = self;
        let model = crate::peft::adapter_io::apply(model, &mut store, adapters)?;
        Ok(Self {
            model,
            store,
            ..self
        })
    }

    /// What prompting needs of the model (tokenizer, special tokens, chat template).
    pub fn prompting(&self) -> Prompting<'_> {
        Prompting {
            tokenizer: &self.tokenizer,
            special: &self.special,
            chat_template: self.chat_template.as_deref(),
            source: &self.source,
        }
    }

    /// See [`Prompting::chat`].
    pub fn chat(&self) -> Result<ChatTemplate> {
        self.prompting().chat()
    }

    /// See [`Prompting::stop_tokens`].
    pub fn stop_tokens(&self) -> Vec<u32> {
        self.prompting().stop_tokens()
    }

    /// See [`Prompting::encode_prompt`].
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.prompting().encode_prompt(text)
    }

    /// Writes a Hugging Face directory transformers loads: `config.json`,
    /// `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` (special tokens and
    /// chat template) and `generation_config.json`.
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        if self.quantized {
            return Err(Error::Config(
                "a model loaded with quantized weights cannot be saved as safetensors; load it without --quantized".into(),
            ));
        }
        let mut config = self.model.config();
        config.extra_mut().extend(self.special.id_entries());
        models::save_dir(dir, &config, &self.store)?;
        self.tokenizer.save(&dir.join("tokenizer.json"))?;
        for (name, value) in self.tokenizer_files() {
            write_json_atomic(&dir.join(name), &value)?;
        }
        Ok(())
    }

    /// `tokenizer_config.json` (special tokens, chat template) and `generation_config.json`
    /// (special token ids), as transformers reads them.
    pub fn tokenizer_files(&self) -> Vec<(&'static str, Value)> {
        let mut tc = serde_json::Map::new();
        tc.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        tc.insert("add_bos_token".into(), json!(self.special.add_bos));
        tc.insert("add_eos_token".into(), json!(false));
        tc.insert("clean_up_tokenization_spaces".into(), json!(false));
        tc.insert("model_max_length".into(), json!(self.model.max_positions()));
        for (key, id) in [
            ("bos_token", self.special.bos),
            ("eos_token", self.special.eos),
            ("pad_token", self.special.pad),
            ("unk_token", self.special.unk),
        ] {
            if let Some(t) = self.prompting().token_text(id) {
                tc.insert(key.into(), json!(t));
            }
        }
        if let Some(t) = &self.chat_template {
            tc.insert("chat_template".into(), json!(t));
        }
        vec![
            ("tokenizer_config.json", Value::Object(tc)),
            (
                "generation_config.json",
                Value::Object(self.special.id_entries()),
            ),
        ]
    }
}

/// A model's tokenizer, special tokens and chat template: how prompts become token ids.
#[derive(Clone, Copy)]
pub struct Prompting<'a> {
    pub tokenizer: &'a Tokenizer,
    pub special: &'a SpecialTokens,
    pub chat_template: Option<&'a str>,
    /// The model's file or directory (named in errors).
    pub source: &'a Path,
}

impl Prompting<'_> {
    /// The text of a special token id.
    pub fn token_text(&self, id: Option<u32>) -> Option<String> {
        id.and_then(|i| self.tokenizer.inner.id_to_token(i))
    }

    /// The chat template, ready to render.
    pub fn chat(&self) -> Result<ChatTemplate> {
        let src = self
            .chat_template
            .ok_or_else(|| Error::format(self.source, "this model has no chat template"))?;
        ChatTemplate::new(
            src,
            self.token_text(self.special.bos),
            self.token_text(self.special.eos),
        )
    }

    /// Tokens that end generation: the end-of-sequence token and, for chat, the template's
    /// end-of-turn marker.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut stop: Vec<u32> = self.special.eos.into_iter().collect();
        if let Ok(t) = self.chat() {
            for m in t.end_of_turn_markers() {
                if let Some(id) = self.tokenizer.token_id(m) {
                    if !stop.contains(&id) {
                        stop.push(id);
                    }
                }
            }
        }
        stop
    }

    /// Token ids of a plain prompt, with the beginning-of-sequence token when the tokenizer
    /// adds one (`add_bos_token`).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text)?;
        if self.special.add_bos {
            if let Some(bos) = self.special.bos {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }
}
