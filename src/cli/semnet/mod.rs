//! `ferroformer semnet`: build, query and reason over semantic networks, and turn them into
//! text, prompt facts and embeddings; one file per group of sub-commands.

mod embed;
mod export;
mod import;
mod query;
mod text;

use super::Common;
use anyhow::Result;
use clap::{Args, Subcommand};
use embed::EmbedArgs;
use export::ExportArgs;
use ferroformer::semnet::{self, Graph, Opened};
use import::ImportArgs;
use query::{ClosureArgs, PathArgs, QueryArgs, SimilarityArgs};
use std::path::PathBuf;
use std::time::Instant;
use text::{ExtractArgs, FactsArgs, VerbalizeArgs};

#[derive(Subcommand, Debug)]
pub enum SemnetCmd {
    /// Read a network (WordNet's database files, ConceptNet's CSV dump, TSV triples) and save
    /// it as a compact .semnet file; report its size and any cycle in a relation declared
    /// acyclic.
    Import(ImportArgs),
    /// Everything about one concept: labels, gloss, its relations both ways (symmetric and
    /// inverse ones included), what it inherits, its depth and hypernym paths.
    Query(QueryArgs),
    /// Transitive closure of a concept: its ancestors (or descendants with --down) along the
    /// taxonomic relations or the ones named, nearest first.
    Closure(ClosureArgs),
    /// Similarity of two concepts with NLTK's definitions: path, wup (Wu-Palmer) or lch
    /// (Leacock-Chodorow); prints the number.
    Similarity(SimilarityArgs),
    /// The shortest chain of relations between two concepts (edges read either way), and
    /// their lowest common hypernyms.
    Path(PathArgs),
    /// Turn triples into sentences from each relation's template: plain text, JSON lines
    /// for a pre-training corpus, or chat `messages` records for instruction tuning.
    Verbalize(VerbalizeArgs),
    /// Find triples in text with lexico-syntactic patterns ("X is a type of Y", "Y such as
    /// X", "X is part of Y", "X has Y", ...); with --gold, precision and recall.
    Extract(ExtractArgs),
    /// The facts the network holds about the concepts a question names, to prepend to a
    /// prompt.
    Facts(FactsArgs),
    /// Write a network, or a concept's neighbourhood, as JSON, TSV, Graphviz DOT or PNG.
    Export(ExportArgs),
    /// Train TransE knowledge-graph embeddings through the training engine (checkpoints,
    /// metrics.jsonl, loss.png, exact resume) and evaluate link prediction: filtered MRR,
    /// mean rank, Hits@1/3/10 on the validation and test triples. From a network (split
    /// seeded 90/5/5: for WordNet, WN18RR-style over noun synsets; else all triples) or a
    /// split directory.
    Embed(EmbedArgs),
}

#[derive(Args, Debug, Clone)]
pub struct GraphArg {
    /// The network: `wordnet` (the asset), a WordNet database directory, a .semnet file, TSV
    /// triples (.tsv) or a ConceptNet dump (.csv).
    #[arg(long, default_value = "wordnet")]
    pub graph: String,
    /// A TOML file of relation declarations adding to or overriding the built-in ones (for
    /// text imports; see src/semnet/relations.toml for the format).
    #[arg(long)]
    pub relations: Option<PathBuf>,
}

impl GraphArg {
    pub(crate) fn open(&self, c: &Common) -> Result<Graph> {
        let t = Instant::now();
        let (g, how) = semnet::open(&self.graph, self.relations.as_deref())?;
        if c.progress() {
            let what = match &how {
                Opened::Saved => "saved network".to_string(),
                Opened::WordNet => "WordNet".to_string(),
                Opened::Tsv(r) | Opened::ConceptNet(r) => r.summary(),
            };
            eprintln!(
                "{}: {} concepts, {} edges ({what}; {:.2} s)",
                self.graph,
                g.len(),
                g.edge_count(),
                t.elapsed().as_secs_f64()
            );
        }
        Ok(g)
    }
}

pub fn run(cmd: SemnetCmd, c: &Common) -> Result<()> {
    match cmd {
        SemnetCmd::Import(a) => import::run(a, c),
        SemnetCmd::Query(a) => query::query(a, c),
        SemnetCmd::Closure(a) => query::closure(a, c),
        SemnetCmd::Similarity(a) => query::similarity(a, c),
        SemnetCmd::Path(a) => query::path(a, c),
        SemnetCmd::Verbalize(a) => text::verbalize(a, c),
        SemnetCmd::Extract(a) => text::extract(a, c),
        SemnetCmd::Facts(a) => text::facts(a, c),
        SemnetCmd::Export(a) => export::run(a, c),
        SemnetCmd::Embed(a) => embed::run(a, c),
    }
}

pub(super) fn relations(g: &Graph, names: &[String]) -> Result<Vec<u16>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    Ok(names
        .iter()
        .map(|n| g.relations.require(n))
        .collect::<ferroformer::Result<_>>()?)
}
