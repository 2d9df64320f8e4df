//! Labelled texts for classification: JSON lines `{"text": ..., "label": ...}` or fastText's
//! `__label__X text` lines, and stratified k-fold splits for small data sets.

use crate::rng::Rng;
use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// One example.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub text: String,
    pub label: String,
}

const FASTTEXT_PREFIX: &str = "__label__";

/// A JSON label as a class name: strings as they are, numbers and booleans as written.
fn label_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads labelled texts from `path` (in `encoding`, see [`crate::data::corpus::read_text_in`]):
/// JSON lines (a line starting with `{`; fields `text` and `label`) or fastText lines (leading
/// `__label__NAME` then the text). Empty lines are skipped; anything else malformed is an
/// error naming the file and line.
pub fn read_labelled(path: &Path, encoding: &str) -> Result<Vec<Labelled>> {
    let text = crate::data::corpus::read_text_in(path, encoding)?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = |msg: String| Error::format(path, format!("line {}: {msg}", i + 1));
        let ex = if line.starts_with('{') {
            let v: Value =
                serde_json::from_str(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
            let text = v
                .get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| at("no \"text\" string".into()))?;
            let label = v
                .get("label")
                .and_then(label_of)
                .ok_or_else(|| at("no \"label\" (a string, number or boolean)".into()))?;
            Labelled {
                text: text.to_string(),
                label,
            }
        } else {
            let mut labels = vec![];
            let mut rest = line;
            while let Some(after) = rest.strip_prefix(FASTTEXT_PREFIX) {
                let (label, tail) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
                labels.push(label);
                rest = tail.trim_start();
            }
            match labels.as_slice() {
                [] => {
                    return Err(at(format!(
                        "expected {FASTTEXT_PREFIX}NAME then the text, or a JSON object"
                    )))
                }
                [label] => Labelled {
                    text: rest.to_string(),
                    label: label.to_string(),
                },
                many => {
                    return Err(at(format!(
                        "{} labels; each text needs exactly one",
                        many.len()
                    )))
                }
            }
        };
        if ex.label.is_empty() {
            return Err(at("the label is empty".into()));
        }
        if ex.text.trim().is_empty() {
            return Err(at("the text is empty".into()));
        }
        out.push(ex);
    }
    if out.is_empty() {
        return Err(Error::format(path, "no labelled texts in this file"));
    }
    Ok(out)
}

/// The class names of `examples`, sorted (so the numbering does not depend on the order).
pub fn label_names(examples: &[Labelled]) -> Vec<String> {
    let set: std::collections::BTreeSet<&str> = examples.iter().map(|e| e.label.as_str()).collect();
    set.into_iter().map(str::to_string).collect()
}

/// The fold (`0..k`) of each example for stratified k-fold cross-validation: each class's
/// examples are shuffled (seeded) and dealt to the folds in turn, continuing from class to
/// class, so every fold gets each class in proportion and the folds differ in size by at most
/// one.
pub fn stratified_folds(labels: &[usize], k: usize, seed: u64) -> Result<Vec<usize>> {
    if k < 2 {
        return Err(Error::Config(format!("k-fold needs k >= 2, got {k}")));
    }
    if labels.len() < k {
        return Err(Error::Data(format!(
            "{} examples cannot fill {k} folds",
            labels.len()
        )));
    }
    let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut fold = vec![0; labels.len()];
    let mut next = 0;
    for c in 0..classes {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        Rng::new(seed).fork(c as u64).shuffle(&mut members);
        for i in members {
            fold[i] = next % k;
            next += 1;
        }
    }
    Ok(fold)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(content: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.txt");
        std::fs::write(&p, content).unwrap();
        (dir, p)
    }

    #[test]
    fn reads_fasttext_and_jsonl() {
        let (_d, p) = write(b"__label__pos a fine film .\n\n__label__neg  dull\n");
        let ex = read_labelled(&p, "utf-8").unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].label, "pos");
        assert_eq!(ex[0].text, "a fine film .");
        assert_eq!(ex[1].text, "dull");
        let (_d, p) =
            write(b"{\"text\": \"good\", \"label\": 1}\n{\"text\": \"bad\", \"label\": \"neg\"}\n");
        let ex = read_labelled(&p, "utf-8").unwrap();
        assert_eq!((ex[0].label.as_str(), ex[1].label.as_str()), ("1", "neg"));
        assert_eq!(label_names(&ex), vec!["1", "neg"]);
    }

    #[test]
    fn bad_files_name_file_and_line() {
        for (content, needle) in [
            (&b"just text\n"[..], "line 1"),
            (b"__label__a text\n__label__a __label__b two\n", "2 labels"),
            (b"{\"label\": 1}\n", "\"text\""),
            (b"{\"text\": \"x\"}\n", "\"label\""),
            (b"{\"text\": \"x\", \n", "invalid JSON"),
            (b"__label__a \n", "text is empty"),
            (b"\n\n", "no labelled texts"),
            (b"__label__a caf\xe9\n", "UTF-8"),
        ] {
            let (_d, p) = write(content);
            let e = read_labelled(&p, "utf-8").unwrap_err().to_string();
            assert!(e.contains("data.txt") && e.contains(needle), "{e}");
        }
    }

    #[test]
    fn folds_are_stratified_balanced_and_seeded() {
        let labels: Vec<usize> = (0..203).map(|i| usize::from(i % 3 == 0)).collect();
        let f = stratified_folds(&labels, 5, 7).unwrap();
        assert_eq!(f, stratified_folds(&labels, 5, 7).unwrap());
        assert_ne!(f, stratified_folds(&labels, 5, 8).unwrap());
        let ones = labels.iter().filter(|&&l| l == 1).count();
        for k in 0..5 {
            let size = f.iter().filter(|&&x| x == k).count();
            assert!((40..=41).contains(&size), "fold {k}: {size}");
            let pos = (0..labels.len())
                .filter(|&i| f[i] == k && labels[i] == 1)
                .count();
            let expected = ones as f64 / 5.0;
            assert!((pos as f64 - expected).abs() <= 1.0, "fold {k}: {pos}");
        }
        assert!(stratified_folds(&labels, 1, 0).is_err());
        assert!(stratified_folds(&labels[..3], 5, 0).is_err());
    }
}
