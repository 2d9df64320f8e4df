//! `ferroformer semnet verbalize|extract|facts`: a network as sentences, triples extracted
//! from text by patterns (scored against gold triples), facts for prompts.

use super::super::Common;
use super::{relations, GraphArg};
use anyhow::{bail, Context, Result};
use clap::Args;
use ferroformer::semnet::{export, extract, facts, verbalize};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct VerbalizeArgs {
    #[command(flatten)]
    pub graph: GraphArg,
    /// Only these relations [default: all].
    #[arg(long, value_delimiter = ',')]
    pub relation: Vec<String>,
    /// Only triples about these concepts (as head or tail) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub concept: Vec<String>,
    /// text (one sentence per line; jsonl with --json), jsonl ({"text": ...}: a pre-training
    /// corpus) or messages (chat records, the fact to complete: `instruct` trains on them).
    #[arg(long, default_value = "text")]
    pub format: String,
    /// At most this many (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Write here instead of stdout (atomically).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// UTF-8 text to read.
    pub input: PathBuf,
    /// Hand-labelled triples (head<TAB>relation<TAB>tail per line) to score against:
    /// precision and recall.
    #[arg(long)]
    pub gold: Option<PathBuf>,
    /// Write the triples as TSV (what `semnet import` reads).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct FactsArgs {
    #[command(flatten)]
    pub graph: GraphArg,
    /// The question.
    pub question: String,
    /// At most this many facts per concept named.
    #[arg(long, default_value_t = 8)]
    pub per_concept: usize,
    /// Print the whole prompt (facts, then the question) instead of the facts.
    #[arg(long, default_value_t = false)]
    pub prompt: bool,
}

pub fn verbalize(a: VerbalizeArgs, c: &Common) -> Result<()> {
    let mut form: verbalize::Form = a.format.parse()?;
    if c.json && form == verbalize::Form::Text {
        form = verbalize::Form::Jsonl;
    }
    let g = a.graph.open(c)?;
    let rels = relations(&g, &a.relation)?;
    let concepts: Vec<u32> = a
        .concept
        .iter()
        .map(|n| g.resolve(n))
        .collect::<ferroformer::Result<_>>()?;
    let mut out = String::new();
    let mut n = 0;
    for (h, r, t, _) in g.triples() {
        if (!rels.is_empty() && !rels.contains(&r))
            || (!concepts.is_empty() && !concepts.contains(&h) && !concepts.contains(&t))
        {
            continue;
        }
        out.push_str(&verbalize::line(&g, h, r, t, form));
        out.push('\n');
        n += 1;
        if a.limit > 0 && n >= a.limit {
            break;
        }
    }
    match &a.out {
        Some(p) => {
            export::write_text(p, &out)?;
            if c.progress() {
                eprintln!("{n} lines -> {}", p.display());
            }
        }
        None => print!("{out}"),
    }
    Ok(())
}

fn read_gold(path: &std::path::Path) -> Result<Vec<(String, String, String)>> {
    let text = ferroformer::data::read_text(path)?;
    let mut gold = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').map(str::trim).collect();
        if f.len() != 3 {
            bail!(
                "{}:{}: expected head<TAB>relation<TAB>tail",
                path.display(),
                i + 1
            );
        }
        gold.push((f[0].to_lowercase(), f[1].to_string(), f[2].to_lowercase()));
    }
    Ok(gold)
}

pub fn extract(a: ExtractArgs, c: &Common) -> Result<()> {
    let text = ferroformer::data::read_text(&a.input)?;
    let found = extract::extract(&text);
    if let Some(p) = &a.out {
        let mut s = String::from("# head\trelation\ttail\n");
        for f in &found {
            s.push_str(&format!("{}\t{}\t{}\n", f.head, f.relation, f.tail));
        }
        export::write_text(p, &s)?;
    }
    for f in &found {
        if c.json {
            println!("{}", serde_json::to_string(f)?);
        } else if a.out.is_none() {
            println!("{}\t{}\t{}", f.head, f.relation, f.tail);
        }
    }
    if let Some(g) = &a.gold {
        let gold = read_gold(g).with_context(|| format!("reading --gold {}", g.display()))?;
        let (p, r) = extract::score(&found, &gold);
        let f1 = if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
        if c.json {
            println!(
                "{}",
                json!({"found": found.len(), "gold": gold.len(), "precision": p, "recall": r, "f1": f1})
            );
        } else {
            println!(
                "found {}, gold {}: precision {p:.3}, recall {r:.3}, F1 {f1:.3}",
                found.len(),
                gold.len()
            );
        }
    }
    Ok(())
}

pub fn facts(a: FactsArgs, c: &Common) -> Result<()> {
    let g = a.graph.open(c)?;
    let fs = facts::facts(&g, &a.question, a.per_concept);
    if a.prompt {
        let p = facts::prompt(&fs, &a.question);
        if c.json {
            println!("{}", json!({"prompt": p, "facts": fs.len()}));
        } else {
            println!("{p}");
        }
        return Ok(());
    }
    for f in &fs {
        if c.json {
            println!("{}", serde_json::to_string(f)?);
        } else {
            println!("{}", f.text);
        }
    }
    if fs.is_empty() && c.progress() {
        eprintln!("no concept of the network is named in the question");
    }
    Ok(())
}
