//! Princeton WordNet's database format (`data.noun`, `data.verb`, `data.adj`, `data.adv`; the
//! Debian package `wordnet-base`, asset `wordnet`): one synset per line,
//!
//! `offset lex_filenum ss_type w_cnt(hex) word lex_id(hex) ... p_cnt {symbol offset pos st} ... | gloss`
//!
//! (wndb(5WN)). License lines start with two spaces.

use crate::semnet::graph::{Concept, Graph};
use crate::semnet::relation::Relations;
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

/// The relation a pointer symbol names (wninput(5WN)); `pos` is the pointing synset's, since
/// `\\` means pertainym for adjectives and "derived from" for adverbs.
pub fn relation_name(symbol: &str, pos: char) -> Option<&'static str> {
    Some(match symbol {
        "!" => "antonym",
        "@" => "hypernym",
        "@i" => "instance_hypernym",
        "~" => "hyponym",
        "~i" => "instance_hyponym",
        "#m" => "member_holonym",
        "#s" => "substance_holonym",
        "#p" => "part_holonym",
        "%m" => "member_meronym",
        "%s" => "substance_meronym",
        "%p" => "part_meronym",
        "=" => "attribute",
        "+" => "derivationally_related_form",
        ";c" => "domain_topic",
        "-c" => "member_of_domain_topic",
        ";r" => "domain_region",
        "-r" => "member_of_domain_region",
        ";u" => "domain_usage",
        "-u" => "member_of_domain_usage",
        "*" => "entailment",
        ">" => "cause",
        "^" => "also_see",
        "$" => "verb_group",
        "&" => "similar_to",
        "<" => "participle",
        "\\" if pos == 'r' => "derived_from",
        "\\" => "pertainym",
        _ => return None,
    })
}

/// The data file a part of speech lives in (satellites share the adjectives').
fn file_pos(pos: char) -> char {
    if pos == 's' {
        'a'
    } else {
        pos
    }
}

const FILES: [(char, &str); 4] = [('n', "noun"), ('v', "verb"), ('a', "adj"), ('r', "adv")];

/// An index file (`index.noun`, ...): lemma -> synset offsets in sense order.
pub fn read_index(path: &Path) -> Result<HashMap<String, Vec<u32>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("  ") || line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| Error::format(path, format!("line {}: {what}", i + 1));
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let synset_cnt: usize = f
            .get(2)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad synset_cnt"))?;
        if f.len() < synset_cnt + 1 {
            return Err(bad("fewer offsets than synset_cnt"));
        }
        let offsets = f[f.len() - synset_cnt..]
            .iter()
            .map(|s| s.parse::<u32>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| bad("bad synset offset"))?;
        out.insert(f[0].to_string(), offsets);
    }
    Ok(out)
}

/// Reads WordNet from a directory of database files (`data.*`, `index.*`) into a network:
/// one concept per synset named as NLTK names it (`dog.n.01`: first lemma lower-cased, part
/// of speech, its sense number in the index), lemmas as labels, the gloss, and every pointer
/// as an edge (word-to-word pointers become edges between their synsets).
pub fn import(dir: &Path) -> Result<Graph> {
    let mut data: Vec<(char, HashMap<u32, Synset>)> = Vec::new();
    let mut index: HashMap<char, HashMap<String, Vec<u32>>> = HashMap::new();
    for (pos, name) in FILES {
        data.push((pos, read_data(&dir.join(format!("data.{name}")))?));
        index.insert(pos, read_index(&dir.join(format!("index.{name}")))?);
    }
    let mut g = Graph::new(Relations::builtin());
    let source = g.source_id("wordnet");
    // Concepts in file order (by offset), nouns first, so ids are stable.
    let mut at: HashMap<(char, u32), u32> = HashMap::new();
    for (fpos, synsets) in &data {
        let mut offsets: Vec<u32> = synsets.keys().copied().collect();
        offsets.sort_unstable();
        let idx = &index[fpos];
        for off in offsets {
            let s = &synsets[&off];
            let lemma = s
                .lemmas
                .first()
                .map(|l| l.to_lowercase())
                .unwrap_or_default();
            let sense = idx
                .get(&lemma)
                .and_then(|o| o.iter().position(|&x| x == off))
                .ok_or_else(|| {
                    Error::format(
                        dir.join(format!(
                            "index.{}",
                            FILES.iter().find(|f| f.0 == *fpos).unwrap().1
                        )),
                        format!("{lemma:?} does not list synset {off:08} of data file pos {fpos}"),
                    )
                })?;
            let i = g.add_concept(Concept {
                id: format!("{lemma}.{}.{:02}", s.pos, sense + 1),
                labels: s.lemmas.clone(),
                gloss: (!s.gloss.is_empty()).then(|| s.gloss.clone()),
                pos: Some(s.pos),
            });
            at.insert((*fpos, off), i);
        }
    }
    let mut unknown = Vec::new();
    for (fpos, synsets) in &data {
        let mut offsets: Vec<u32> = synsets.keys().copied().collect();
        offsets.sort_unstable();
        for off in offsets {
            let s = &synsets[&off];
            let head = at[&(*fpos, off)];
            for p in &s.pointers {
                let Some(name) = relation_name(&p.symbol, s.pos) else {
                    if !unknown.contains(&p.symbol) {
                        unknown.push(p.symbol.clone());
                    }
                    continue;
                };
                let tail = *at.get(&(file_pos(p.pos), p.offset)).ok_or_else(|| {
                    Error::format(
                        dir,
                        format!(
                            "synset {off:08}-{} points to missing {:08}-{}",
                            s.pos, p.offset, p.pos
                        ),
                    )
                })?;
                let rel = g.relations.require(name)?;
                g.add_edge(head, rel, tail, 1.0, source);
            }
        }
    }
    if !unknown.is_empty() {
        return Err(Error::format(
            dir,
            format!("unknown pointer symbols {unknown:?}"),
        ));
    }
    Ok(g)
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
