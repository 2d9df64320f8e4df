//! Choosing which parameters train: `--freeze` and `--train-only` patterns over parameter names.
//!
//! A pattern is a dot-separated path whose segments are shell globs (`*`, `?`) or, for layer
//! numbers, an inclusive range `A-B`. It selects every parameter whose name contains those
//! segments consecutively: `layers.0-3` selects `model.layers.2.mlp.up_proj.weight`,
//! `embeddings` selects `bert.embeddings.word_embeddings.weight`, `*norm*` every norm's gain,
//! `lm_head` the output projection. A frozen parameter is held as a constant: backpropagation
//! computes no gradient for it, and the optimizer keeps no state for it.

use crate::{Error, Result};
use std::collections::BTreeSet;

/// Which parameters are frozen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FreezeSpec {
    /// Patterns of parameters to freeze.
    pub freeze: Vec<String>,
    /// If not empty, only parameters matching one of these train (then `freeze` applies to
    /// those).
    pub train_only: Vec<String>,
}

pub use crate::nn::store::TrainableCount;

/// One pattern segment against one name segment.
fn segment_matches(pattern: &str, seg: &str) -> bool {
    if let Some((a, b)) = pattern.split_once('-') {
        if let (Ok(a), Ok(b), Ok(n)) = (a.parse::<u64>(), b.parse::<u64>(), seg.parse::<u64>()) {
            return a <= n && n <= b;
        }
    }
    crate::io::glob_match(pattern, seg)
}

/// Whether `pattern` selects the parameter `name` (see the module documentation).
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let n: Vec<&str> = name.split('.').collect();
    p.len() <= n.len()
        && n.windows(p.len())
            .any(|w| w.iter().zip(&p).all(|(s, p)| segment_matches(p, s)))
}

/// Levenshtein distance, for suggesting names close to a pattern that matched nothing.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Up to five module paths (names without their last segment, and their ancestors) closest to
/// `pattern`, for the error message.
fn close_names<'a>(pattern: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut paths = BTreeSet::new();
    for name in names {
        let segs: Vec<&str> = name.split('.').collect();
        for start in 0..segs.len() {
            for end in start + 1..=segs.len() {
                // Layer numbers collapse to one entry per module kind.
                if segs[start..end].iter().any(|s| s.parse::<u64>().is_ok()) && end - start > 2 {
                    continue;
                }
                paths.insert(segs[start..end].join("."));
            }
        }
    }
    let mut scored: Vec<(usize, String)> = paths
        .into_iter()
        .map(|p| (edit_distance(pattern, &p), p))
        .collect();
    scored.sort();
    scored.into_iter().take(5).map(|(_, p)| p).collect()
}

/// Checks that `pattern` is well formed.
fn check_pattern(pattern: &str) -> Result<()> {
    if pattern.is_empty() || pattern.split('.').any(str::is_empty) {
        return Err(Error::Config(format!(
            "freeze pattern {pattern:?} has an empty segment (write e.g. layers.0-3 or *norm*)"
        )));
    }
    for seg in pattern.split('.') {
        if let Some((a, b)) = seg.split_once('-') {
            if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                if a > b {
                    return Err(Error::Config(format!(
                        "freeze pattern {pattern:?}: the range {a}-{b} is empty"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The names `spec` freezes among `names`. Every pattern must select at least one parameter
/// (the error lists names close to it), and at least one parameter must stay trainable.
pub fn frozen_names(names: &[&str], spec: &FreezeSpec) -> Result<BTreeSet<String>> {
    let select = |flag: &str, patterns: &[String]| -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for p in patterns {
            check_pattern(p)?;
            let hits: Vec<&&str> = names.iter().filter(|n| matches(p, n)).collect();
            if hits.is_empty() {
                return Err(Error::Config(format!(
                    "{flag} {p:?} matches no parameter; close names: {}",
                    close_names(p, names.iter().copied()).join(", ")
                )));
            }
            out.extend(hits.into_iter().map(|n| n.to_string()));
        }
        Ok(out)
    };
    let mut frozen: BTreeSet<String> = if spec.train_only.is_empty() {
        BTreeSet::new()
    } else {
        let keep = select("--train-only", &spec.train_only)?;
        names
            .iter()
            .filter(|n| !keep.contains(**n))
            .map(|n| n.to_string())
            .collect()
    };
    frozen.extend(select("--freeze", &spec.freeze)?);
    if !names.is_empty() && frozen.len() == names.len() {
        return Err(Error::Config(format!(
            "these patterns freeze every parameter (all {}); nothing would train",
            names.len()
        )));
    }
    Ok(frozen)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.2.self_attn.q_proj.weight",
        "model.layers.11.self_attn.q_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ];

    fn frozen(freeze: &[&str], train_only: &[&str]) -> Result<Vec<String>> {
        let spec = FreezeSpec {
            freeze: freeze.iter().map(|s| s.to_string()).collect(),
            train_only: train_only.iter().map(|s| s.to_string()).collect(),
        };
        Ok(frozen_names(NAMES, &spec)?.into_iter().collect())
    }

    #[test]
    fn patterns_select_by_segments_globs_and_ranges() {
        assert!(matches("layers.0-1", "model.layers.1.mlp.up_proj.weight"));
        assert!(!matches("layers.0-1", "model.layers.11.mlp.up_proj.weight"));
        assert!(matches(
            "layers.2-11",
            "model.layers.11.self_attn.q_proj.weight"
        ));
        assert!(matches("*norm*", "model.layers.0.input_layernorm.weight"));
        assert!(matches("model.norm", "model.norm.weight"));
        assert!(!matches("norm", "model.layers.0.input_layernorm.weight"));
        assert!(matches("embed_tokens", "model.embed_tokens.weight"));
        assert!(matches("layers.*.mlp", "model.layers.0.mlp.up_proj.weight"));
        assert!(!matches(
            "up_proj.bias",
            "model.layers.0.mlp.up_proj.weight"
        ));
        assert_eq!(
            frozen(&["embed_tokens", "layers.0-1"], &[]).unwrap(),
            vec![
                "model.embed_tokens.weight",
                "model.layers.0.input_layernorm.weight",
                "model.layers.0.mlp.up_proj.weight",
                "model.layers.1.mlp.up_proj.weight",
            ]
        );
        // Train only the last layer and the head, then freeze its attention again.
        let f = frozen(&["self_attn"], &["layers.11", "lm_head"]).unwrap();
        assert_eq!(f.len(), NAMES.len() - 1);
        assert!(!f.contains(&"lm_head.weight".to_string()));
    }

    #[test]
    fn bad_patterns_are_errors_naming_close_names() {
        let e = frozen(&["layer.0-3"], &[]).unwrap_err().to_string();
        assert!(
            e.contains("matches no parameter") && e.contains("layers"),
            "{e}"
        );
        let e = frozen(&["embed_token"], &[]).unwrap_err().to_string();
        assert!(e.contains("embed_tokens"), "{e}");
        let e = frozen(&["*"], &[]).unwrap_err().to_string();
        assert!(e.contains("every parameter"), "{e}");
        let e = frozen(&["layers.3-1"], &[]).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = frozen(&["layers..0"], &[]).unwrap_err().to_string();
        assert!(e.contains("empty segment"), "{e}");
    }

    #[test]
    fn peft_wording() {
        let c = TrainableCount {
            trainable_params: 294_912,
            all_params: 124_734_720,
        };
        assert_eq!(
            c.to_string(),
            "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364"
        );
    }
}
