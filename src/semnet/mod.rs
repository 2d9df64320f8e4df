//! Semantic networks: concept graphs with typed relations, and the sources they are read from.

pub mod wordnet;
