//! `ferroformer semnet import`: a semantic network from WordNet, a ConceptNet CSV or TSV triples.

use super::super::Common;
use anyhow::Result;
use clap::Args;
use ferroformer::semnet::{self, Opened};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// What to read: `wordnet`, a WordNet directory, a ConceptNet .csv dump or .tsv triples.
    pub source: String,
    /// Where to save the network (.semnet).
    #[arg(long)]
    pub out: PathBuf,
    /// ConceptNet: keep only edges whose two ends are in these languages, e.g. en [default:
    /// all].
    #[arg(long, value_delimiter = ',')]
    pub lang: Vec<String>,
    /// Relation declarations to add (TOML).
    #[arg(long)]
    pub relations: Option<PathBuf>,
}

pub fn run(a: ImportArgs, c: &Common) -> Result<()> {
    let t = Instant::now();
    let (g, how) = semnet::open_with(&a.source, a.relations.as_deref(), &a.lang)?;
    let read_s = t.elapsed().as_secs_f64();
    let all: Vec<_> = g.relations.iter().map(|(i, _)| i).collect();
    let cycles = g.cycles(&all);
    for (r, cyc) in &cycles {
        let names: Vec<&str> = cyc.iter().map(|&x| g.concept(x).id.as_str()).collect();
        eprintln!(
            "warning: relation {} is declared acyclic but has a cycle: {}",
            g.relations.name(*r),
            names.join(" -> ")
        );
    }
    let t2 = Instant::now();
    semnet::store::save(&g, &a.out)?;
    let save_s = t2.elapsed().as_secs_f64();
    let t3 = Instant::now();
    semnet::store::load(&a.out)?;
    let load_s = t3.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&a.out)?.len();
    let report = match &how {
        Opened::Tsv(r) | Opened::ConceptNet(r) => Some(r),
        _ => None,
    };
    let summary = json!({
        "source": a.source, "out": a.out, "concepts": g.len(), "edges": g.edge_count(),
        "relations": g.relation_counts().into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>(),
        "skipped_lines": report.map(|r| r.skipped), "first_skipped": report.map(|r| &r.first_skipped),
        "cycles": cycles.len(), "bytes": bytes, "read_seconds": read_s, "save_seconds": save_s,
        "load_seconds": load_s,
    });
    if c.json {
        println!("{summary}");
    } else {
        if let Some(r) = report {
            println!("read: {}", r.summary());
        }
        println!(
            "{}: {} concepts, {} edges, {:.1} MB; read {read_s:.2} s, saved {save_s:.2} s, loads in {load_s:.2} s",
            a.out.display(),
            g.len(),
            g.edge_count(),
            bytes as f64 / 1e6
        );
        for (r, n) in g.relation_counts() {
            println!("  {r:<28} {n}");
        }
    }
    Ok(())
}
