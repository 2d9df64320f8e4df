//! Facts for a prompt: find the concepts a question names (longest label match over its
//! words), then gather what the network says about them (their own relations both ways and
//! what they inherit), verbalized, to prepend to the question.

use crate::semnet::graph::Graph;
use crate::semnet::verbalize::sentence;
use serde::Serialize;

/// A fact about a mentioned concept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact {
    pub concept: String,
    pub head: String,
    pub relation: String,
    pub tail: String,
    pub text: String,
    /// "stated" (an edge of the concept) or "inherited from X".
    pub how: String,
}

const MAX_WORDS: usize = 4;

/// The sense number of an id like `dog.n.01` (0 when it has none), to prefer first senses.
fn sense_rank(id: &str) -> u32 {
    id.rsplit('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Concepts named in `text`: longest label matches, left to right, not overlapping; for an
/// ambiguous word the first sense.
pub fn mentions(g: &Graph, text: &str) -> Vec<u32> {
    let words: Vec<String> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let mut hit = None;
        for n in (1..=MAX_WORDS.min(words.len() - i)).rev() {
            let phrase = words[i..i + n].join(" ");
            let mut cands: Vec<u32> = g.by_label(&phrase).to_vec();
            if cands.is_empty() && phrase.ends_with('s') && phrase.len() > 3 {
                cands = g.by_label(&phrase[..phrase.len() - 1]).to_vec();
            }
            // One-letter words and function words ("a", "is") name WordNet synsets too.
            if cands.is_empty()
                || (n == 1 && (phrase.len() < 3 || FUNCTION.contains(&phrase.as_str())))
            {
                continue;
            }
            cands.sort_by_key(|&c| (sense_rank(&g.concept(c).id), c));
            hit = Some((cands[0], n));
            break;
        }
        match hit {
            Some((c, n)) => {
                if !out.contains(&c) {
                    out.push(c);
                }
                i += n;
            }
            None => i += 1,
        }
    }
    out
}

const FUNCTION: &[&str] = &[
    "the", "and", "are", "was", "were", "what", "which", "who", "how", "why", "does", "did", "can",
    "could", "has", "have", "not", "for", "with", "that", "this", "from", "into", "its", "your",
    "you", "our", "any", "all", "some", "one", "use", "used",
];

/// Up to `per_concept` facts about each concept named in `question`: taxonomic relations
/// first, then the rest by weight, then inherited properties.
pub fn facts(g: &Graph, question: &str, per_concept: usize) -> Vec<Fact> {
    let mut out = Vec::new();
    for c in mentions(g, question) {
        let mut edges = g.all_edges(c);
        edges.sort_by(|a, b| {
            let ta = g.relations.get(a.0.rel).taxonomic;
            let tb = g.relations.get(b.0.rel).taxonomic;
            tb.cmp(&ta).then(b.0.weight.total_cmp(&a.0.weight))
        });
        let mut mine = Vec::new();
        for (e, other, incoming) in edges {
            let (h, t) = if incoming { (other, c) } else { (c, other) };
            mine.push(Fact {
                concept: g.concept(c).id.clone(),
                head: g.concept(h).id.clone(),
                relation: g.relations.name(e.rel).to_string(),
                tail: g.concept(t).id.clone(),
                text: sentence(g, h, e.rel, t),
                how: "stated".into(),
            });
        }
        for i in g.inherited(c).into_iter().filter(|i| i.distance > 0) {
            mine.push(Fact {
                concept: g.concept(c).id.clone(),
                head: g.concept(c).id.clone(),
                relation: g.relations.name(i.rel).to_string(),
                tail: g.concept(i.value).id.clone(),
                text: sentence(g, c, i.rel, i.value),
                how: format!("inherited from {}", g.concept(i.from).id),
            });
        }
        mine.truncate(per_concept);
        out.extend(mine);
    }
    out
}

/// The prompt: the facts as a list, then the question.
pub fn prompt(facts: &[Fact], question: &str) -> String {
    if facts.is_empty() {
        return question.to_string();
    }
    let mut s = String::from("Facts:\n");
    for f in facts {
        s.push_str(&format!("- {}\n", f.text));
    }
    s.push_str(&format!("\nQuestion: {question}"));
    s
}
