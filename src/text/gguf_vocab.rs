//! Vocabularies as llama.cpp stores them in GGUF metadata, rebuilt as `tokenizers`
//! tokenizers: byte-level BPE (`tokenizer.ggml.model = "gpt2"`) and SentencePiece
//! (`"llama"`), with their added tokens and beginning-of-sequence handling.

use super::tokenizer::{tok_err, Tokenizer};
use crate::io::gguf::Gguf;
use crate::io::gguf_write::Metadata;
use crate::Result;
use candle_core::quantized::gguf_file::Value as GgufValue;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// The pre-tokenizer regexes llama.cpp names in `tokenizer.ggml.pre` (llama-vocab.cpp), as
/// the models' own tokenizer.json files write them.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const LLAMA_CPP_DEFAULT_SPLITS: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// `regex` splits the text into its matches and what lies between them.
fn split(regex: &str) -> Result<tokenizers::pre_tokenizers::PreTokenizerWrapper> {
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    Ok(Split::new(
        SplitPattern::Regex(regex.into()),
        tokenizers::SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| tok_err(None, e))?
    .into())
}

/// `regex` splits the text, then each piece becomes bytes.
fn split_then_bytes(regex: &str) -> Result<tokenizers::pre_tokenizers::PreTokenizerWrapper> {
    use tokenizers::pre_tokenizers::sequence::Sequence;
    Ok(Sequence::new(vec![
        split(regex)?,
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}

impl Tokenizer {
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
        use tokenizers::pre_tokenizers::PreTokenizerWrapper;
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
            "gpt2" | "gpt-2" => byte_level.into(),
            // What llama.cpp does with a BPE vocabulary of no known pre-tokenizer (files
            // converted before `tokenizer.ggml.pre` existed): its four splits in turn.
            "default" => Sequence::new(
                LLAMA_CPP_DEFAULT_SPLITS
                    .iter()
                    .map(|r| split(r))
                    .chain([Ok(ByteLevel::new(false, true, false).into())])
                    .collect::<Result<_>>()?,
            )
            .into(),
            "smollm" => Sequence::new(vec![
                Digits::new(true).into(),
                byte_level.into(),
            ])
            .into(),
            "llama3" | "llama-v3" | "llama-bpe" => split_then_bytes(LLAMA3_SPLIT)?,
            // Qwen 2, 2.5 and 3 (and DeepSeek's Qwen distillations): Llama 3's split with
            // every digit on its own.
            "qwen2" | "deepseek-r1-qwen" => split_then_bytes(QWEN2_SPLIT)?,
            other => {
                return Err(tok_err(
                    None,
                    format!("pre-tokenizer {other:?} is not supported (supported: default, gpt-2, smollm, llama-bpe, qwen2)"),
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
}

/// `tokenizer.ggml.pre` names [`Tokenizer::from_bpe_parts`] builds, most specific first.
const PRE_TOKENIZERS: &[&str] = &["smollm", "llama-bpe", "qwen2", "gpt2", "default"];

impl Tokenizer {
    /// The vocabulary as llama.cpp's GGUF metadata (`tokenizer.ggml.*`), the inverse of
    /// [`Tokenizer::from_gguf`] for byte-level BPE: tokens by id (`vocab_size` of them: ids the
    /// tokenizer lacks become `[PAD{id}]`, type 5 unused, as llama.cpp's converter pads them),
    /// token types (added tokens: 3 control if special, else 4 user-defined; the rest 1), the
    /// merges, the pre-tokenizer's llama.cpp name (found by building each one llama.cpp knows
    /// and comparing), and the special token ids. A tokenizer llama.cpp cannot express is an
    /// error naming what it lacks.
    pub fn to_gguf(
        &self,
        special: &crate::io::gguf::SpecialTokens,
        vocab_size: usize,
    ) -> Result<Metadata> {
        let json: serde_json::Value =
            serde_json::from_str(&self.inner.to_string(false).map_err(|e| tok_err(None, e))?)
                .map_err(|e| tok_err(None, e))?;
        let model = &json["model"];
        if model["type"] != "BPE" || model["byte_fallback"] == true {
            return Err(tok_err(
                None,
                format!(
                    "only byte-level BPE tokenizers can be written to GGUF yet (this one is {} {})",
                    model["type"],
                    if model["byte_fallback"] == true {
                        "with byte fallback, SentencePiece style"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let vocab = self.inner.get_vocab(true);
        if let Some((t, &id)) = vocab.iter().find(|(_, &id)| id as usize >= vocab_size) {
            return Err(tok_err(
                None,
                format!("token {t:?} has id {id}, past the model's {vocab_size} embeddings"),
            ));
        }
        let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
        let mut types = vec![5i32; vocab_size];
        for (t, &id) in &vocab {
            tokens[id as usize] = t.clone();
            types[id as usize] = 1;
        }
        for (id, t) in self.inner.get_added_tokens_decoder() {
            types[id as usize] = if t.special { 3 } else { 4 };
        }
        let merges = model["merges"]
            .as_array()
            .ok_or_else(|| tok_err(None, "the BPE model lists no merges"))?
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Array(p) => match (p.first(), p.get(1), p.len()) {
                    (Some(serde_json::Value::String(a)), Some(serde_json::Value::String(b)), 2) => {
                        Ok(format!("{a} {b}"))
                    }
                    _ => Err(tok_err(None, format!("merge {m} is not a pair of strings"))),
                },
                _ => Err(tok_err(
                    None,
                    format!("merge {m} is not a string or a pair"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let pre = PRE_TOKENIZERS
            .iter()
            .find(|name| {
                Tokenizer::from_bpe_parts(&["a".into()], &[], &[1], name, &Default::default())
                    .ok()
                    .and_then(|t| serde_json::to_value(t.inner.get_pre_tokenizer()).ok())
                    .is_some_and(|p| p == json["pre_tokenizer"])
            })
            .ok_or_else(|| {
                tok_err(
                    None,
                    format!(
                        "the pre-tokenizer {} is none llama.cpp knows ({})",
                        json["pre_tokenizer"],
                        PRE_TOKENIZERS.join(", ")
                    ),
                )
            })?;
        let strings =
            |v: Vec<String>| GgufValue::Array(v.into_iter().map(GgufValue::String).collect());
        let mut m = vec![
            (
                "tokenizer.ggml.model".to_string(),
                GgufValue::String("gpt2".into()),
            ),
            (
                "tokenizer.ggml.pre".to_string(),
                GgufValue::String(pre.to_string()),
            ),
            ("tokenizer.ggml.tokens".to_string(), strings(tokens)),
            (
                "tokenizer.ggml.token_type".to_string(),
                GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
            ),
            ("tokenizer.ggml.merges".to_string(), strings(merges)),
        ];
        for (key, id) in [
            ("bos_token_id", special.bos),
            ("eos_token_id", special.eos),
            ("padding_token_id", special.pad),
            ("unknown_token_id", special.unk),
        ] {
            if let Some(id) = id {
                m.push((format!("tokenizer.ggml.{key}"), GgufValue::U32(id)));
            }
        }
        m.push((
            "tokenizer.ggml.add_bos_token".into(),
            GgufValue::Bool(special.add_bos),
        ));
        m.push((
            "tokenizer.ggml.add_eos_token".into(),
            GgufValue::Bool(false),
        ));
        Ok(m)
    }
}
