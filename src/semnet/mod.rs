//! Semantic networks: concept graphs with typed relations whose properties are declared
//! (transitive, symmetric, inverse, taxonomic, inheritable with exceptions), read from
//! WordNet, ConceptNet or plain triples, queried and reasoned over, and turned into text,
//! prompt facts and embeddings for language models.

pub mod export;
pub mod extract;
pub mod facts;
pub mod graph;
pub mod import;
pub mod inference;
pub mod kg;
pub mod relation;
pub mod similarity;
pub mod store;
pub mod transe;
pub mod verbalize;
pub mod wordnet;

pub use graph::{Concept, Edge, Graph, Hop};
pub use inference::{Inherited, Reached, Toward};
pub use relation::{RelId, Relation, Relations};
pub use similarity::{Measure, Node, Taxonomy};

use crate::{Error, Result};
use std::path::Path;

/// What [`open`] read.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    Saved,
    WordNet,
    Tsv(import::ImportReport),
    ConceptNet(import::ImportReport),
}

/// Opens a network by name or path: `wordnet` (the asset), a WordNet database directory, a
/// saved `.semnet` file, TSV triples (`.tsv`/`.txt`) or a ConceptNet dump (`.csv`).
/// `relations` (a TOML file) adds or overrides relation declarations for text imports.
pub fn open(spec: &str, relations: Option<&Path>) -> Result<(Graph, Opened)> {
    open_with(spec, relations, &[])
}

/// [`open`], keeping only ConceptNet edges whose two ends are in `langs` (empty: all).
pub fn open_with(
    spec: &str,
    relations: Option<&Path>,
    langs: &[String],
) -> Result<(Graph, Opened)> {
    let path = Path::new(spec);
    let mut rels = Relations::builtin();
    if let Some(r) = relations {
        rels.extend_file(r)?;
    }
    if spec == "wordnet" && !path.exists() {
        let dir = crate::assets::ensure("wordnet")?;
        return Ok((wordnet::import(&dir)?, Opened::WordNet));
    }
    if path.is_dir() {
        if path.join("data.noun").exists() {
            return Ok((wordnet::import(path)?, Opened::WordNet));
        }
        return Err(Error::format(
            path,
            "a directory, but not WordNet's database files (no data.noun)",
        ));
    }
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such network (give `wordnet`, a .semnet, .tsv or ConceptNet .csv file)",
            ),
        ));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "semnet" => Ok((store::load(path)?, Opened::Saved)),
        "csv" => {
            let mut g = Graph::new(rels);
            let r = import::conceptnet(&mut g, path, langs)?;
            Ok((g, Opened::ConceptNet(r)))
        }
        "tsv" | "txt" => {
            let mut g = Graph::new(rels);
            let r = import::tsv(&mut g, path)?;
            Ok((g, Opened::Tsv(r)))
        }
        _ => Err(Error::format(
            path,
            "unknown network format (expected .semnet, .tsv, .txt or ConceptNet .csv)",
        )),
    }
}
