//! Semantic networks: concept graphs with typed relations whose properties are declared
//! (transitive, symmetric, inverse, taxonomic, inheritable with exceptions), read from
//! WordNet, ConceptNet or plain triples, queried and reasoned over, and turned into text,
//! prompt facts and embeddings for language models.

pub mod graph;
pub mod inference;
pub mod relation;
pub mod similarity;
pub mod store;
pub mod wordnet;

pub use graph::{Concept, Edge, Graph, Hop};
pub use inference::{Inherited, Reached, Toward};
pub use relation::{RelId, Relation, Relations};
pub use similarity::{Measure, Node, Taxonomy};
