//! An instruction mixture built from real data the project fetches, FLAN-style: each task
//! family phrased several ways, whole families held out to measure zero-shot generalisation.
//!
//! Families (and sources): `sentiment` (movie-review polarity, asset `polarity`),
//! `story_ending` (Story Cloze, asset `storycloze`), `pronunciation` (syllable counts, rhymes
//! and ARPAbet transcriptions from CMUdict, asset `cmudict`), `definition` (WordNet noun glosses
//! to the word, asset `wordnet`), `taxonomy` (WordNet is-a and part-of questions).
//!
//! Written: `train.jsonl` (messages records of the training families, shuffled), `eval.jsonl`
//! (multiple-choice records: `family`, `task`, `held_out`, `messages` (the user turn),
//! `choices`, `answer` (index); never-seen examples of every family) and `manifest.json`.

use crate::data::labelled::read_labelled;
use crate::data::lexicon::Lexicon;
use crate::rng::Rng;
use crate::semnet::verbalize::article;
use crate::semnet::wordnet::{self, Synset};
use crate::text::chat::Message;
use crate::{Error, Result};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Every family, in a fixed order.
pub const FAMILIES: &[&str] = &[
    "sentiment",
    "story_ending",
    "pronunciation",
    "definition",
    "taxonomy",
];

/// Families held out by default (evaluated zero-shot, never trained).
pub const DEFAULT_HELD_OUT: &[&str] = &["sentiment", "story_ending"];

/// One example: the user's request, the choices (the first `answer`-th is right) and, for
/// training, the answer text.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub family: &'static str,
    /// Sub-task and phrasing, e.g. `rhyme/2`.
    pub task: String,
    pub prompt: String,
    pub choices: Vec<String>,
    pub answer: usize,
}

impl Item {
    fn answer_text(&self) -> &str {
        &self.choices[self.answer]
    }
}

/// Where the sources are.
#[derive(Debug, Clone)]
pub struct Sources {
    pub polarity: PathBuf,
    pub storycloze: PathBuf,
    pub cmudict: PathBuf,
    pub wordnet: PathBuf,
}

impl Sources {
    /// The project's assets (fetched when missing).
    pub fn assets() -> Result<Self> {
        Ok(Sources {
            polarity: crate::assets::ensure("polarity")?.join("pang_lee_polarity.cor"),
            storycloze: crate::assets::ensure("storycloze")?,
            cmudict: crate::assets::ensure("cmudict")?.join("cmudict.dict"),
            wordnet: crate::assets::ensure("wordnet")?,
        })
    }
}

/// Options of [`build`].
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub seed: u64,
    /// Training examples per training family (fewer when the source has fewer).
    pub train_per_family: usize,
    /// Evaluation examples per family.
    pub eval_per_family: usize,
    pub held_out: Vec<String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            seed: 1234,
            train_per_family: 2000,
            eval_per_family: 300,
            held_out: DEFAULT_HELD_OUT.iter().map(|s| s.to_string()).collect(),
        }
    }
}

fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.below(xs.len() as u64) as usize]
}

/// `n` candidate choices with the right one at a random place.
fn shuffle_in(rng: &mut Rng, right: String, mut wrong: Vec<String>) -> (Vec<String>, usize) {
    let at = rng.below(wrong.len() as u64 + 1) as usize;
    wrong.insert(at, right);
    (wrong, at)
}

fn sentiment(src: &Path, rng: &mut Rng) -> Result<Vec<Item>> {
    let phrasings = [
        "Is the sentiment of this movie review positive or negative?\n\n{}",
        "Review: {}\n\nDid the reviewer like the movie? Answer positive or negative.",
        "Classify the opinion in the following sentence as positive or negative.\n{}",
    ];
    let mut out = vec![];
    // The file is Windows-1252 (as data.encoding in recipes/polarity-minilm.toml).
    for ex in read_labelled(src, "windows-1252")? {
        let k = rng.below(3) as usize;
        let answer = match ex.label.as_str() {
            "pos" => 0,
            "neg" => 1,
            other => return Err(Error::format(src, format!("unknown label {other:?}"))),
        };
        out.push(Item {
            family: "sentiment",
            task: format!("polarity/{k}"),
            prompt: phrasings[k].replace("{}", ex.text.trim()),
            choices: vec!["positive".into(), "negative".into()],
            answer,
        });
    }
    Ok(out)
}

