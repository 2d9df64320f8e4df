//! Triples from text with lexico-syntactic patterns (Hearst 1992 and kin): "X is a type of
//! Y", "X is a Y", "Y such as X1, X2 and X3", "X and other Y", "Y, including X", "X is part
//! of Y", "Y consists of X", "X has Y". Noun phrases are up to three words between function
//! words and punctuation, determiners dropped, lower-cased; plurals are left as written.

use serde::Serialize;

/// A triple found in text, with the sentence it came from and the pattern that found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    pub head: String,
    pub relation: &'static str,
    pub tail: String,
    pub pattern: &'static str,
    pub sentence: String,
}

/// Words that end a noun phrase.
#[rustfmt::skip]
const STOP: &[&str] = &[
    "is", "are", "was", "were", "be", "been", "a", "an", "the", "of", "and", "or", "such", "as",
    "other", "including", "has", "have", "had", "part", "kind", "type", "sort", "form", "which",
    "that", "in", "on", "with", "to", "for", "by", "its", "their", "this", "these", "those",
    "it", "they", "can", "also", "not", "no", "from", "at", "into", "consists", "consist",
    "contains", "contain", "made", "up", "like", "especially", "but", "than", "then", "there",
    "when", "where", "who", "whose", "while", "because", "often", "usually", "called",
    // Pronouns and frequent transitive verbs: without a tagger they would join the phrase
    // ("he plays instruments such as ...").
    "he", "she", "we", "i", "you", "him", "her", "them", "his", "our", "my", "your", "play",
    "plays", "use", "uses", "include", "includes", "eat", "eats", "make", "makes", "see", "sees",
    "study", "studies", "build", "builds", "grow", "grows", "need", "needs", "produce",
    "produces", "love", "loves", "find", "finds", "know", "knows", "sell", "sells", "buy",
    "buys", "want", "wants", "visit", "visits", "prefer", "prefers", "hunt", "hunts", "keep",
    "keeps", "collect", "collects", "enjoy", "enjoys", "grew", "saw", "bought", "built",
];
/// Determiners dropped at the start of a noun phrase.
#[rustfmt::skip]
const DET: &[&str] = &[
    "a", "an", "the", "some", "many", "most", "all", "every", "each", "any", "several", "various",
];
const MAX_NP: usize = 3;

fn is_word(t: &str) -> bool {
    t.chars().next().is_some_and(|c| c.is_alphanumeric())
}

fn stop(t: &str) -> bool {
    STOP.contains(&t) || !is_word(t)
}

/// Splits text into sentences, and a sentence into lower-case word and punctuation tokens.
fn sentences(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        cur.push(c);
        let end = matches!(c, '.' | '!' | '?' | ';')
            && chars.get(i + 1).is_none_or(|n| n.is_whitespace());
        if end || (c == '\n' && chars.get(i + 1) == Some(&'\n')) {
            push_sentence(&mut out, &cur);
            cur.clear();
        }
    }
    push_sentence(&mut out, &cur);
    out
}

fn push_sentence(out: &mut Vec<(String, Vec<String>)>, s: &str) {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.is_empty() {
        return;
    }
    let mut toks = Vec::new();
    let mut w = String::new();
    for c in s.chars() {
        if c.is_alphanumeric() || (c == '-' || c == '\'') && !w.is_empty() {
            w.extend(c.to_lowercase());
        } else {
            if !w.is_empty() {
                toks.push(std::mem::take(&mut w));
            }
            if !c.is_whitespace() {
                toks.push(c.to_string());
            }
        }
    }
    if !w.is_empty() {
        toks.push(w);
    }
    out.push((s, toks));
}

/// The noun phrase ending just before `end` (exclusive).
fn np_before(t: &[String], end: usize) -> Option<String> {
    let mut start = end;
    while start > 0 && end - start < MAX_NP && !stop(&t[start - 1]) {
        start -= 1;
    }
    while start < end && DET.contains(&t[start].as_str()) {
        start += 1;
    }
    (start < end).then(|| t[start..end].join(" "))
}

/// The noun phrase starting at `at` (determiners skipped), and where it ends.
fn np_after(t: &[String], mut at: usize) -> Option<(String, usize)> {
    while at < t.len() && DET.contains(&t[at].as_str()) {
        at += 1;
    }
    let start = at;
    while at < t.len() && at - start < MAX_NP && !stop(&t[at]) {
        at += 1;
    }
    (at > start).then(|| (t[start..at].join(" "), at))
}

