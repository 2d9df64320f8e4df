//! `ferroformer semnet export`: a network (or a neighbourhood) as DOT, GraphML, JSON or PNG.

use super::super::Common;
use super::GraphArg;
use anyhow::{bail, Result};
use clap::Args;
use ferroformer::semnet::export;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub graph: GraphArg,
    /// json, tsv, dot or png [default: from --out's extension].
    #[arg(long)]
    pub format: Option<String>,
    #[arg(long)]
    pub out: PathBuf,
    /// Only this concept's neighbourhood (required for png).
    #[arg(long)]
    pub around: Option<String>,
    /// Hops around --around.
    #[arg(long, default_value_t = 1)]
    pub depth: u32,
    /// At most this many concepts around --around.
    #[arg(long, default_value_t = 40)]
    pub max_nodes: usize,
    /// png: draw it ourselves even when Graphviz's `dot` is installed.
    #[arg(long, default_value_t = false)]
    pub no_graphviz: bool,
}

pub fn run(a: ExportArgs, c: &Common) -> Result<()> {
    let format = match &a.format {
        Some(f) => f.clone(),
        None => a
            .out
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_string(),
    };
    let g = a.graph.open(c)?;
    let around = match &a.around {
        Some(n) => {
            let x = g.resolve(n)?;
            Some(export::neighbourhood(&g, x, a.depth, a.max_nodes))
        }
        None => None,
    };
    let ids: Option<Vec<u32>> = around.as_ref().map(|n| n.iter().map(|x| x.0).collect());
    let how = match format.as_str() {
        "json" => {
            let v = export::to_json(&g, ids.as_deref());
            export::write_text(&a.out, &serde_json::to_string_pretty(&v)?)?;
            "json"
        }
        "tsv" => {
            export::write_text(&a.out, &export::to_tsv(&g, ids.as_deref()))?;
            "tsv"
        }
        "dot" => {
            let center = ids.as_ref().and_then(|i| i.first().copied());
            export::write_text(&a.out, &export::to_dot(&g, ids.as_deref(), center))?;
            "dot"
        }
        "png" => {
            let Some(nodes) = &around else {
                bail!("--format png draws a neighbourhood: give --around CONCEPT");
            };
            export::png(&g, nodes, &a.out, !a.no_graphviz)?
        }
        f => bail!("unknown export format {f:?} (json, tsv, dot, png)"),
    };
    let n = ids.as_ref().map(Vec::len).unwrap_or(g.len());
    if c.json {
        println!(
            "{}",
            json!({"out": a.out, "format": format, "renderer": how, "concepts": n})
        );
    } else if c.progress() {
        eprintln!("{n} concepts -> {} ({how})", a.out.display());
    }
    Ok(())
}
