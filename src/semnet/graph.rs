//! The concept graph: concepts (id, labels, optional gloss and part of speech) and typed,
//! weighted, sourced directed edges, held in a `petgraph` graph whose node indices are the
//! concept indices.

use crate::semnet::relation::{strsim_small, RelId, Relations};
use crate::{Error, Result};
use petgraph::graph::{DiGraph, EdgeIndex, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::HashMap;

/// A concept (a WordNet synset, a ConceptNet term, a user's node).
#[derive(Debug, Clone, PartialEq)]
pub struct Concept {
    /// Unique name: `dog.n.01`, `/c/en/dog`, `Transformer`.
    pub id: String,
    /// Words for it, preferred first (WordNet's lemmas, with '_' for spaces).
    pub labels: Vec<String>,
    pub gloss: Option<String>,
    /// Part of speech for lexical networks (`n`, `v`, `a`, `s`, `r`).
    pub pos: Option<char>,
}

impl Concept {
    /// The preferred label as text ('_' read as a space), or the id.
    pub fn label(&self) -> String {
        self.labels
            .first()
            .map(|l| l.replace('_', " "))
            .unwrap_or_else(|| self.id.clone())
    }
}

/// An asserted relation between two concepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edge {
    pub rel: RelId,
    pub weight: f32,
    /// Index into [`Graph::sources`].
    pub source: u16,
}

/// A semantic network.
#[derive(Debug, Clone)]
pub struct Graph {
    pub relations: Relations,
    pub concepts: Vec<Concept>,
    pub graph: DiGraph<(), Edge, u32>,
    /// Where edges came from (`wordnet-3.0`, a ConceptNet dataset, a file name).
    pub sources: Vec<String>,
    by_id: HashMap<String, u32>,
    /// Lower-cased label -> concepts (in concept order).
    by_label: HashMap<String, Vec<u32>>,
}

/// Hops with the first of each target concept kept, in order.
pub fn unique(hops: impl IntoIterator<Item = Hop>) -> Vec<Hop> {
    let mut out: Vec<Hop> = Vec::new();
    for h in hops {
        if !out.iter().any(|o| o.to == h.to) {
            out.push(h);
        }
    }
    out
}

/// One neighbour reached from a concept: the concept, the relation as asked, and whether the
/// stored edge was read backwards (symmetric or inverse).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hop {
    pub to: u32,
    pub rel: RelId,
    pub edge: EdgeIndex,
    pub reversed: bool,
}

