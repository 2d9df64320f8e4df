//! An adapter's configuration, as Hugging Face PEFT writes it in `adapter_config.json` (and
//! as a recipe's `[peft]` table holds it): the method, the modules it wraps, its sizes.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The adapter methods ferroformer implements, by PEFT's `peft_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeftType {
    #[serde(rename = "LORA")]
    Lora,
    #[serde(rename = "IA3")]
    Ia3,
    /// LayerNorm tuning: the targeted norms' weights (and biases) train as copies.
    #[serde(rename = "LN_TUNING")]
    LnTuning,
    /// Prompt tuning: learned virtual-token embeddings before the input.
    #[serde(rename = "PROMPT_TUNING")]
    PromptTuning,
    /// Prefix tuning: learned keys and values before the input's, in every layer.
    #[serde(rename = "PREFIX_TUNING")]
    PrefixTuning,
}

impl PeftType {
    pub const NAMES: &'static str = "LORA (lora), IA3 (ia3), LN_TUNING (ln_tuning), PROMPT_TUNING (prompt_tuning), PREFIX_TUNING (prefix_tuning)";

    /// Whether the method learns virtual tokens (prompt or prefix tuning), which cannot be
    /// merged into weights.
    pub fn virtual_tokens(self) -> bool {
        matches!(self, PeftType::PromptTuning | PeftType::PrefixTuning)
    }

    /// Whether the method wraps linear layers (LoRA, IA3).
    pub fn wraps_linear(self) -> bool {
        matches!(self, PeftType::Lora | PeftType::Ia3)
    }

    /// Parses PEFT's name or its lower-case CLI spelling.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "LORA" => Ok(PeftType::Lora),
            "IA3" => Ok(PeftType::Ia3),
            "LN_TUNING" => Ok(PeftType::LnTuning),
            "PROMPT_TUNING" => Ok(PeftType::PromptTuning),
            "PREFIX_TUNING" => Ok(PeftType::PrefixTuning),
            _ => Err(Error::Config(format!(
                "unknown peft_type {s:?} (supported: {})",
                Self::NAMES
            ))),
        }
    }
}

/// Which modules an adapter wraps: PEFT's `target_modules`, a list of names (a module matches
/// when its path equals one or ends with `.name`), one regular expression that must match the
/// whole path, or `"all-linear"` (every linear layer but the output head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Targets {
    List(Vec<String>),
    Pattern(String),
}

impl Default for Targets {
    fn default() -> Self {
        Targets::List(vec![])
    }
}

/// PEFT's `bias`: which biases train (and are saved with the adapter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BiasMode {
    #[default]
    None,
    All,
    LoraOnly,
}

fn d_r() -> usize {
    8
}
fn d_alpha() -> f64 {
    8.0
}
fn d_lora() -> PeftType {
    PeftType::Lora
}
fn d_true() -> bool {
    true
}

/// PEFT writes `lora_alpha` as an integer; so do we when it is one.
fn int_if_whole<S: serde::Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

fn parse_peft_type<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<PeftType, D::Error> {
    let s = String::deserialize(d)?;
    PeftType::parse(&s).map_err(serde::de::Error::custom)
}

/// An adapter configuration. Field names and defaults are PEFT's (LoRA: r 8, lora_alpha 8,
/// no dropout, bias none, PEFT's initialisation); keys PEFT writes that ferroformer does not
/// use are kept in `other`, so a configuration read and written again loses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    /// The method (PEFT's names; recipes may write them in lower case) [default: LORA].
    #[serde(deserialize_with = "parse_peft_type", default = "d_lora")]
    pub peft_type: PeftType,
    /// PEFT's task type, e.g. `CAUSAL_LM`, `SEQ_CLS` (informational).
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub target_modules: Targets,
    /// LoRA rank.
    #[serde(default = "d_r")]
    pub r: usize,
    /// LoRA scaling numerator: the update is scaled by `lora_alpha / r` (or `/ sqrt(r)` with
    /// `use_rslora`).
    #[serde(default = "d_alpha", serialize_with = "int_if_whole")]
    pub lora_alpha: f64,
    /// Dropout on the adapter's input during training.
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub bias: BiasMode,
    /// Rank-stabilised scaling `lora_alpha / sqrt(r)`.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA: the weight's direction from LoRA, its per-output-row magnitude learned apart.
    #[serde(default)]
    pub use_dora: bool,
    /// PEFT's default initialisation (A Kaiming-uniform, B zero); `false` makes B random too
    /// (the adapter then changes the model from the start; for tests).
    #[serde(default = "d_true")]
    pub init_lora_weights: bool,
    /// Modules trained in full and saved with the adapter (e.g. a classification head).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Only these layer indices get adapters.
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
    /// Per-module rank / alpha overrides: a pattern matching the end of a module path.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// IA3: the targets whose input (not output) is scaled.
    #[serde(default)]
    pub feedforward_modules: Option<Targets>,
    /// Prompt tuning: number of virtual tokens.
    #[serde(default)]
    pub num_virtual_tokens: Option<usize>,
    /// Prompt tuning: their width (the model's hidden size).
    #[serde(default)]
    pub token_dim: Option<usize>,
    /// Prompt tuning: `RANDOM` (N(0, 1), as PEFT), `SAMPLE_VOCAB` (random rows of the
    /// embedding table) or `TEXT` (the embeddings of `prompt_tuning_init_text`, repeated).
    #[serde(default)]
    pub prompt_tuning_init: Option<String>,
    #[serde(default)]
    pub prompt_tuning_init_text: Option<String>,
    /// The base model the adapter was trained on (a path or name).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// PEFT's "fan_in_fan_out" and the like are derived here from the layer itself; these keys of
