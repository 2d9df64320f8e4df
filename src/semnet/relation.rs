//! Relation types and their declared properties (transitive, symmetric, inverse pairs,
//! taxonomic, inheritable with negations), read from TOML: the built-in set in
//! `relations.toml` (WordNet's pointer types, ConceptNet 5's relations, generic names) plus a
//! user's file.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Index of a relation in its [`Relations`].
pub type RelId = u16;

/// One relation type and what follows from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relation {
    #[serde(skip)]
    pub name: String,
    #[serde(default)]
    pub transitive: bool,
    #[serde(default)]
    pub symmetric: bool,
    #[serde(default)]
    pub acyclic: bool,
    #[serde(default)]
    pub taxonomic: bool,
    #[serde(default)]
    pub inheritable: bool,
    /// Declared inverse, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inverse: Option<String>,
    /// The inheritable relation this one blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negates: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// The relations of a network, with resolved inverses and negations.
#[derive(Debug, Clone, PartialEq)]
pub struct Relations {
    list: Vec<Relation>,
    by_key: HashMap<String, RelId>,
    inverse: Vec<Option<RelId>>,
    negated_by: Vec<Vec<RelId>>,
}

/// The lookup key of a relation name: case, '_', '-', ' ' and a leading "/r/" ignored.
pub fn key(name: &str) -> String {
    let name = name.strip_prefix("/r/").unwrap_or(name);
    name.chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

const BUILTIN: &str = include_str!("relations.toml");

impl Relations {
    /// The built-in set.
    pub fn builtin() -> Self {
        let mut r = Relations::empty();
        r.extend_toml(BUILTIN, Path::new("relations.toml"))
            .expect("the built-in relations parse");
        r
    }

    pub fn empty() -> Self {
        Relations {
            list: Vec::new(),
            by_key: HashMap::new(),
            inverse: Vec::new(),
            negated_by: Vec::new(),
        }
    }

    /// Adds or replaces the relations declared in a TOML file.
    pub fn extend_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        self.extend_toml(&text, path)
    }

    /// Adds or replaces the relations declared in TOML text (`path` names it in errors).
    pub fn extend_toml(&mut self, text: &str, path: &Path) -> Result<()> {
        let decl: BTreeMap<String, Relation> = toml::from_str(text)
            .map_err(|e| Error::format(path, format!("relation declarations: {e}")))?;
        // New relations get ids in name order; a saved network stores its ids with it.
        for (name, mut rel) in decl {
            rel.name = name;
            self.declare(rel);
        }
        self.resolve()
            .map_err(|msg| Error::format(path, format!("relation declarations: {msg}")))
    }

    /// Adds `rel` (replacing one of the same key), then resolves inverses and negations.
    pub fn declare(&mut self, rel: Relation) -> RelId {
        let k = key(&rel.name);
        let id = match self.by_key.get(&k) {
            Some(&id) => {
                self.list[id as usize] = rel;
                id
            }
            None => {
                let id = self.list.len() as RelId;
                self.list.push(rel);
                self.by_key.insert(k, id);
                id
            }
        };
        let _ = self.resolve();
        id
    }

    /// The id of `name`, declaring it with no properties if it is new.
    pub fn get_or_declare(&mut self, name: &str) -> RelId {
        match self.id(name) {
            Some(id) => id,
            None => self.declare(Relation {
                name: name.to_string(),
                ..Relation::default()
            }),
        }
    }

    fn resolve(&mut self) -> std::result::Result<(), String> {
        let n = self.list.len();
        self.inverse = vec![None; n];
        self.negated_by = vec![Vec::new(); n];
        let mut problems = Vec::new();
        for i in 0..n {
            if let Some(inv) = self.list[i].inverse.clone() {
                match self.id(&inv) {
                    Some(j) => {
                        self.inverse[i] = Some(j);
                        self.inverse[j as usize] = Some(i as RelId);
                    }
                    None => problems.push(format!(
                        "{}: inverse {inv:?} is not declared",
                        self.list[i].name
                    )),
                }
            }
            if let Some(neg) = self.list[i].negates.clone() {
                match self.id(&neg) {
                    Some(j) => self.negated_by[j as usize].push(i as RelId),
                    None => problems.push(format!(
                        "{}: negates {neg:?}, which is not declared",
                        self.list[i].name
                    )),
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    pub fn id(&self, name: &str) -> Option<RelId> {
        self.by_key.get(&key(name)).copied()
    }

    /// The id of `name`, or an error listing close names.
    pub fn require(&self, name: &str) -> Result<RelId> {
        self.id(name).ok_or_else(|| {
            let k = key(name);
            let mut close: Vec<&str> = self
                .list
                .iter()
                .filter(|r| {
                    let rk = key(&r.name);
                    rk.contains(&k) || k.contains(&rk) || strsim_small(&rk, &k) <= 2
                })
                .map(|r| r.name.as_str())
                .collect();
            close.truncate(8);
            Error::Data(if close.is_empty() {
                format!("unknown relation {name:?}")
            } else {
                format!("unknown relation {name:?}; close: {}", close.join(", "))
            })
        })
    }

    pub fn get(&self, id: RelId) -> &Relation {
        &self.list[id as usize]
    }

    pub fn name(&self, id: RelId) -> &str {
        &self.list[id as usize].name
    }

    pub fn inverse(&self, id: RelId) -> Option<RelId> {
        self.inverse[id as usize]
    }

    /// The relations that block `id` when inherited.
    pub fn negated_by(&self, id: RelId) -> &[RelId] {
        &self.negated_by[id as usize]
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (RelId, &Relation)> {
        self.list.iter().enumerate().map(|(i, r)| (i as RelId, r))
    }

    /// The taxonomic (is-a) relations.
    pub fn taxonomic(&self) -> Vec<RelId> {
        self.iter()
            .filter(|(_, r)| r.taxonomic)
            .map(|(i, _)| i)
            .collect()
    }

    /// The declarations as TOML (what a saved network carries).
    pub fn to_toml(&self) -> String {
        let map: BTreeMap<&str, &Relation> =
            self.list.iter().map(|r| (r.name.as_str(), r)).collect();
        toml::to_string(&map).expect("relations serialize")
    }

    /// Parses what [`Relations::to_toml`] wrote, keeping the ids (the saved order).
    pub fn from_toml_ordered(text: &str, names: &[String], path: &Path) -> Result<Self> {
        let mut decl: BTreeMap<String, Relation> = toml::from_str(text)
            .map_err(|e| Error::format(path, format!("relation declarations: {e}")))?;
        let mut r = Relations::empty();
        for name in names {
            let mut rel = decl
                .remove(name)
                .ok_or_else(|| Error::format(path, format!("relation {name:?} not declared")))?;
            rel.name = name.clone();
            r.list.push(rel);
            r.by_key.insert(key(name), (r.list.len() - 1) as RelId);
        }
        r.resolve()
            .map_err(|msg| Error::format(path, format!("relation declarations: {msg}")))?;
        Ok(r)
    }
}

/// Levenshtein distance, for short names.
pub(crate) fn strsim_small(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names_match_loosely_and_resolve() {
        let r = Relations::builtin();
        let isa = r.id("is_a").unwrap();
        assert_eq!(r.id("IsA"), Some(isa));
        assert_eq!(r.id("/r/IsA"), Some(isa));
        assert_eq!(r.id("is-a"), Some(isa));
        assert!(r.get(isa).transitive && r.get(isa).taxonomic);
        let (hyper, hypo) = (r.id("hypernym").unwrap(), r.id("hyponym").unwrap());
        assert_eq!(r.inverse(hyper), Some(hypo));
        assert_eq!(r.inverse(hypo), Some(hyper));
        let cap = r.id("CapableOf").unwrap();
        assert_eq!(r.negated_by(cap), [r.id("NotCapableOf").unwrap()]);
        for cn in [
            "RelatedTo",
            "FormOf",
            "IsA",
            "PartOf",
            "HasA",
            "UsedFor",
            "CapableOf",
            "AtLocation",
            "Causes",
            "HasSubevent",
            "HasFirstSubevent",
            "HasLastSubevent",
            "HasPrerequisite",
            "HasProperty",
            "MotivatedByGoal",
            "ObstructedBy",
            "Desires",
            "CreatedBy",
            "Synonym",
            "Antonym",
            "DistinctFrom",
            "DerivedFrom",
            "SymbolOf",
            "DefinedAs",
            "MannerOf",
            "LocatedNear",
            "HasContext",
            "SimilarTo",
            "EtymologicallyRelatedTo",
            "EtymologicallyDerivedFrom",
            "CausesDesire",
            "MadeOf",
            "ReceivesAction",
            "ExternalURL",
            "InstanceOf",
            "Entails",
            "NotDesires",
            "NotUsedFor",
            "NotCapableOf",
            "NotHasProperty",
        ] {
            assert!(r.id(cn).is_some(), "{cn}");
        }
        let e = r.require("hypernim").unwrap_err().to_string();
        assert!(e.contains("hypernym"), "{e}");
    }

    #[test]
    fn user_declarations_override_and_bad_ones_are_named() {
        let mut r = Relations::builtin();
        let n = r.len();
        r.extend_toml(
            "[is_a]\ntransitive = false\n[teaches]\ninverse = \"taught_by\"\n[taught_by]\n",
            Path::new("mine.toml"),
        )
        .unwrap();
        assert_eq!(r.len(), n + 2);
        assert!(!r.get(r.id("is_a").unwrap()).transitive);
        assert_eq!(r.inverse(r.id("taught_by").unwrap()), r.id("teaches"));
        let e = Relations::builtin()
            .extend_toml("[x]\ninverse = \"nope\"\n", Path::new("bad.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml") && e.contains("nope"), "{e}");
        let e = Relations::builtin()
            .extend_toml("[x]\ntransitiv = true\n", Path::new("bad.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("transitiv"), "{e}");
    }
}
