//! Training vocabularies on a corpus: char-level, byte-level BPE and BERT's WordPiece, the
//! corpus streamed from a reader thread so it never sits in memory whole; and vocabularies of
//! given symbols (sequence-to-sequence lexicons).

use super::tokenizer::{tok_err, Tokenizer, BERT_SPECIAL, EOT, SEQ2SEQ_SPECIAL, UNK};
use crate::{Error, Result};
use std::collections::BTreeSet;
use std::path::PathBuf;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

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

impl Tokenizer {
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
}
