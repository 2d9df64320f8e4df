//! `ferroformer semnet query|closure|similarity|path`: reasoning over a network: what holds
//! of a concept (inheritance with exceptions), transitive closures, WordNet similarities,
//! paths between concepts.

use super::super::Common;
use super::{relations, GraphArg};
use anyhow::{bail, Result};
use clap::Args;
use ferroformer::semnet::{Measure, Node, Taxonomy, Toward};
use serde_json::json;

#[derive(Args, Debug)]
pub struct QueryArgs {
    #[command(flatten)]
    pub graph: GraphArg,
    /// The concept: an id (dog.n.01, /c/en/dog, LoRA) or a label naming one concept.
    pub concept: String,
}

#[derive(Args, Debug)]
pub struct ClosureArgs {
    #[command(flatten)]
    pub graph: GraphArg,
    pub concept: String,
    /// Relations to follow [default: the taxonomic ones, e.g. hypernym and instance_hypernym].
    #[arg(long, value_delimiter = ',')]
    pub relation: Vec<String>,
    /// Descendants instead of ancestors.
    #[arg(long, default_value_t = false)]
    pub down: bool,
    /// Stop after this many hops (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub depth: u32,
}

#[derive(Args, Debug)]
pub struct SimilarityArgs {
    #[command(flatten)]
    pub graph: GraphArg,
    /// path, wup (Wu-Palmer) or lch (Leacock-Chodorow).
    #[arg(long, default_value = "path")]
    pub measure: String,
    /// Do not add NLTK's simulated root above the top nodes of taxonomies that need one
    /// (WordNet verbs; networks with several top nodes).
    #[arg(long, default_value_t = false)]
    pub no_simulate_root: bool,
    pub a: String,
    pub b: String,
}

#[derive(Args, Debug)]
pub struct PathArgs {
    #[command(flatten)]
    pub graph: GraphArg,
    pub a: String,
    pub b: String,
    /// Only these relations [default: all].
    #[arg(long, value_delimiter = ',')]
    pub relation: Vec<String>,
    /// Give up beyond this many hops (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max: u32,
}

pub fn query(a: QueryArgs, c: &Common) -> Result<()> {
    let g = a.graph.open(c)?;
    let x = g.resolve(&a.concept)?;
    let con = g.concept(x);
    // Every relation it takes part in, named from its side (inverse names for incoming edges).
    let mut rels: Vec<(String, String, bool)> = Vec::new();
    for (e, other, incoming) in g.all_edges(x) {
        let r = g.relations.get(e.rel);
        let name = match (incoming, g.relations.inverse(e.rel)) {
            (false, _) => r.name.clone(),
            (true, _) if r.symmetric => r.name.clone(),
            (true, Some(inv)) => g.relations.name(inv).to_string(),
            (true, None) => format!("{} (of)", r.name),
        };
        let item = (name, g.concept(other).id.clone(), incoming);
        if !rels.iter().any(|(n, o, _)| *n == item.0 && *o == item.1) {
            rels.push(item);
        }
    }
    let inherited: Vec<_> = g
        .inherited(x)
        .into_iter()
        .map(|i| {
            json!({"relation": g.relations.name(i.rel), "value": g.concept(i.value).id,
                   "from": g.concept(i.from).id, "distance": i.distance})
        })
        .collect();
    let tax = Taxonomy::new(&g).ok();
    let depth = tax.as_ref().and_then(|t| {
        Some((
            t.min_depth(Node::Concept(x)).ok()?,
            t.max_depth(Node::Concept(x)).ok()?,
            t.hypernym_paths(x).ok()?,
        ))
    });
    if c.json {
        let paths: Option<Vec<Vec<&str>>> = depth.as_ref().map(|d| {
            d.2.iter()
                .map(|p| p.iter().map(|&n| g.concept(n).id.as_str()).collect())
                .collect()
        });
        println!(
            "{}",
            json!({"id": con.id, "labels": con.labels, "gloss": con.gloss, "pos": con.pos.map(String::from),
                   "relations": rels.iter().map(|(r, o, _)| json!({"relation": r, "concept": o})).collect::<Vec<_>>(),
                   "inherited": inherited, "min_depth": depth.as_ref().map(|d| d.0),
                   "max_depth": depth.as_ref().map(|d| d.1), "hypernym_paths": paths})
        );
        return Ok(());
    }
    println!("{}  ({})", con.id, con.labels.join(", "));
    if let Some(gl) = &con.gloss {
        println!("  {gl}");
    }
    for (r, o, _) in &rels {
        println!("  {r:<28} {o}");
    }
    for i in g.inherited(x).iter().filter(|i| i.distance > 0) {
        println!(
            "  {:<28} {}   (inherited from {}, {} up)",
            g.relations.name(i.rel),
            g.concept(i.value).id,
            g.concept(i.from).id,
            i.distance
        );
    }
    if let Some((min, max, paths)) = depth {
        println!("  depth: min {min}, max {max}");
        for p in paths {
            let names: Vec<&str> = p.iter().map(|&n| g.concept(n).id.as_str()).collect();
            println!("  path: {}", names.join(" > "));
        }
    }
    Ok(())
}

