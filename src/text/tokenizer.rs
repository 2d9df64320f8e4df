//! Tokenizers: train char-level and byte-level BPE vocabularies, load any `tokenizer.json`,
//! and GPT-2's own `vocab.json` + `merges.txt`. All of it is the Hugging Face `tokenizers`
//! library, so what we write loads in Python and the reverse.

use crate::io::gguf::Gguf;
use crate::io::write_atomic;
use crate::{Error, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

/// The end-of-text token of byte-level BPE vocabularies (GPT-2's).
pub const EOT: &str = "<|endoftext|>";
/// The unknown-character token of char-level vocabularies.
pub const UNK: &str = "<unk>";

/// BERT's special tokens, in the id order a trained WordPiece vocabulary gives them.
pub const BERT_SPECIAL: &[&str] = &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Trains `tk` on the text of `files` (any corpus format, see
/// [`crate::io::corpus::for_each_chunk`]), streamed from a reader thread so a large corpus
/// never sits in memory whole.
fn train_streaming<M, N, PT, PP, D, T>(
    tk: &mut tokenizers::TokenizerImpl<M, N, PT, PP, D>,
    trainer: &mut T,
    files: &[PathBuf],
) -> Result<()>
where
    M: tokenizers::Model + Send + Sync,
    N: tokenizers::Normalizer + Send + Sync,
    PT: tokenizers::PreTokenizer + Send + Sync,
    PP: tokenizers::PostProcessor + Send + Sync,
    D: tokenizers::Decoder + Send + Sync,
    T: tokenizers::Trainer<Model = M> + Sync,
{
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(4);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> Result<()> {
            for f in files {
                crate::io::corpus::for_each_chunk(f, 1 << 20, |text| {
                    // A closed channel means training failed; its error is reported instead.
                    let _ = tx.send(text.to_string());
                    Ok(())
                })?;
            }
            Ok(())
        });
        let trained = tk.train(trainer, rx.into_iter());
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(Error::Data("the corpus reader thread panicked".into())));
        read?;
        trained.map_err(|e| tok_err(files.first().map(|p| p.as_path()), e))?;
        Ok(())
    })
}

/// Characters a WordPiece vocabulary starts from; rarer ones become `[UNK]` (as
/// `BertWordPieceTokenizer`'s default).
const ALPHABET_LIMIT: usize = 1000;

/// What a WordPiece training needs to know of the characters of `files` before it starts:
/// the `limit` most frequent characters of the normalised words (ties broken by code point),
/// and which of those occur inside a word (so `##c` pieces exist).
struct Alphabet {
    chars: std::collections::HashSet<char>,
    continuations: Vec<char>,
}

fn scan_alphabet(
    files: &[PathBuf],
    normalizer: &impl tokenizers::Normalizer,
    pre_tokenizer: &impl tokenizers::PreTokenizer,
    limit: usize,
) -> Result<Alphabet> {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString};
    let mut counts: std::collections::HashMap<char, u64> = Default::default();
    let mut inner: std::collections::HashSet<char> = Default::default();
    for f in files {
        crate::io::corpus::for_each_chunk(f, 1 << 20, |text| {
            let err = |e| tok_err(Some(f), e);
            let mut n = tokenizers::NormalizedString::from(text);
            normalizer.normalize(&mut n).map_err(err)?;
            let mut pts = PreTokenizedString::from(n);
            pre_tokenizer.pre_tokenize(&mut pts).map_err(err)?;
            for (word, _, _) in pts.get_splits(OffsetReferential::Normalized, OffsetType::None) {
                for (i, c) in word.chars().enumerate() {
                    *counts.entry(c).or_default() += 1;
                    if i > 0 {
                        inner.insert(c);
                    }
                }
            }
            Ok(())
        })?;
    }
    let mut all: Vec<(char, u64)> = counts.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let chars: std::collections::HashSet<char> =
        all.into_iter().take(limit).map(|(c, _)| c).collect();
    let mut continuations: Vec<char> = inner.into_iter().filter(|c| chars.contains(c)).collect();
    continuations.sort_unstable();
    Ok(Alphabet {
        chars,
        continuations,
    })
}

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