/// `adapter_config.json` are understood (or harmless) even though no field holds them.
const IGNORED_KEYS: &[&str] = &[
    "fan_in_fan_out",
    "inference_mode",
    "revision",
    "auto_mapping",
    "layers_pattern",
    "lora_bias",
    "exclude_modules",
    "megatron_config",
    "megatron_core",
    "loftq_config",
    "eva_config",
    "corda_config",
    "layer_replication",
    "runtime_config",
    "use_qalora",
    "qalora_group_size",
    "trainable_token_indices",
    "target_parameters",
    "peft_version",
    "alora_invocation_tokens",
    "arrow_config",
    "ensure_weight_tying",
    "init_ia3_weights",
    "num_layers",
    "num_attention_heads",
    "num_transformer_submodules",
    "tokenizer_name_or_path",
    "tokenizer_kwargs",
    "prefix_projection",
    "encoder_hidden_size",
    "init_weights",
];

impl PeftConfig {
    /// A LoRA configuration with PEFT's defaults.
    pub fn lora(r: usize, lora_alpha: f64, targets: Targets) -> Self {
        let mut c: PeftConfig =
            serde_json::from_value(serde_json::json!({"peft_type": "LORA"})).expect("defaults");
        c.r = r;
        c.lora_alpha = lora_alpha;
        c.target_modules = targets;
        c
    }

    /// Checks the options every method shares (and, for a recipe, that no key is unknown);
    /// [`PeftConfig::validate`] adds the method's own checks.
    pub(crate) fn check_common(&self, strict: bool) -> Result<()> {
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::Config(format!(
                "peft.lora_dropout must be in [0, 1), got {}",
                self.lora_dropout
            )));
        }
        self.target_modules.compile()?;
        if self.peft_type != PeftType::Lora && (self.use_dora || self.bias != BiasMode::None) {
            return Err(Error::Config(format!(
                "{:?} takes no use_dora or bias options (LoRA's)",
                self.peft_type
            )));
        }
        let unknown: Vec<&String> = self
            .other
            .keys()
            .filter(|k| !IGNORED_KEYS.contains(&k.as_str()))
            .collect();
        if strict && !unknown.is_empty() {
            return Err(Error::Config(format!("unknown peft keys: {unknown:?}")));
        }
        for (k, v) in &self.other {
            // Options of LoRA variants this implementation does not have: refuse rather
            // than silently compute something else.
            let empty = v.is_null() || v == &serde_json::json!({}) || v == &serde_json::json!([]);
            let unsupported = match k.as_str() {
                "megatron_config" | "megatron_core" | "runtime_config" => false,
                "layer_replication"
                | "exclude_modules"
                | "trainable_token_indices"
                | "target_parameters"
                | "alora_invocation_tokens" => !empty,
                "lora_bias" => v.as_bool() == Some(true),
                k if k.ends_with("_config") => !empty,
                k if k.starts_with("use_") => v.as_bool() == Some(true),
                _ => false,
            };
            if unsupported {
                return Err(Error::Config(format!(
                    "adapter option {k} = {v} is not supported"
                )));
            }
        }
        Ok(())
    }

    /// Without `target_modules`: PEFT's default targets for the architecture (its
    /// `TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING`), for `model_type`.
    pub fn fill_default_targets(&mut self, model_type: &str) -> Result<()> {
        if self.target_modules != Targets::List(vec![]) || self.peft_type.virtual_tokens() {
            return Ok(());
        }
        let list = |l: &[&str]| Targets::List(l.iter().map(|s| s.to_string()).collect());
        let d = crate::models::registry::by_model_type(model_type)?.peft;
        let (t, ff) = match self.peft_type {
            PeftType::Lora => (d.lora, &[][..]),
            PeftType::Ia3 => (d.ia3, d.ia3_feedforward),
            PeftType::LnTuning => (d.ln_tuning, &[][..]),
            PeftType::PromptTuning | PeftType::PrefixTuning => (&[][..], &[][..]),
        };
        if t.is_empty() {
            return Err(Error::Config(format!(
                "peft.target_modules is empty and there is no default for {model_type} models: name the modules to adapt, e.g. [\"q_proj\", \"v_proj\"], or \"all-linear\""
            )));
        }
        self.target_modules = list(t);
        if self.peft_type == PeftType::Ia3 && self.feedforward_modules.is_none() {
            self.feedforward_modules = Some(list(ff));
        }
        Ok(())
    }

    /// Whether the adapter wraps the module at `path` (e.g. `model.layers.3.self_attn.q_proj`).
    pub fn targets(&self, path: &str) -> bool {
        if path == "lm_head" && self.target_modules == Targets::Pattern("all-linear".into()) {
            return false;
        }
        if !self.target_modules.matches(path) {
            return false;
        }
        match &self.layers_to_transform {
            Some(layers) => layer_index(path).is_some_and(|i| layers.contains(&i)),
            None => true,
        }
    }

    /// Whether `param` (a parameter name) belongs to one of `modules_to_save`.
    pub fn saves_module_of(&self, param: &str) -> bool {
        let module = param.rsplit_once('.').map_or(param, |(m, _)| m);
        self.modules_to_save
            .iter()
            .flatten()
            .any(|m| module == m || module.ends_with(&format!(".{m}")))
    }
}

