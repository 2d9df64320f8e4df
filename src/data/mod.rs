//! Data: text corpora turned into token shards on disk, and batches drawn from them; labelled
//! texts, instruction records, images, lexicons. (Corpus files themselves are read by
//! [`crate::io::corpus`].)

pub mod image_preprocess;
pub mod images;
pub mod instruct;
pub mod labelled;
pub mod lexicon;
pub mod shards;

pub use crate::io::corpus::{self, corpus_files, read_text};
pub use shards::{Split, TokenShard};
