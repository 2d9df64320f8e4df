//! `ferroformer semnet`: build, query and reason over semantic networks, and turn them into
//! text, prompt facts and embeddings.

use super::Common;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferroformer::semnet::{
    self, export, extract, facts, verbalize, Graph, Measure, Node, Opened, Taxonomy, Toward,
};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum SemnetCmd {
    /// Read a network (WordNet's database files, ConceptNet's CSV dump, TSV triples) and save
    /// it as a compact .semnet file; report its size and any cycle in a relation declared
    /// acyclic.
    Import(ImportArgs),
    /// Everything about one concept: labels, gloss, its relations both ways (symmetric and
    /// inverse ones included), what it inherits, its depth and hypernym paths.
    Query(QueryArgs),
    /// Transitive closure of a concept: its ancestors (or descendants with --down) along the
    /// taxonomic relations or the ones named, nearest first.
    Closure(ClosureArgs),
    /// Similarity of two concepts with NLTK's definitions: path, wup (Wu-Palmer) or lch
    /// (Leacock-Chodorow); prints the number.
    Similarity(SimilarityArgs),
    /// The shortest chain of relations between two concepts (edges read either way), and
    /// their lowest common hypernyms.
    Path(PathArgs),
    /// Turn triples into sentences from each relation's template: plain text, JSON lines
    /// for a pre-training corpus, or chat `messages` records for instruction tuning.
    Verbalize(VerbalizeArgs),
    /// Find triples in text with lexico-syntactic patterns ("X is a type of Y", "Y such as
    /// X", "X is part of Y", "X has Y", ...); with --gold, precision and recall.
    Extract(ExtractArgs),
    /// The facts the network holds about the concepts a question names, to prepend to a
    /// prompt.
    Facts(FactsArgs),
    /// Write a network, or a concept's neighbourhood, as JSON, TSV, Graphviz DOT or PNG.
    Export(ExportArgs),
    /// Train TransE knowledge-graph embeddings through the training engine (checkpoints,
    /// metrics.jsonl, loss.png, exact resume) and evaluate link prediction: filtered MRR,
    /// mean rank, Hits@1/3/10 on the validation and test triples. From a network (split
    /// seeded 90/5/5: for WordNet, WN18RR-style over noun synsets; else all triples) or a
    /// split directory.
    Embed(super::semnet_embed::EmbedArgs),
}

#[derive(Args, Debug, Clone)]
pub struct GraphArg {
    /// The network: `wordnet` (the asset), a WordNet database directory, a .semnet file, TSV
    /// triples (.tsv) or a ConceptNet dump (.csv).
    #[arg(long, default_value = "wordnet")]
    pub graph: String,
    /// A TOML file of relation declarations adding to or overriding the built-in ones (for
    /// text imports; see src/semnet/relations.toml for the format).
    #[arg(long)]
    pub relations: Option<PathBuf>,
}

impl GraphArg {
    pub(crate) fn open(&self, c: &Common) -> Result<Graph> {
        let t = Instant::now();
        let (g, how) = semnet::open(&self.graph, self.relations.as_deref())?;
        if c.progress() {
            let what = match &how {
                Opened::Saved => "saved network".to_string(),
                Opened::WordNet => "WordNet".to_string(),
                Opened::Tsv(r) | Opened::ConceptNet(r) => r.summary(),
            };
            eprintln!(
                "{}: {} concepts, {} edges ({what}; {:.2} s)",
                self.graph,
                g.len(),
                g.edge_count(),
                t.elapsed().as_secs_f64()
            );
        }
        Ok(g)
    }
}

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

pub fn run(cmd: SemnetCmd, c: &Common) -> Result<()> {
    match cmd {
        SemnetCmd::Import(a) => import_cmd(a, c),
        SemnetCmd::Query(a) => query(a, c),
        SemnetCmd::Closure(a) => closure(a, c),
        SemnetCmd::Similarity(a) => similarity(a, c),
        SemnetCmd::Path(a) => path(a, c),
        SemnetCmd::Verbalize(a) => verbalize_cmd(a, c),
        SemnetCmd::Extract(a) => extract_cmd(a, c),
        SemnetCmd::Facts(a) => facts_cmd(a, c),
        SemnetCmd::Export(a) => export_cmd(a, c),
        SemnetCmd::Embed(a) => super::semnet_embed::run(a, c),
    }
}

fn import_cmd(a: ImportArgs, c: &Common) -> Result<()> {
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

fn query(a: QueryArgs, c: &Common) -> Result<()> {
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

fn relations(g: &Graph, names: &[String]) -> Result<Vec<u16>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    Ok(names
        .iter()
        .map(|n| g.relations.require(n))
        .collect::<ferroformer::Result<_>>()?)
}

fn closure(a: ClosureArgs, c: &Common) -> Result<()> {
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

fn similarity(a: SimilarityArgs, c: &Common) -> Result<()> {
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

fn path(a: PathArgs, c: &Common) -> Result<()> {
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

fn verbalize_cmd(a: VerbalizeArgs, c: &Common) -> Result<()> {
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

fn extract_cmd(a: ExtractArgs, c: &Common) -> Result<()> {
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

fn facts_cmd(a: FactsArgs, c: &Common) -> Result<()> {
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

fn export_cmd(a: ExportArgs, c: &Common) -> Result<()> {
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