fn story_ending(dir: &Path, rng: &mut Rng) -> Result<Vec<Item>> {
    let mut out = vec![];
    for name in [
        "cloze_test_spring2016_val.tsv",
        "cloze_test_spring2016_test.tsv",
    ] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        for (i, line) in text.lines().enumerate().skip(1) {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 8 {
                return Err(Error::format(
                    &path,
                    format!("line {}: {} fields, not 8", i + 1, f.len()),
                ));
            }
            let story = f[1..5].join(" ");
            let endings = [f[5].to_string(), f[6].to_string()];
            let answer = match f[7].trim() {
                "1" => 0,
                "2" => 1,
                other => {
                    return Err(Error::format(
                        &path,
                        format!("line {}: AnswerRightEnding {other:?}", i + 1),
                    ))
                }
            };
            let k = rng.below(3) as usize;
            let prompt = match k {
                0 => format!(
                    "{story}\n\nWhich sentence ends this story best?\n- {}\n- {}",
                    endings[0], endings[1]
                ),
                1 => format!(
                    "Read the story and choose the more plausible ending.\n\nStory: {story}\nEnding 1: {}\nEnding 2: {}",
                    endings[0], endings[1]
                ),
                _ => format!("Continue the story with one sentence.\n\n{story}"),
            };
            out.push(Item {
                family: "story_ending",
                task: format!("cloze/{k}"),
                prompt,
                choices: endings.to_vec(),
                answer,
            });
        }
    }
    Ok(out)
}

fn syllables(pron: &[String]) -> usize {
    pron.iter()
        .filter(|p| p.ends_with(|c: char| c.is_ascii_digit()))
        .count()
}

/// The phonemes from the last stressed vowel on (the part that rhymes).
fn rhyme_key(pron: &[String]) -> Vec<String> {
    let stressed = pron
        .iter()
        .rposition(|p| p.ends_with('1') || p.ends_with('2'))
        .or_else(|| pron.iter().rposition(|p| p.ends_with('0')))
        .unwrap_or(0);
    pron[stressed..].to_vec()
}

fn pronunciation(src: &Path, rng: &mut Rng, n: usize) -> Result<Vec<Item>> {
    let lex = Lexicon::read_cmudict(src)?;
    // Plain lowercase words of 3+ letters, first pronunciation.
    let words: Vec<(&str, &Vec<String>)> = lex
        .entries
        .iter()
        .filter(|e| e.word.len() >= 3 && e.word.chars().all(|c| c.is_ascii_lowercase()))
        .filter_map(|e| e.prons.first().map(|p| (e.word.as_str(), p)))
        .collect();
    let mut by_rhyme: HashMap<Vec<String>, Vec<usize>> = HashMap::new();
    for (i, (_, p)) in words.iter().enumerate() {
        by_rhyme.entry(rhyme_key(p)).or_default().push(i);
    }
    let mut out = vec![];
    while out.len() < n {
        let (w, p) = *pick(rng, &words);
        let k = rng.below(3) as usize;
        let item = match rng.below(3) {
            0 => {
                let s = syllables(p);
                if !(1..=6).contains(&s) {
                    continue;
                }
                let prompt = match k {
                    0 => format!("How many syllables does the word \"{w}\" have?"),
                    1 => format!("Count the syllables in \"{w}\". Answer with a number."),
                    _ => format!("Word: {w}\nNumber of syllables:"),
                };
                Item {
                    family: "pronunciation",
                    task: format!("syllables/{k}"),
                    prompt,
                    choices: (1..=6).map(|i| i.to_string()).collect(),
                    answer: s - 1,
                }
            }
            1 => {
                let same = &by_rhyme[&rhyme_key(p)];
                let rhymes = rng.below(2) == 0 && same.len() > 1;
                let other = if rhymes {
                    let j = *pick(rng, same);
                    if words[j].0 == w {
                        continue;
                    }
                    words[j].0
                } else {
                    let (o, op) = *pick(rng, &words);
                    if rhyme_key(op) == rhyme_key(p) {
                        continue;
                    }
                    o
                };
                let prompt = match k {
                    0 => format!("Do \"{w}\" and \"{other}\" rhyme? Answer yes or no."),
                    1 => format!("Does the word \"{w}\" rhyme with \"{other}\"?"),
                    _ => format!("Rhyme check: {w} / {other}. Yes or no?"),
                };
                Item {
                    family: "pronunciation",
                    task: format!("rhyme/{k}"),
                    prompt,
                    choices: vec!["yes".into(), "no".into()],
                    answer: if rhymes { 0 } else { 1 },
                }
            }
            _ => {
                let right = p.join(" ");
                let wrong: Vec<String> = (0..3).map(|_| pick(rng, &words).1.join(" ")).collect();
                if wrong.contains(&right) {
                    continue;
                }
                let (choices, answer) = shuffle_in(rng, right, wrong);
                let prompt = match k {
                    0 => format!("Give the ARPAbet pronunciation of \"{w}\" (CMU dictionary style, with stress digits)."),
                    1 => format!("Transcribe the word \"{w}\" into ARPAbet phonemes."),
                    _ => format!("How is \"{w}\" pronounced? Write its phonemes in ARPAbet."),
                };
                Item {
                    family: "pronunciation",
                    task: format!("arpabet/{k}"),
                    prompt,
                    choices,
                    answer,
                }
            }
        };
        out.push(item);
    }
    Ok(out)
}

