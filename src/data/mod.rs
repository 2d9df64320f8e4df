//! Data: text corpora turned into token shards on disk, and batches drawn from them.

pub mod corpus;
pub mod images;
pub mod instruct;
pub mod instruct_tasks;
pub mod labelled;
pub mod lexicon;
pub mod shards;
pub mod wiki;

pub use corpus::{corpus_files, read_text};
pub use shards::{Split, TokenShard};
