//! The one list of model families. Adding a family is one model file plus one line here.

use super::causal::{ArchConfig, CausalModel};
use super::family::{CausalSupport, Family, Kind};
use crate::io::read_json;
use crate::{Error, Result};
use std::path::Path;

/// Every family ferroformer builds, trains and loads.
pub static FAMILIES: &[&Family] = &[
    &super::gpt2::FAMILY,
    &super::llama::FAMILY,
    &super::qwen2::FAMILY,
    &super::qwen3::FAMILY,
    &super::mistral::FAMILY,
    &super::gemma2::FAMILY,
    &super::gemma3::FAMILY,
    &super::phi3::FAMILY,
    &super::bert::FAMILY,
    &super::marian::FAMILY,
    &super::vit::FAMILY,
];

/// The registry names of the families of one kind.
pub fn names(kind: Kind) -> Vec<&'static str> {
    FAMILIES
        .iter()
        .filter(|f| f.kind == kind)
        .map(|f| f.name)
        .collect()
}

/// The family a recipe's `model.architecture` names.
pub fn by_name(name: &str) -> Result<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.name == name)
        .ok_or_else(|| {
            let all: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
            Error::Config(format!(
                "model architecture {name:?} is not registered (known: {})",
                all.join(", ")
            ))
        })
}

/// The family of a `config.json`'s `model_type`.
pub fn by_model_type(model_type: &str) -> Result<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.model_types.contains(&model_type))
        .ok_or_else(|| {
            let all: Vec<&str> = FAMILIES
                .iter()
                .flat_map(|f| f.model_types.iter().copied())
                .collect();
            Error::Config(format!(
                "model_type {model_type:?} is not supported (registered model types: {})",
                all.join(", ")
            ))
        })
}

/// The causal-LM family of a GGUF file's `general.architecture`.
pub fn by_gguf_architecture(arch: &str) -> Result<&'static Family> {
    let gguf = |f: &&'static Family| {
        f.causal
            .as_ref()
            .and_then(|c| c.gguf.as_ref())
            .map(|g| g.architectures)
            .unwrap_or(&[])
    };
    FAMILIES
        .iter()
        .find(|f| gguf(f).contains(&arch))
        .copied()
        .ok_or_else(|| {
            let all: Vec<&str> = FAMILIES
                .iter()
                .flat_map(|f| gguf(f).iter().copied())
                .collect();
            Error::Config(format!(
                "GGUF architecture {arch:?} is not supported (supported: {})",
                all.join(", ")
            ))
        })
}

impl Family {
    /// The causal-LM functions, or an error saying this family is not a causal LM.
    pub fn causal(&self) -> Result<&CausalSupport> {
        self.causal.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "{} is a {}, not a causal language model (causal LMs: {})",
                self.name,
                self.kind.describe(),
                names(Kind::Causal).join(", ")
            ))
        })
    }
}

impl ArchConfig {
    /// Parses a `config.json` value, choosing the family by `model_type`.
    pub fn from_json(v: serde_json::Value) -> Result<Self> {
        let kind = v
            .get("model_type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| Error::Config("no \"model_type\" in the model config".into()))?
            .to_string();
        let family = by_model_type(&kind)?;
        Self::from_box((family.causal()?.parse)(v)?)
    }

    /// Reads `config.json`, naming the file in any error.
    pub fn load(path: &Path) -> Result<Self> {
        let v: serde_json::Value = read_json(path)?;
        Self::from_json(v).map_err(|e| Error::format(path, e.to_string()))
    }

    /// The family this config is of.
    pub fn family(&self) -> &'static Family {
        by_model_type(self.model_type()).expect("configs come from registered families")
    }
}

impl CausalModel {
    /// The family this model is of.
    pub fn family(&self) -> &'static Family {
        by_model_type(self.model_type()).expect("models come from registered families")
    }
}

/// Whether parameter `name` (of rank `rank`) is exempt from weight decay: biases, norm gains
/// and other vectors, and the embedding tables the families name.
pub fn no_decay(name: &str, rank: usize) -> bool {
    rank < 2
        || FAMILIES
            .iter()
            .any(|f| f.no_decay.iter().any(|frag| name.contains(frag)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_model_types_are_unique() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        let mut types: Vec<&str> = FAMILIES
            .iter()
            .flat_map(|f| f.model_types.iter().copied())
            .collect();
        let (n, t) = (names.len(), types.len());
        names.sort();
        names.dedup();
        types.sort();
        types.dedup();
        assert_eq!((names.len(), types.len()), (n, t));
        for f in FAMILIES {
            assert_eq!(f.causal.is_some(), f.kind == Kind::Causal, "{}", f.name);
        }
    }

    #[test]
    fn unknown_names_list_the_registered_ones() {
        let e = by_model_type("mamba").unwrap_err().to_string();
        assert!(
            e.contains("mamba") && e.contains("llama") && e.contains("gpt2"),
            "{e}"
        );
        let e = by_gguf_architecture("rwkv6").unwrap_err().to_string();
        assert!(e.contains("rwkv6") && e.contains("llama"), "{e}");
        let e = by_name("gpt5").unwrap_err().to_string();
        assert!(e.contains("gpt5") && e.contains("bert"), "{e}");
    }
}