/// A synset's first lemma as a plain word, if it is one.
fn plain_word(s: &Synset) -> Option<String> {
    let w = s.lemmas.first()?;
    (w.len() >= 3 && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .then(|| w.replace('_', " "))
}

/// Transitive hypernyms (`@`, `@i`) with their distance.
fn ancestors(nouns: &HashMap<u32, Synset>, start: u32) -> HashMap<u32, usize> {
    let mut seen = HashMap::new();
    let mut frontier = vec![start];
    let mut depth = 0;
    while !frontier.is_empty() && depth < 64 {
        depth += 1;
        let mut next = vec![];
        for o in frontier {
            if let Some(s) = nouns.get(&o) {
                for t in s.targets("@").chain(s.targets("@i")) {
                    if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(t) {
                        e.insert(depth);
                        next.push(t);
                    }
                }
            }
        }
        frontier = next;
    }
    seen
}

fn wordnet_nouns(dir: &Path) -> Result<(HashMap<u32, Synset>, Vec<u32>)> {
    let nouns = wordnet::read_data(&dir.join("data.noun"))?;
    let mut offsets: Vec<u32> = nouns
        .values()
        .filter(|s| plain_word(s).is_some())
        .map(|s| s.offset)
        .collect();
    offsets.sort_unstable();
    Ok((nouns, offsets))
}

fn definition(nouns: &HashMap<u32, Synset>, plain: &[u32], rng: &mut Rng, n: usize) -> Vec<Item> {
    let mut out = vec![];
    let mut used = HashSet::new();
    let mut tries = 0;
    while out.len() < n && tries < 50 * n {
        tries += 1;
        let s = &nouns[pick(rng, plain)];
        let word = plain_word(s).expect("plain");
        let def = s.definition();
        if def.split_whitespace().count() < 3
            || def.to_lowercase().contains(&word)
            || !used.insert(s.offset)
        {
            continue;
        }
        let wrong: Vec<String> = (0..3)
            .map(|_| plain_word(&nouns[pick(rng, plain)]).expect("plain"))
            .collect();
        if wrong.contains(&word) {
            continue;
        }
        let k = rng.below(3) as usize;
        let prompt = match k {
            0 => format!("Which word means \"{def}\"?"),
            1 => format!("Give the word for this definition: {def}."),
            _ => format!("Definition: {def}\nWord:"),
        };
        let (choices, answer) = shuffle_in(rng, word, wrong);
        out.push(Item {
            family: "definition",
            task: format!("gloss/{k}"),
            prompt,
            choices,
            answer,
        });
    }
    out
}

fn taxonomy(nouns: &HashMap<u32, Synset>, plain: &[u32], rng: &mut Rng, n: usize) -> Vec<Item> {
    let with_parts: Vec<u32> = plain
        .iter()
        .copied()
        .filter(|o| {
            nouns[o]
                .targets("#p")
                .any(|t| nouns.get(&t).and_then(plain_word).is_some())
        })
        .collect();
    let mut out = vec![];
    let mut tries = 0;
    while out.len() < n && tries < 50 * n {
        tries += 1;
        let k = rng.below(3) as usize;
        let positive = rng.below(2) == 0;
        let part = rng.below(3) == 0;
        let (x, y) = if part {
            let s = &nouns[pick(rng, &with_parts)];
            let holonyms: Vec<u32> = s.targets("#p").filter(|t| nouns.contains_key(t)).collect();
            let y = if positive {
                *pick(rng, &holonyms)
            } else {
                let o = *pick(rng, plain);
                if holonyms.contains(&o) || o == s.offset {
                    continue;
                }
                o
            };
            (s.offset, y)
        } else {
            let x = *pick(rng, plain);
            let anc = ancestors(nouns, x);
            // Near ancestors (1-3 steps): "a dog is a canine / a carnivore", not "an entity".
            let near: Vec<u32> = anc
                .iter()
                .filter(|(o, &d)| d <= 3 && nouns.get(o).and_then(plain_word).is_some())
                .map(|(&o, _)| o)
                .collect();
            let y = if positive {
                if near.is_empty() {
                    continue;
                }
                let mut near = near;
                near.sort_unstable();
                *pick(rng, &near)
            } else {
                let o = *pick(rng, plain);
                if anc.contains_key(&o) || o == x {
                    continue;
                }
                o
            };
            (x, y)
        };
        let (Some(xw), Some(yw)) = (plain_word(&nouns[&x]), nouns.get(&y).and_then(plain_word))
        else {
            continue;
        };
        if xw == yw {
            continue;
        }
        let (ax, ay) = (article(&xw), article(&yw));
        let (task, prompt) = if part {
            (
                format!("part_of/{k}"),
                match k {
                    0 => format!("Is {ax} {xw} part of {ay} {yw}? Answer yes or no."),
                    1 => format!("Question: is {ax} {xw} a component of {ay} {yw}?"),
                    _ => {
                        format!("True or false (answer yes or no): {ax} {xw} is part of {ay} {yw}.")
                    }
                },
            )
        } else {
            (
                format!("is_a/{k}"),
                match k {
                    0 => format!("Is {ax} {xw} a kind of {yw}? Answer yes or no."),
                    1 => format!("Is every {xw} {ay} {yw}?"),
                    _ => format!("True or false (answer yes or no): {ax} {xw} is a type of {yw}."),
                },
            )
        };
        out.push(Item {
            family: "taxonomy",
            task,
            prompt,
            choices: vec!["yes".into(), "no".into()],
            answer: if positive { 0 } else { 1 },
        });
    }
    out
}

/// Every family's examples (sources read once), shuffled with `seed`. `per_family` caps the
/// generated families (sentiment and story endings have what their sources hold).
pub fn all_items(src: &Sources, seed: u64, per_family: usize) -> Result<Vec<Vec<Item>>> {
    let rng = Rng::new(seed);
    let (nouns, plain) = wordnet_nouns(&src.wordnet)?;
    let mut families = vec![
        sentiment(&src.polarity, &mut rng.fork(1))?,
        story_ending(&src.storycloze, &mut rng.fork(2))?,
        pronunciation(&src.cmudict, &mut rng.fork(3), per_family)?,
        definition(&nouns, &plain, &mut rng.fork(4), per_family),
        taxonomy(&nouns, &plain, &mut rng.fork(5), per_family),
    ];
    for (i, f) in families.iter_mut().enumerate() {
        rng.fork(10 + i as u64).shuffle(f);
    }
    Ok(families)
}

/// Writes the mixture into `out` (see the module docs) and returns its manifest.
pub fn build(out: &Path, src: &Sources, opts: &BuildOptions) -> Result<Value> {
    for h in &opts.held_out {
        if !FAMILIES.contains(&h.as_str()) {
            return Err(Error::Config(format!(
                "unknown task family {h:?} (known: {})",
                FAMILIES.join(", ")
            )));
        }
    }
    if opts.held_out.len() == FAMILIES.len() {
        return Err(Error::Config(
            "every family is held out: nothing to train on".into(),
        ));
    }
    let need = opts.train_per_family + opts.eval_per_family;
    let families = all_items(src, opts.seed, need)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut train: Vec<Value> = vec![];
    let mut eval: Vec<Value> = vec![];
    let mut counts = serde_json::Map::new();
    for (name, items) in FAMILIES.iter().zip(&families) {
        let held = opts.held_out.iter().any(|h| h == name);
        // Evaluation examples first, so the training ones never include them.
        let n_eval = opts.eval_per_family.min(items.len());
        for it in &items[..n_eval] {
            eval.push(json!({
                "family": it.family, "task": it.task, "held_out": held,
                "messages": [Message::new("user", &it.prompt)],
                "choices": it.choices, "answer": it.answer,
            }));
        }
        let n_train = if held {
            0
        } else {
            opts.train_per_family.min(items.len() - n_eval)
        };
        for it in &items[n_eval..n_eval + n_train] {
            train.push(json!({
                "family": it.family, "task": it.task,
                "messages": [Message::new("user", &it.prompt), Message::new("assistant", it.answer_text())],
            }));
        }
        counts.insert(
            name.to_string(),
            json!({"held_out": held, "train": n_train, "eval": n_eval}),
        );
    }
    Rng::new(opts.seed).fork(99).shuffle(&mut train);
    let lines = |v: &[Value]| -> String { v.iter().map(|r| format!("{r}\n")).collect() };
    crate::io::write_atomic(&out.join("train.jsonl"), lines(&train).as_bytes())?;
    crate::io::write_atomic(&out.join("eval.jsonl"), lines(&eval).as_bytes())?;
    let manifest = json!({
        "seed": opts.seed,
        "held_out": opts.held_out,
        "families": counts,
        "train_examples": train.len(),
        "eval_examples": eval.len(),
        "sources": {
            "sentiment": "asset polarity (Pang & Lee movie-review sentences)",
            "story_ending": "asset storycloze (Story Cloze 2016 val + test)",
            "pronunciation": "asset cmudict (CMU Pronouncing Dictionary 1.1.3)",
            "definition": "asset wordnet (WordNet 3.0 noun glosses)",
            "taxonomy": "asset wordnet (WordNet 3.0 hypernyms and part holonyms)",
        },
    });
    crate::io::write_json_atomic(&out.join("manifest.json"), &manifest)?;
    Ok(manifest)
}