/// "Other Y" names a plural: the phrase ends at its first plural word ("trees shed leaves"
/// -> "trees", "woodwind instruments" stays).
fn plural_head(np: String) -> String {
    let words: Vec<&str> = np.split(' ').collect();
    match words.iter().position(|w| {
        w.len() > 3 && w.ends_with('s') && !["ss", "us", "is"].iter().any(|e| w.ends_with(e))
    }) {
        Some(k) => words[..=k].join(" "),
        None => np,
    }
}

/// A list of noun phrases from `at`: "x, y and z" / "x or y".
fn np_list(t: &[String], mut at: usize) -> Vec<String> {
    let mut out = Vec::new();
    while let Some((np, end)) = np_after(t, at) {
        out.push(np);
        at = end;
        match t.get(at).map(String::as_str) {
            Some(",") => {
                at += 1;
                if matches!(t.get(at).map(String::as_str), Some("and" | "or")) {
                    at += 1;
                }
            }
            Some("and" | "or") => at += 1,
            _ => break,
        }
    }
    out
}

/// Whether tokens at `at` spell `words`.
fn at_words(t: &[String], at: usize, words: &[&str]) -> bool {
    words
        .iter()
        .enumerate()
        .all(|(k, w)| t.get(at + k).is_some_and(|x| x == w))
}