/// The layer index in a path such as `model.layers.12.mlp.up_proj` (`layers` or `h`, as
/// PEFT's default layer patterns).
fn layer_index(path: &str) -> Option<usize> {
    let parts: Vec<&str> = path.split('.').collect();
    parts.windows(2).find_map(|w| {
        matches!(w[0], "layers" | "h" | "layer" | "blocks")
            .then(|| w[1].parse().ok())
            .flatten()
    })
}

impl Targets {
    pub(crate) fn compile(&self) -> Result<Option<regex::Regex>> {
        match self {
            Targets::Pattern(p) if p != "all-linear" => regex::Regex::new(&format!("^(?:{p})$"))
                .map(Some)
                .map_err(|e| Error::Config(format!("target_modules {p:?}: {e}"))),
            _ => Ok(None),
        }
    }

    /// Whether the module at `path` is selected (PEFT's `check_target_module_exists`).
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Targets::List(names) => names
                .iter()
                .any(|n| path == n || path.ends_with(&format!(".{n}"))),
            Targets::Pattern(p) if p == "all-linear" => true,
            Targets::Pattern(_) => self
                .compile()
                .ok()
                .flatten()
                .is_some_and(|re| re.is_match(path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_as_peft() {
        let l = Targets::List(vec!["q_proj".into(), "v_proj".into()]);
        assert!(l.matches("model.layers.0.self_attn.q_proj"));
        assert!(!l.matches("model.layers.0.self_attn.qq_proj"));
        let p = Targets::Pattern(r".*layers\.1\..*(q_proj|down_proj)".into());
        assert!(p.matches("model.layers.1.mlp.down_proj"));
        assert!(!p.matches("model.layers.11.mlp.down_proj"));
        let mut c = PeftConfig::lora(4, 8.0, Targets::Pattern("all-linear".into()));
        assert!(c.targets("model.layers.0.mlp.up_proj") && !c.targets("lm_head"));
        c.layers_to_transform = Some(vec![1]);
        assert!(
            !c.targets("model.layers.0.mlp.up_proj") && c.targets("model.layers.1.mlp.up_proj")
        );
        c.rank_pattern.insert("up_proj".into(), 2);
        c.use_rslora = true;
        assert_eq!(
            c.rank_and_scaling("model.layers.1.mlp.up_proj"),
            (2, 8.0 / 2f64.sqrt())
        );
        assert_eq!(c.rank_and_scaling("model.layers.1.mlp.down_proj"), (4, 4.0));
    }

    #[test]
    fn unknown_peft_type_is_named() {
        let e = serde_json::from_value::<PeftConfig>(serde_json::json!({"peft_type": "BOFT"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("BOFT") && e.contains("LORA"), "{e}");
    }
}
