//! Pronunciation lexicons for grapheme-to-phoneme conversion: the CMU Pronouncing Dictionary
//! format (`word  PH1 PH2 ...`, alternates as `word(2)`, `#` comments), and the deterministic
//! split by word that keeps all pronunciations of a word in one part.

use crate::rng::Rng;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// One word and all its pronunciations (phoneme sequences, ARPAbet with stress digits).
#[derive(Debug, Clone, PartialEq)]
pub struct LexEntry {
    pub word: String,
    pub prons: Vec<Vec<String>>,
}

/// A pronunciation dictionary, one entry per word, in the file's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Lexicon {
    pub entries: Vec<LexEntry>,
}

/// An ARPAbet phoneme without its stress digit (`AH0` -> `AH`).
pub fn unstressed(phoneme: &str) -> &str {
    phoneme.trim_end_matches(|c: char| c.is_ascii_digit())
}

/// Which part of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Valid,
    Test,
}

impl std::str::FromStr for Part {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Part::Train),
            "valid" | "validation" | "dev" => Ok(Part::Valid),
            "test" => Ok(Part::Test),
            other => Err(Error::Config(format!(
                "split {other:?}: expected train, valid or test"
            ))),
        }
    }
}

impl Lexicon {
    /// Reads a CMUdict-format file (`cmudict.dict`); a directory is searched for
    /// `cmudict.dict`. Errors name the file and line.
    pub fn read_cmudict(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("cmudict.dict")
        } else {
            path.to_path_buf()
        };
        let text = crate::data::read_text(&file)?;
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        let mut entries: Vec<LexEntry> = vec![];
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let head = parts.next().expect("a non-empty line has a first field");
            let phones: Vec<String> = parts.map(str::to_string).collect();
            if phones.is_empty() {
                return Err(Error::format(
                    &file,
                    format!("line {}: {head:?} has no pronunciation", n + 1),
                ));
            }
            // `word(2)` is the second pronunciation of `word`.
            let word = match head.find('(') {
                Some(i) if head.ends_with(')') => &head[..i],
                _ => head,
            };
            match index.get(word) {
                Some(&i) => entries[i].prons.push(phones),
                None => {
                    index.insert(word.to_string(), entries.len());
                    entries.push(LexEntry {
                        word: word.to_string(),
                        prons: vec![phones],
                    });
                }
            }
        }
        if entries.is_empty() {
            return Err(Error::format(&file, "no entries"));
        }
        Ok(Lexicon { entries })
    }

    /// The same words with ARPAbet stress digits removed (`AH0`, `AH1` -> `AH`), and the
    /// pronunciations that become identical merged: the setting most published CMUdict G2P
    /// results use. The split by word is unchanged, since it depends on the words alone.
    pub fn without_stress(mut self) -> Self {
        for e in &mut self.entries {
            let mut prons: Vec<Vec<String>> = Vec::with_capacity(e.prons.len());
            for p in &e.prons {
                let p: Vec<String> = p.iter().map(|ph| unstressed(ph).to_string()).collect();
                if !prons.contains(&p) {
                    prons.push(p);
                }
            }
            e.prons = prons;
        }
        self
    }

    /// The same words with every pronunciation reversed (last phoneme first), for models that
    /// write right to left. The split by word is unchanged.
    pub fn reversed(mut self) -> Self {
        for e in &mut self.entries {
            for p in &mut e.prons {
                p.reverse();
            }
        }
        self
    }

    /// The entries of `part` of a split by word: the words are shuffled with `seed` (from
    /// their sorted order, so the split does not depend on the file's order), then the first
    /// `fractions[0]` go to training, the next `fractions[1]` to validation, the rest to test.
    pub fn split(&self, seed: u64, fractions: [f64; 2], part: Part) -> Vec<&LexEntry> {
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        order.sort_by(|&a, &b| self.entries[a].word.cmp(&self.entries[b].word));
        Rng::new(seed).shuffle(&mut order);
        let n = order.len();
        let n_train = (n as f64 * fractions[0]).round() as usize;
        let n_valid = (n as f64 * fractions[1]).round() as usize;
        let range = match part {
            Part::Train => 0..n_train,
            Part::Valid => n_train..(n_train + n_valid).min(n),
            Part::Test => (n_train + n_valid).min(n)..n,
        };
        order[range].iter().map(|&i| &self.entries[i]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_stress_strips_digits_and_merges_equal_pronunciations() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cmudict.dict");
        // `record` as noun and verb differ only in stress; `a` differs in its vowel.
        let text = "record R EH1 K ER0 D\nrecord(2) R IH0 K AO1 R D\nrecord(3) R EH0 K ER0 D\na AH0\na(2) EY1\n";
        std::fs::write(&p, text).unwrap();
        let lex = Lexicon::read_cmudict(&p).unwrap();
        let split = |l: &Lexicon| -> Vec<String> {
            l.split(3, [0.5, 0.0], Part::Test)
                .iter()
                .map(|e| e.word.clone())
                .collect()
        };
        let before = split(&lex);
        let plain = lex.without_stress();
        assert_eq!(
            plain.entries[0].prons,
            vec![
                vec!["R", "EH", "K", "ER", "D"],
                vec!["R", "IH", "K", "AO", "R", "D"]
            ]
        );
        assert_eq!(plain.entries[1].prons, vec![vec!["AH"], vec!["EY"]]);
        assert_eq!(
            split(&plain),
            before,
            "the split depends on the words alone"
        );
        let rev = plain.reversed();
        assert_eq!(
            rev.entries[0].prons,
            vec![
                vec!["D", "ER", "K", "EH", "R"],
                vec!["D", "R", "AO", "K", "IH", "R"]
            ]
        );
        assert_eq!(split(&rev), before);
    }

    #[test]
    fn reads_alternates_comments_and_splits_by_word() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cmudict.dict");
        let mut text = String::from("a AH0\na(2) EY1\naalborg AO1 L B AO0 R G # place, danish\n\n");
        for i in 0..997 {
            text.push_str(&format!(
                "w{i} W IH1 {}\n",
                if i % 2 == 0 { "N" } else { "M" }
            ));
        }
        std::fs::write(&p, &text).unwrap();
        let lex = Lexicon::read_cmudict(dir.path()).unwrap();
        assert_eq!(lex.entries.len(), 999);
        assert_eq!(lex.entries[0].prons, vec![vec!["AH0"], vec!["EY1"]]);
        assert_eq!(lex.entries[1].prons[0].len(), 6);
        let parts: Vec<Vec<&str>> = [Part::Train, Part::Valid, Part::Test]
            .iter()
            .map(|&pt| {
                lex.split(7, [0.9, 0.05], pt)
                    .iter()
                    .map(|e| e.word.as_str())
                    .collect()
            })
            .collect();
        assert_eq!(
            (parts[0].len(), parts[1].len(), parts[2].len()),
            (899, 50, 50)
        );
        let mut all: Vec<&str> = parts.concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 999, "parts overlap");
        // Reproducible, and another seed gives another split.
        let again: Vec<&str> = lex
            .split(7, [0.9, 0.05], Part::Test)
            .iter()
            .map(|e| e.word.as_str())
            .collect();
        assert_eq!(again, parts[2]);
        let other: Vec<&str> = lex
            .split(8, [0.9, 0.05], Part::Test)
            .iter()
            .map(|e| e.word.as_str())
            .collect();
        assert_ne!(other, parts[2]);
        std::fs::write(&p, "ok AH0\nbroken\n").unwrap();
        let e = Lexicon::read_cmudict(&p).unwrap_err().to_string();
        assert!(e.contains("cmudict.dict") && e.contains("line 2"), "{e}");
    }
}
