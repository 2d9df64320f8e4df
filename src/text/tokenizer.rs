//! The tokenizer: load any `tokenizer.json` (and GPT-2's own `vocab.json` + `merges.txt`),
//! encode and decode, save. Training vocabularies is in [`super::train`], rebuilding them
//! from GGUF metadata in [`super::gguf_vocab`]. All of it is the Hugging Face `tokenizers`
//! library, so what we write loads in Python and the reverse.

use crate::io::write_atomic;
use crate::{Error, Result};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// The end-of-text token of byte-level BPE vocabularies (GPT-2's).
pub const EOT: &str = "<|endoftext|>";
/// The unknown-character token of char-level vocabularies.
pub const UNK: &str = "<unk>";

/// BERT's special tokens, in the id order a trained WordPiece vocabulary gives them.
pub const BERT_SPECIAL: &[&str] = &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// The special tokens of sequence-to-sequence vocabularies, as Marian names them: padding (also
/// the decoder's start token), end of sequence, unknown; ids 0, 1, 2.
pub const SEQ2SEQ_SPECIAL: [&str; 3] = ["<pad>", "</s>", "<unk>"];

/// Byte ranges of tokens in their text.
pub type Offsets = Vec<(usize, usize)>;

/// A loaded tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
}

pub(crate) fn tok_err(path: Option<&Path>, e: impl std::fmt::Display) -> Error {
    match path {
        Some(p) => Error::format(p, format!("tokenizer: {e}")),
        None => Error::Config(format!("tokenizer: {e}")),
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let mut inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| tok_err(Some(path), e))?;
        // Some files carry fixed padding/truncation (all-MiniLM-L6-v2's pads every text to
        // 128); ferroformer pads batches and truncates to the model's limit itself.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| tok_err(Some(path), e))?;
        Ok(Tokenizer { inner })
    }

    /// Loads the `tokenizer.json` of a model directory, with an error naming the directory
    /// when there is none.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        Self::load(&dir.join("tokenizer.json")).map_err(|e| match e {
            Error::Io { .. } => Error::format(dir, "no tokenizer.json in this model directory"),
            e => e,
        })
    }

    /// Writes `tokenizer.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let s = self
            .inner
            .to_string(true)
            .map_err(|e| tok_err(Some(path), e))?;
        write_atomic(path, s.as_bytes())
    }

    /// Writes `tokenizer_config.json` for a BERT-style tokenizer: the special tokens it has
    /// (`[CLS]`, `[SEP]`, `[PAD]`, `[MASK]`, `[UNK]`) under transformers' names, so
    /// `AutoTokenizer` (and its fill-mask pipeline) knows them.
    pub fn save_bert_config(&self, path: &Path, model_max_length: usize) -> Result<()> {
        let mut tc = serde_json::Map::new();
        tc.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        tc.insert("model_max_length".into(), model_max_length.into());
        for (key, tok) in [
            ("cls_token", "[CLS]"),
            ("sep_token", "[SEP]"),
            ("pad_token", "[PAD]"),
            ("mask_token", "[MASK]"),
            ("unk_token", "[UNK]"),
        ] {
            if self.token_id(tok).is_some() {
                tc.insert(key.into(), tok.into());
            }
        }
        crate::io::write_json_atomic(path, &serde_json::Value::Object(tc))
    }

    /// GPT-2's tokenizer from its original `vocab.json` (a.k.a. `encoder.json`) and
    /// `merges.txt` (a.k.a. `vocab.bpe`).
    pub fn from_gpt2_files(vocab: &Path, merges: &Path) -> Result<Self> {
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| tok_err(Some(vocab), e))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.with_post_processor(Some(ByteLevel::new(false, false, true)));
        inner.add_special_tokens(&[AddedToken::from(EOT, true)]);
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| tok_err(None, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` (without special tokens added) and each token's byte range in it.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Offsets)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(None, e))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Token ids of `text` with the tokenizer's special tokens (BERT's `[CLS] ... [SEP]`).
    pub fn encode_special(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| tok_err(None, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, false)
    }

    /// Text of `ids`, dropping special tokens when `skip_special`.
    pub fn decode_with(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| tok_err(None, e))
    }

    /// sha256 of the tokenizer's JSON: identifies it in caches.
    pub fn fingerprint(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let s = self.inner.to_string(false).map_err(|e| tok_err(None, e))?;
        Ok(format!("{:x}", Sha256::digest(s.as_bytes())))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token, if in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token of an id, if in the vocabulary.
    pub fn id_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The ids of the special tokens (`[CLS]`, `[PAD]`, `<|endoftext|>`, ...), ascending.
    pub fn special_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }
}
