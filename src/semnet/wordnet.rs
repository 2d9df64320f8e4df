//! Princeton WordNet's database format (`data.noun`, `data.verb`, `data.adj`, `data.adv`; the
//! Debian package `wordnet-base`, asset `wordnet`): one synset per line,
//!
//! `offset lex_filenum ss_type w_cnt(hex) word lex_id(hex) ... p_cnt {symbol offset pos st} ... | gloss`
//!
//! (wndb(5WN)). License lines start with two spaces.

use crate::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// A pointer from a synset to another (`@` hypernym, `@i` instance hypernym, `#p` part holonym,
/// `%p` part meronym, `!` antonym, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub symbol: String,
    pub offset: u32,
    /// `n`, `v`, `a`, `s` or `r`.
    pub pos: char,
    /// `0000` for a pointer between synsets; otherwise source and target word numbers (hex).
    pub source_target: u16,
}

/// One synset.
#[derive(Debug, Clone, PartialEq)]
pub struct Synset {
    pub offset: u32,
    pub lex_filenum: u8,
    /// `n`, `v`, `a`, `s` (satellite adjective) or `r`.
    pub pos: char,
    /// Words as written in the file (underscores for spaces; an adjective's `(a)`-style marker
    /// removed).
    pub lemmas: Vec<String>,
    pub pointers: Vec<Pointer>,
    /// The whole gloss: definition, then examples in quotes.
    pub gloss: String,
}

impl Synset {
    /// The definition: the gloss before its first quoted example.
    pub fn definition(&self) -> &str {
        let g = self.gloss.as_str();
        let end = g.find("; \"").or_else(|| g.find(" \"")).unwrap_or(g.len());
        g[..end].trim().trim_end_matches(';').trim()
    }

    /// Targets of the pointers with `symbol`.
    pub fn targets<'a>(&'a self, symbol: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.pointers
            .iter()
            .filter(move |p| p.symbol == symbol)
            .map(|p| p.offset)
    }
}

/// Parses one data-file line (`None` for license lines).
pub fn parse_line(line: &str) -> std::result::Result<Option<Synset>, String> {
    if line.starts_with("  ") || line.trim().is_empty() {
        return Ok(None);
    }
    let (head, gloss) = line.split_once(" | ").unwrap_or((line, ""));
    let mut f = head.split_ascii_whitespace();
    let mut next = |what: &str| f.next().ok_or_else(|| format!("missing {what}"));
    let offset: u32 = next("offset")?
        .parse()
        .map_err(|_| "bad offset".to_string())?;
    let lex_filenum: u8 = next("lex_filenum")?
        .parse()
        .map_err(|_| "bad lex_filenum".to_string())?;
    let pos = next("ss_type")?
        .chars()
        .next()
        .ok_or_else(|| "empty ss_type".to_string())?;
    let w_cnt = usize::from_str_radix(next("w_cnt")?, 16).map_err(|_| "bad w_cnt".to_string())?;
    let mut lemmas = Vec::with_capacity(w_cnt);
    for _ in 0..w_cnt {
        let w = next("word")?;
        next("lex_id")?;
        // Adjective syntactic markers: word(a), word(p), word(ip).
        let w = match w.find('(') {
            Some(i) if w.ends_with(')') => &w[..i],
            _ => w,
        };
        lemmas.push(w.to_string());
    }
    let p_cnt: usize = next("p_cnt")?
        .parse()
        .map_err(|_| "bad p_cnt".to_string())?;
    let mut pointers = Vec::with_capacity(p_cnt);
    for _ in 0..p_cnt {
        let symbol = next("pointer symbol")?.to_string();
        let offset = next("pointer offset")?
            .parse()
            .map_err(|_| "bad pointer offset".to_string())?;
        let pos = next("pointer pos")?.chars().next().unwrap_or('n');
        let st = u16::from_str_radix(next("pointer source/target")?, 16)
            .map_err(|_| "bad pointer source/target".to_string())?;
        pointers.push(Pointer {
            symbol,
            offset,
            pos,
            source_target: st,
        });
    }
    Ok(Some(Synset {
        offset,
        lex_filenum,
        pos,
        lemmas,
        pointers,
        gloss: gloss.trim().to_string(),
    }))
}

/// The synsets of one data file (`data.noun`, ...), by offset.
pub fn read_data(path: &Path) -> Result<HashMap<u32, Synset>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        match parse_line(line) {
            Ok(Some(s)) => {
                out.insert(s.offset, s);
            }
            Ok(None) => {}
            Err(e) => return Err(Error::format(path, format!("line {}: {e}", i + 1))),
        }
    }
    if out.is_empty() {
        return Err(Error::format(path, "no synsets (not a WordNet data file?)"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_noun_synset() {
        let s = parse_line("02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 003 @ 02083346 n 0000 #m 02083863 n 0000 %p 02158846 n 0000 | a member of the genus Canis; \"the dog barked all night\"  ")
            .unwrap()
            .unwrap();
        assert_eq!(s.offset, 2084071);
        assert_eq!(s.lemmas, ["dog", "domestic_dog", "Canis_familiaris"]);
        assert_eq!(s.targets("@").collect::<Vec<_>>(), [2083346]);
        assert_eq!(s.pointers[1].symbol, "#m");
        assert_eq!(s.definition(), "a member of the genus Canis");
        let a = parse_line("00001740 00 a 01 able(a) 0 000 | (usually followed by `to') having the necessary means")
            .unwrap()
            .unwrap();
        assert_eq!(a.lemmas, ["able"]);
        assert!(
            parse_line("  1 This software and database is being provided")
                .unwrap()
                .is_none()
        );
        assert!(parse_line("00001740 03 n zz entity").is_err());
    }
}