fn tok_err(path: Option<&Path>, e: impl std::fmt::Display) -> Error {
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

    /// A byte-level BPE tokenizer from its parts as llama.cpp's GGUF stores them: the tokens
    /// (by id), the merges (`"a b"`), each token's type (3 control and 4 user-defined tokens
    /// become added tokens, the control ones special) and the pre-tokenizer name
    /// (`tokenizer.ggml.pre`).
    pub fn from_bpe_parts(
        tokens: &[String],
        merges: &[String],
        types: &[i64],
        pre: &str,
        special: &crate::io::gguf::SpecialTokens,
    ) -> Result<Self> {
        use tokenizers::pre_tokenizers::digits::Digits;
        use tokenizers::pre_tokenizers::sequence::Sequence;
        use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
        use tokenizers::pre_tokenizers::PreTokenizerWrapper;
        use tokenizers::SplitDelimiterBehavior;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        if vocab.len() != tokens.len() {
            return Err(tok_err(None, "the vocabulary has duplicate tokens"));
        }
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tok_err(None, format!("merge {m:?} is not \"a b\"")))
            })
            .collect::<Result<_>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tok_err(None, e))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        // The pre-tokenizer regexes llama.cpp names in `tokenizer.ggml.pre` (llama-vocab.cpp),
        // written as the `tokenizers` pipelines the original tokenizer.json files use.
        let pre_tok: PreTokenizerWrapper = match pre {
            "default" | "gpt2" | "gpt-2" => byte_level.into(),
            "smollm" => Sequence::new(vec![
                Digits::new(true).into(),
                byte_level.into(),
            ])
            .into(),
            "llama3" | "llama-v3" | "llama-bpe" => Sequence::new(vec![
                Split::new(
                    SplitPattern::Regex(
                        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                            .into(),
                    ),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| tok_err(None, e))?
                .into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
            other => {
                return Err(tok_err(
                    None,
                    format!("pre-tokenizer {other:?} is not supported (supported: default, gpt2, smollm, llama-bpe)"),
                ))
            }
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let added = |kind: i64| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(types)
                .filter(|(_, &t)| t == kind)
                .map(|(tok, _)| AddedToken::from(tok.clone(), kind == 3))
                .collect()
        };
        inner.add_special_tokens(&added(3));
        inner.add_tokens(&added(4));
        match Self::bos_processor(tokens, special)? {
            Some(tp) => inner.with_post_processor(Some(tp)),
            None => inner.with_post_processor(Some(ByteLevel::new(false, false, true))),
        };
        Ok(Tokenizer { inner })
    }

    /// `inner` with the beginning-of-sequence token put first when `special.add_bos`.
    fn with_bos(
        mut inner: tokenizers::Tokenizer,
        tokens: &[String],
        special: &crate::io::gguf::SpecialTokens,
    ) -> Result<Self> {
        if let Some(tp) = Self::bos_processor(tokens, special)? {
            inner.with_post_processor(Some(tp));
        }
        Ok(Tokenizer { inner })
    }

    /// `<bos> $A` (and `<bos> $A <bos> $B`) when `special.add_bos` names a known token.
    fn bos_processor(
        tokens: &[String],
        special: &crate::io::gguf::SpecialTokens,
    ) -> Result<Option<tokenizers::processors::template::TemplateProcessing>> {
        use tokenizers::processors::template::TemplateProcessing;
        let bos = special
            .bos
            .and_then(|id| tokens.get(id as usize).map(|t| (t.clone(), id)));
        let Some((tok, id)) = bos.filter(|_| special.add_bos) else {
            return Ok(None);
        };
        TemplateProcessing::builder()
            .try_single(format!("{tok} $A"))
            .map_err(|e| tok_err(None, e))?
            .try_pair(format!("{tok} $A {tok} $B"))
            .map_err(|e| tok_err(None, e))?
            .special_tokens(vec![(tok, id)])
            .build()
            .map(Some)
            .map_err(|e| tok_err(None, e))
    }

    /// The tokenizer the metadata describes: byte-level BPE (`tokenizer.ggml.model = "gpt2"`:
    /// tokens, merges, the pre-tokenizer named by `tokenizer.ggml.pre`) or SentencePiece
    /// (`"llama"`: tokens, scores, `add_space_prefix`); `tokenizer.ggml.token_type` 3 (control)
    /// and 4 (user-defined) become added tokens.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let model = g.str("tokenizer.ggml.model")?;
        let tokens = g.str_array("tokenizer.ggml.tokens")?;
        let types = g
            .int_array("tokenizer.ggml.token_type")?
            .unwrap_or_else(|| vec![1; tokens.len()]);
        if types.len() != tokens.len() {
            return Err(g.err(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let special = g.special_tokens()?;
        let built = match model {
            "gpt2" => {
                let merges = g.str_array("tokenizer.ggml.merges")?;
                let pre = g.str("tokenizer.ggml.pre").unwrap_or("default");
                Tokenizer::from_bpe_parts(&tokens, &merges, &types, pre, &special)
            }
            "llama" => {
                let scores = g.f32_array("tokenizer.ggml.scores")?;
                let prefix = g.bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                Tokenizer::from_spm_parts(
                    &tokens, &scores, &types, &special, prefix,
                )
            }
            other => {
                return Err(g.err(format!(
                    "tokenizer model {other:?} is not supported (supported: gpt2, byte-level BPE; llama, SentencePiece)"
                )))
            }
        };
        built.map_err(|e| g.err(e.to_string()))
    }

    /// A SentencePiece vocabulary as llama.cpp stores it in GGUF (`tokenizer.ggml.model =
    /// "llama"`: tokens, scores, token types; `▁` for spaces, `<0xNN>` byte tokens), rebuilt
    /// as `tokenizers` BPE with byte fallback that tokenizes as llama.cpp's SPM tokenizer
    /// does: at each step it merges the adjacent pair whose merged token scores highest (the
    /// leftmost on ties), so the merges are every split of every normal token into two tokens,
    /// best score first; characters outside the vocabulary fall back to their bytes. Control
    /// tokens (type 3) are special; user-defined ones (type 4: Gemma's runs of spaces, tabs and
    /// newlines, HTML tags) are matched verbatim in the text, as llama.cpp matches them before
    /// tokenizing. Spaces become `▁`, and with `add_space_prefix` one is put before each text.
    pub fn from_spm_parts(
        tokens: &[String],
        scores: &[f32],
        types: &[i64],
        special: &crate::io::gguf::SpecialTokens,
        add_space_prefix: bool,
    ) -> Result<Self> {
        use std::collections::HashMap;
        use tokenizers::decoders::byte_fallback::ByteFallback;
        use tokenizers::decoders::sequence::Sequence as DecoderSequence;
        use tokenizers::decoders::strip::Strip;
        use tokenizers::decoders::DecoderWrapper;
        use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence};
        if scores.len() != tokens.len() || types.len() != tokens.len() {
            return Err(tok_err(
                None,
                format!(
                    "{} tokens but {} scores and {} token types",
                    tokens.len(),
                    scores.len(),
                    types.len()
                ),
            ));
        }
        let ids: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        if ids.len() != tokens.len() {
            return Err(tok_err(None, "the vocabulary has duplicate tokens"));
        }
        // (score, id, split position) of every split of every normal token.
        let mut ranked: Vec<(f32, u32, usize)> = vec![];
        for (id, t) in tokens.iter().enumerate() {
            if types[id] != 1 {
                continue;
            }
            for (pos, _) in t.char_indices().skip(1) {
                if ids.contains_key(&t[..pos]) && ids.contains_key(&t[pos..]) {
                    ranked.push((scores[id], id as u32, pos));
                }
            }
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let merges: Vec<(String, String)> = ranked
            .iter()
            .map(|&(_, id, pos)| {
                let t = &tokens[id as usize];
                (t[..pos].to_string(), t[pos..].to_string())
            })
            .collect();
        let vocab: tokenizers::models::bpe::Vocab =
            ids.iter().map(|(t, &i)| (t.to_string(), i)).collect();
        let mut bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .fuse_unk(true);
        if let Some(unk) = special.unk.and_then(|i| tokens.get(i as usize)) {
            bpe = bpe.unk_token(unk.clone());
        }
        let bpe = bpe.build().map_err(|e| tok_err(None, e))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let replace = Replace::new(" ", "\u{2581}").map_err(|e| tok_err(None, e))?;
        let mut norms: Vec<NormalizerWrapper> = vec![];
        if add_space_prefix {
            norms.push(Prepend::new("\u{2581}".into()).into());
        }
        norms.push(replace.into());
        inner.with_normalizer(Some(Sequence::new(norms)));
        let mut decoders: Vec<DecoderWrapper> = vec![
            Replace::new("\u{2581}", " ")
                .map_err(|e| tok_err(None, e))?
                .into(),
            ByteFallback::default().into(),
            Fuse::default().into(),
        ];
        if add_space_prefix {
            decoders.push(Strip::new(' ', 1, 0).into());
        }
        inner.with_decoder(Some(DecoderSequence::new(decoders)));
        let added = |kind: i64| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(types)
                .filter(|(_, &t)| t == kind)
                .map(|(tok, _)| AddedToken::from(tok.clone(), kind == 3).normalized(false))
                .collect()
        };
        inner.add_special_tokens(&added(3));
        inner.add_tokens(&added(4));
        Self::with_bos(inner, tokens, special)
    }

    /// A vocabulary of [`SEQ2SEQ_SPECIAL`] then `symbols` (deduplicated, in the given order):
    /// with `chars`, one token per character (spellings; decoding joins them), else one token
    /// per whitespace-separated word (phoneme strings; decoding joins them with spaces).
    /// Anything else becomes `<unk>`.
    pub fn from_symbols(symbols: &[String], chars: bool) -> Result<Self> {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
        let mut vocab: Vec<String> = SEQ2SEQ_SPECIAL.iter().map(|s| s.to_string()).collect();
        for s in symbols {
            if !vocab.contains(s) {
                vocab.push(s.clone());
            }
        }
        if vocab.len() == SEQ2SEQ_SPECIAL.len() {
            return Err(Error::Data("no symbols to build a vocabulary from".into()));
        }
        let map: tokenizers::models::bpe::Vocab = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let unk = SEQ2SEQ_SPECIAL[2].to_string();
        let mut inner = if chars {
            let bpe = BPE::builder()
                .vocab_and_merges(map, vec![])
                .unk_token(unk)
                .build()
                .map_err(|e| tok_err(None, e))?;
            let mut t = tokenizers::Tokenizer::new(bpe);
            t.with_decoder(Some(Fuse::new()));
            t
        } else {
            let wl = WordLevel::builder()
                .vocab(map.into_iter().collect())
                .unk_token(unk)
                .build()
                .map_err(|e| tok_err(None, e))?;
            let mut t = tokenizers::Tokenizer::new(wl);
            t.with_pre_tokenizer(Some(WhitespaceSplit));
            t
        };
        inner.add_special_tokens(
            &SEQ2SEQ_SPECIAL
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect::<Vec<_>>(),
        );
        Ok(Tokenizer { inner })
    }

    /// A character-level vocabulary: one token per distinct character of `texts`, in code point
    /// order, then `<unk>` for characters never seen.
    pub fn train_char<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut chars = BTreeSet::new();
        for t in texts {
            chars.extend(t.chars());
        }
        if chars.is_empty() {
            return Err(Error::Data(
                "cannot build a character vocabulary from empty text".into(),
            ));
        }
        let mut vocab: Vec<(String, u32)> = chars
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i as u32))
            .collect();
        vocab.push((UNK.to_string(), chars.len() as u32));
        let bpe = BPE::builder()
            .vocab_and_merges(
                vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
                vec![],
            )
            .unk_token(UNK.to_string())
            .build()
            .map_err(|e| tok_err(None, e))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        // Without a decoder, decoding would join tokens with spaces.
        inner.with_decoder(Some(Fuse::new()));
        Ok(Tokenizer { inner })
    }

    /// Trains a byte-level BPE vocabulary of `vocab_size` tokens (including the 256 byte tokens
    /// and `<|endoftext|>`) on `files`.
    pub fn train_bpe(files: &[PathBuf], vocab_size: usize, min_frequency: u64) -> Result<Self> {
        if vocab_size < 257 {
            return Err(Error::Config(format!(
                "byte-level BPE needs vocab_size >= 257 (256 bytes + {EOT}), got {vocab_size}"
            )));
        }
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(min_frequency)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tk = TokenizerBuilder::<
            BPE,
            tokenizers::NormalizerWrapper,
            ByteLevel,
            ByteLevel,
            ByteLevelDecoder,
        >::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevelDecoder::default()))
        .build()
        .map_err(|e| tok_err(None, e))?;
        train_streaming(&mut tk, &mut trainer, files)?;
        let json = tk.to_string(false).map_err(|e| tok_err(None, e))?;
        let inner: tokenizers::Tokenizer = json.parse().map_err(|e| tok_err(None, e))?;
        Ok(Tokenizer { inner })
    }

    /// Trains a BERT WordPiece vocabulary of `vocab_size` tokens on `files`: BERT's normaliser
    /// (control characters removed, CJK characters split, lowercasing and accent stripping
    /// when `lowercase`), its whitespace-and-punctuation pre-tokeniser, `##` continuation
    /// pieces, at most 1000 initial characters (others become `[UNK]`), and the special tokens
    /// `[PAD]` 0, `[UNK]` 1, `[CLS]` 2, `[SEP]` 3, `[MASK]` 4, with `[CLS] A [SEP]` (and
    /// `[CLS] A [SEP] B [SEP]` for pairs) added on encoding. As `BertWordPieceTokenizer` of
    /// Python's `tokenizers`, so the result loads as transformers' `BertTokenizerFast`.
    ///
    /// Reproducible: the same files give the same vocabulary (Python's trainer does not: two
    /// of its runs share about 99% of their tokens). Ids differ from Python's in order only:
    /// the specials, then the `##` pieces, the characters, the merged pieces.
    pub fn train_wordpiece(
        files: &[PathBuf],
        vocab_size: usize,
        min_frequency: u64,
        lowercase: bool,
    ) -> Result<Self> {
        use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
        use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainerBuilder};
        use tokenizers::normalizers::bert::BertNormalizer;
        use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
        use tokenizers::processors::bert::BertProcessing;
        if vocab_size < BERT_SPECIAL.len() + 1 {
            return Err(Error::Config(format!(
                "WordPiece needs vocab_size > {} (the special tokens), got {vocab_size}",
                BERT_SPECIAL.len()
            )));
        }
        let normalizer = BertNormalizer::new(true, true, None, lowercase);
        // The library's trainer is not reproducible as it stands: it cuts the alphabet by
        // sorting a hash map's entries unstably, and numbers the `##c` pieces in hash-map order,
        // which then breaks ties between equally frequent merges. So the alphabet is chosen
        // here and given as the initial one, and the `##c` pieces are numbered in code-point
        // order by passing them first, as if special; they become ordinary pieces below.
        let alphabet = scan_alphabet(files, &normalizer, &BertPreTokenizer, ALPHABET_LIMIT)?;
        if alphabet.chars.is_empty() {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            return Err(Error::Data(format!(
                "no text to train a vocabulary on in {}",
                names.join(", ")
            )));
        }
        let mut first: Vec<AddedToken> = BERT_SPECIAL
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        first.extend(
            alphabet
                .continuations
                .iter()
                .map(|c| AddedToken::from(format!("##{c}"), true)),
        );
        let mut trainer = WordPieceTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(min_frequency)
            .show_progress(false)
            .limit_alphabet(ALPHABET_LIMIT)
            .initial_alphabet(alphabet.chars)
            .continuing_subword_prefix("##".into())
            .special_tokens(first)
            .build();
        let model = WordPiece::builder()
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .build()
            .map_err(|e| tok_err(None, e))?;
        let mut tk = TokenizerBuilder::<
            WordPiece,
            BertNormalizer,
            BertPreTokenizer,
            BertProcessing,
            WordPieceDecoder,
        >::new()
        .with_model(model)
        .with_normalizer(Some(normalizer))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_decoder(Some(WordPieceDecoder::default()))
        .build()
        .map_err(|e| tok_err(None, e))?;
        train_streaming(&mut tk, &mut trainer, files)?;
        // Rebuilt from the trained vocabulary with only BERT's special tokens added.
        let vocab = tokenizers::Model::get_vocab(tk.get_model());
        let model = WordPiece::builder()
            .vocab(
                vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
            )
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .build()
            .map_err(|e| tok_err(None, e))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_normalizer(Some(normalizer));
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_decoder(Some(WordPieceDecoder::default()));
        inner.add_special_tokens(
            &BERT_SPECIAL
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect::<Vec<_>>(),
        );
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| tok_err(None, format!("{t} missing after training")))
        };
        let processor = BertProcessing::new(
            ("[SEP]".into(), id("[SEP]")?),
            ("[CLS]".into(), id("[CLS]")?),
        );
        inner.with_post_processor(Some(processor));
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