/// Finds the triples the patterns match in `text`.
pub fn extract(text: &str) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    for (sentence, t) in sentences(text) {
        let mut add =
            |head: String, relation: &'static str, tail: String, pattern: &'static str| {
                if head != tail
                    && !out
                        .iter()
                        .any(|f| f.head == head && f.relation == relation && f.tail == tail)
                {
                    out.push(Found {
                        head,
                        relation,
                        tail,
                        pattern,
                        sentence: sentence.clone(),
                    });
                }
            };
        let mut i = 0;
        while i < t.len() {
            let copula = matches!(t[i].as_str(), "is" | "are");
            // X is a type/kind/sort/form of Y
            if copula {
                for kind in ["type", "kind", "sort", "form"] {
                    for det in [&["a"][..], &["an"], &[]] {
                        let mut words: Vec<&str> = det.to_vec();
                        words.push(kind);
                        words.push("of");
                        let kind_plural = format!("{kind}s");
                        let words_pl = [kind_plural.as_str(), "of"];
                        let len = if at_words(&t, i + 1, &words) {
                            Some(words.len())
                        } else if det.is_empty() && at_words(&t, i + 1, &words_pl) {
                            Some(2)
                        } else {
                            None
                        };
                        if let (Some(len), Some(x)) = (len, np_before(&t, i)) {
                            if let Some((y, _)) = np_after(&t, i + 1 + len) {
                                add(x, "is_a", y, "X is a type of Y");
                            }
                        }
                    }
                }
                // X is part of Y / X is a part of Y
                for words in [&["part", "of"][..], &["a", "part", "of"]] {
                    if at_words(&t, i + 1, words) {
                        if let (Some(x), Some((y, _))) =
                            (np_before(&t, i), np_after(&t, i + 1 + words.len()))
                        {
                            add(x, "part_of", y, "X is part of Y");
                        }
                    }
                }
                // X is a/an Y (copula): the Y must be followed by the sentence's end or a
                // comma/"that"/"which", so "X is a good idea for ..." does not count.
                if matches!(t.get(i + 1).map(String::as_str), Some("a" | "an")) {
                    let next = t.get(i + 2).map(String::as_str).unwrap_or("");
                    if !["type", "kind", "sort", "form", "part"].contains(&next) {
                        if let (Some(x), Some((y, end))) = (np_before(&t, i), np_after(&t, i + 1)) {
                            let after = t.get(end).map(String::as_str);
                            if matches!(
                                after,
                                None | Some("." | "," | ";" | "that" | "which" | "who" | "!")
                            ) {
                                add(x, "is_a", y, "X is a Y");
                            }
                        }
                    }
                }
            }
            // Y such as X1, X2 and X3 / Y, including X1 and X2 / Y, especially X
            let hearst = if at_words(&t, i, &["such", "as"]) {
                Some((2, "Y such as X"))
            } else if at_words(&t, i, &["including"]) {
                Some((1, "Y, including X"))
            } else if at_words(&t, i, &["especially"]) {
                Some((1, "Y, especially X"))
            } else {
                None
            };
            if let Some((len, pattern)) = hearst {
                let before = if i > 0 && t[i - 1] == "," { i - 1 } else { i };
                if let Some(y) = np_before(&t, before) {
                    for x in np_list(&t, i + len) {
                        add(x, "is_a", y.clone(), pattern);
                    }
                }
            }
            // X1, X2 and/or other Y
            if matches!(t[i].as_str(), "and" | "or") && t.get(i + 1).is_some_and(|w| w == "other") {
                if let Some((y, _)) = np_after(&t, i + 2).map(|(y, e)| (plural_head(y), e)) {
                    // Walk the list back: NP (, NP)* before "(,) and other".
                    let mut end = if i > 0 && t[i - 1] == "," { i - 1 } else { i };
                    while let Some(x) = np_before(&t, end) {
                        let start = end - x.split(' ').count();
                        add(x, "is_a", y.clone(), "X and other Y");
                        if start > 0 && t[start - 1] == "," {
                            end = start - 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            // Y consists of / is made up of / contains X1, X2 and X3
            let whole =
                if at_words(&t, i, &["consists", "of"]) || at_words(&t, i, &["consist", "of"]) {
                    Some(2)
                } else if copula && at_words(&t, i + 1, &["made", "up", "of"]) {
                    Some(4)
                } else if matches!(t[i].as_str(), "contains" | "contain") {
                    Some(1)
                } else {
                    None
                };
            if let Some(len) = whole {
                if let Some(y) = np_before(&t, i) {
                    for x in np_list(&t, i + len) {
                        add(x, "part_of", y.clone(), "Y consists of X");
                    }
                }
            }
            // X has/have Y
            if matches!(t[i].as_str(), "has" | "have") {
                if let Some(x) = np_before(&t, i) {
                    for y in np_list(&t, i + 1) {
                        add(x.clone(), "has_a", y, "X has Y");
                    }
                }
            }
            i += 1;
        }
    }
    out
}

/// Precision and recall of `found` against gold (head, relation, tail) triples.
pub fn score(found: &[Found], gold: &[(String, String, String)]) -> (f64, f64) {
    let hit = |f: &Found| {
        gold.iter()
            .any(|(h, r, t)| *h == f.head && r == f.relation && *t == f.tail)
    };
    let tp = found.iter().filter(|f| hit(f)).count();
    let found_gold = gold
        .iter()
        .filter(|(h, r, t)| {
            found
                .iter()
                .any(|f| f.head == *h && f.relation == r && f.tail == *t)
        })
        .count();
    let p = if found.is_empty() {
        0.0
    } else {
        tp as f64 / found.len() as f64
    };
    let r = if gold.is_empty() {
        0.0
    } else {
        found_gold as f64 / gold.len() as f64
    };
    (p, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triples(text: &str) -> Vec<(String, &'static str, String)> {
        extract(text)
            .into_iter()
            .map(|f| (f.head, f.relation, f.tail))
            .collect()
    }

    #[test]
    fn each_pattern_finds_its_triple() {
        let t = |h: &str, r: &'static str, x: &str| (h.to_string(), r, x.to_string());
        assert_eq!(
            triples("A lemur is a type of primate."),
            [t("lemur", "is_a", "primate")]
        );
        assert_eq!(
            triples("The oboe is a woodwind instrument."),
            [t("oboe", "is_a", "woodwind instrument")]
        );
        assert_eq!(
            triples("He plays instruments such as the oboe, the flute and the clarinet."),
            [
                t("oboe", "is_a", "instruments"),
                t("flute", "is_a", "instruments"),
                t("clarinet", "is_a", "instruments")
            ]
        );
        assert_eq!(
            triples("Oaks, maples and other trees shed leaves."),
            [t("maples", "is_a", "trees"), t("oaks", "is_a", "trees")]
        );
        assert_eq!(
            triples("The nucleus is part of the cell."),
            [t("nucleus", "part_of", "cell")]
        );
        assert_eq!(
            triples("A bicycle consists of a frame, two wheels and a chain."),
            [
                t("frame", "part_of", "bicycle"),
                t("two wheels", "part_of", "bicycle"),
                t("chain", "part_of", "bicycle")
            ]
        );
        assert_eq!(
            triples("A spider has eight legs."),
            [t("spider", "has_a", "eight legs")]
        );
        assert!(triples("It is a good idea to rest.").is_empty());
    }
}