pub fn closure(a: ClosureArgs, c: &Common) -> Result<()> {
    let g = a.graph.open(c)?;
    let x = g.resolve(&a.concept)?;
    let mut rels = relations(&g, &a.relation)?;
    if rels.is_empty() {
        rels = g.relations.taxonomic();
    }
    let toward = if a.down { Toward::Down } else { Toward::Up };
    let reached = g.closure(x, &rels, toward, a.depth);
    for r in &reached {
        let id = &g.concept(r.concept).id;
        if c.json {
            println!("{}", json!({"concept": id, "distance": r.distance}));
        } else {
            println!("{}\t{id}", r.distance);
        }
    }
    if c.json {
        println!(
            "{}",
            json!({"concept": g.concept(x).id, "direction": if a.down {"down"} else {"up"}, "count": reached.len()})
        );
    }
    Ok(())
}

pub fn similarity(a: SimilarityArgs, c: &Common) -> Result<()> {
    let measure: Measure = a.measure.parse()?;
    let g = a.graph.open(c)?;
    let (x, y) = (g.resolve(&a.a)?, g.resolve(&a.b)?);
    let t = Taxonomy::new(&g)?;
    let root = !a.no_simulate_root;
    let value = match measure {
        Measure::Path => t.path_similarity(x, y, root),
        Measure::WuPalmer => t.wup_similarity(x, y, root)?,
        Measure::LeacockChodorow => t.lch_similarity(x, y, root)?,
    };
    if c.json {
        let lch = t.lowest_common_hypernyms(x, y, false, false)?;
        let names: Vec<&str> = lch
            .iter()
            .map(|n| match n {
                Node::Concept(k) => g.concept(*k).id.as_str(),
                Node::Root => "*ROOT*",
            })
            .collect();
        println!(
            "{}",
            json!({"a": g.concept(x).id, "b": g.concept(y).id, "measure": a.measure, "similarity": value,
                   "distance": t.shortest_path_distance(Node::Concept(x), Node::Concept(y), false),
                   "lowest_common_hypernyms": names})
        );
    } else {
        match value {
            Some(v) => println!("{v}"),
            None => println!("None"),
        }
    }
    Ok(())
}

pub fn path(a: PathArgs, c: &Common) -> Result<()> {
    let g = a.graph.open(c)?;
    let (x, y) = (g.resolve(&a.a)?, g.resolve(&a.b)?);
    let rels = relations(&g, &a.relation)?;
    let Some(hops) = g.path(x, y, &rels, a.max) else {
        bail!(
            "no chain of relations joins {} and {}",
            g.concept(x).id,
            g.concept(y).id
        );
    };
    let lch: Vec<String> = Taxonomy::new(&g)
        .ok()
        .and_then(|t| t.lowest_common_hypernyms(x, y, false, false).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| match n {
            Node::Concept(k) => Some(g.concept(k).id.clone()),
            Node::Root => None,
        })
        .collect();
    if c.json {
        let steps: Vec<_> = hops
            .iter()
            .map(|h| json!({"relation": g.relations.name(h.rel), "reversed": h.reversed, "to": g.concept(h.to).id}))
            .collect();
        println!(
            "{}",
            json!({"from": g.concept(x).id, "to": g.concept(y).id, "length": hops.len(), "steps": steps,
                   "lowest_common_hypernyms": lch})
        );
    } else {
        let mut s = g.concept(x).id.clone();
        for h in &hops {
            let r = g.relations.name(h.rel);
            if h.reversed {
                s.push_str(&format!(" <-{r}- {}", g.concept(h.to).id));
            } else {
                s.push_str(&format!(" -{r}-> {}", g.concept(h.to).id));
            }
        }
        println!("{s}");
        if !lch.is_empty() {
            println!("lowest common hypernyms: {}", lch.join(", "));
        }
    }
    Ok(())
}