impl Graph {
    pub fn new(relations: Relations) -> Self {
        Graph {
            relations,
            concepts: Vec::new(),
            graph: DiGraph::default(),
            sources: Vec::new(),
            by_id: HashMap::new(),
            by_label: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.concepts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.concepts.is_empty()
    }

    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// Adds a concept; an existing id is updated with any labels, gloss and pos it lacked.
    pub fn add_concept(&mut self, c: Concept) -> u32 {
        if let Some(&i) = self.by_id.get(&c.id) {
            let old = &mut self.concepts[i as usize];
            for l in c.labels {
                if !old.labels.contains(&l) {
                    self.by_label.entry(l.to_lowercase()).or_default().push(i);
                    old.labels.push(l);
                }
            }
            old.gloss = old.gloss.take().or(c.gloss);
            old.pos = old.pos.or(c.pos);
            return i;
        }
        let i = self.concepts.len() as u32;
        for l in &c.labels {
            let v = self.by_label.entry(l.to_lowercase()).or_default();
            if v.last() != Some(&i) {
                v.push(i);
            }
        }
        self.by_id.insert(c.id.clone(), i);
        self.concepts.push(c);
        let n = self.graph.add_node(());
        debug_assert_eq!(n.index() as u32, i);
        i
    }

    /// The index of a source name, adding it if new.
    pub fn source_id(&mut self, name: &str) -> u16 {
        match self.sources.iter().position(|s| s == name) {
            Some(i) => i as u16,
            None => {
                self.sources.push(name.to_string());
                (self.sources.len() - 1) as u16
            }
        }
    }

    /// Adds an edge unless the same (head, relation, tail) is already there.
    pub fn add_edge(&mut self, head: u32, rel: RelId, tail: u32, weight: f32, source: u16) {
        let exists = self
            .graph
            .edges_connecting(NodeIndex::new(head as usize), NodeIndex::new(tail as usize))
            .any(|e| e.weight().rel == rel);
        if !exists {
            self.graph.add_edge(
                NodeIndex::new(head as usize),
                NodeIndex::new(tail as usize),
                Edge {
                    rel,
                    weight,
                    source,
                },
            );
        }
    }

    pub fn concept(&self, i: u32) -> &Concept {
        &self.concepts[i as usize]
    }

    pub fn id_of(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The concepts labelled `label` (any case; '_' and ' ' equal).
    pub fn by_label(&self, label: &str) -> &[u32] {
        let l = label.to_lowercase();
        self.by_label
            .get(&l)
            .or_else(|| self.by_label.get(&l.replace(' ', "_")))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Finds a concept by id, or by a label naming exactly one concept; otherwise an error
    /// suggesting close names (the senses of the word for `dog.n.99`, near spellings else).
    pub fn resolve(&self, name: &str) -> Result<u32> {
        if let Some(i) = self.id_of(name) {
            return Ok(i);
        }
        let by_label = self.by_label(name);
        if by_label.len() == 1 {
            return Ok(by_label[0]);
        }
        let mut close: Vec<&str> = by_label
            .iter()
            .map(|&i| self.concept(i).id.as_str())
            .collect();
        if close.is_empty() {
            // `word.pos.NN`: the word's senses.
            let word = name.split('.').next().unwrap_or(name);
            close = self
                .by_label(word)
                .iter()
                .map(|&i| self.concept(i).id.as_str())
                .collect();
        }
        if close.is_empty() {
            let n = name.chars().count();
            let lower = name.to_lowercase();
            let mut scored: Vec<(usize, &str)> = self
                .concepts
                .iter()
                .filter(|c| c.id.chars().count().abs_diff(n) <= 2)
                .map(|c| (strsim_small(&c.id.to_lowercase(), &lower), c.id.as_str()))
                .filter(|&(d, _)| d <= 2)
                .collect();
            scored.sort();
            close = scored.into_iter().map(|(_, s)| s).collect();
        }
        close.truncate(10);
        let what = if by_label.len() > 1 {
            format!("{name:?} names {} concepts", by_label.len())
        } else {
            format!("unknown concept {name:?}")
        };
        Err(Error::Data(if close.is_empty() {
            what
        } else {
            format!("{what}; did you mean: {}", close.join(", "))
        }))
    }

    /// The edges of `c` in direction `dir` whose relation passes `keep`, as hops to their
    /// other ends, in the order they were added (petgraph lists a node's edges newest first).
    pub fn hops_where(&self, c: u32, dir: Direction, keep: impl Fn(RelId) -> bool) -> Vec<Hop> {
        let reversed = dir == Direction::Incoming;
        let mut v: Vec<Hop> = self
            .graph
            .edges_directed(NodeIndex::new(c as usize), dir)
            .filter(|e| keep(e.weight().rel))
            .map(|e| Hop {
                to: if reversed { e.source() } else { e.target() }.index() as u32,
                rel: e.weight().rel,
                edge: e.id(),
                reversed,
            })
            .collect();
        v.reverse();
        v
    }

    /// The concepts `from` reaches by `rel`: its own edges, edges into it for a symmetric
    /// relation, and edges into it of the declared inverse. Each concept once, in edge order.
    pub fn hops(&self, from: u32, rel: RelId) -> Vec<Hop> {
        let symmetric = self.relations.get(rel).symmetric;
        let inverse = self.relations.inverse(rel);
        let mut found = self.hops_where(from, Direction::Outgoing, |r| r == rel);
        if symmetric || inverse.is_some() {
            found.extend(self.hops_where(from, Direction::Incoming, |r| {
                (symmetric && r == rel) || Some(r) == inverse
            }));
        }
        unique(found.into_iter().map(|h| Hop { rel, ..h }))
    }

    /// Every relation `from` takes part in, both ways: (relation as stored, other concept,
    /// whether `from` is the tail).
    pub fn all_edges(&self, from: u32) -> Vec<(Edge, u32, bool)> {
        let all = |_| true;
        self.hops_where(from, Direction::Outgoing, all)
            .into_iter()
            .chain(self.hops_where(from, Direction::Incoming, all))
            .map(|h| (self.graph[h.edge], h.to, h.reversed))
            .collect()
    }

    /// All edges as (head, relation, tail, edge), in insertion order.
    pub fn triples(&self) -> impl Iterator<Item = (u32, RelId, u32, &Edge)> {
        self.graph.raw_edges().iter().map(|e| {
            (
                e.source().index() as u32,
                e.weight.rel,
                e.target().index() as u32,
                &e.weight,
            )
        })
    }

    /// Edges per relation name, most frequent first.
    pub fn relation_counts(&self) -> Vec<(String, usize)> {
        let mut n = vec![0usize; self.relations.len()];
        for e in self.graph.raw_edges() {
            n[e.weight.rel as usize] += 1;
        }
        let mut v: Vec<(String, usize)> = n
            .into_iter()
            .enumerate()
            .filter(|&(_, c)| c > 0)
            .map(|(i, c)| (self.relations.name(i as RelId).to_string(), c))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}
