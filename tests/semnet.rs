//! Semantic networks: WordNet 3.0 read from its database files (asset `wordnet`) against
//! NLTK's reader on the same files (tests/fixtures/semnet/make_wordnet_fixtures.py): synset
//! counts and names, similarity measures within 1e-9, hypernym paths, depths and lowest
//! common hypernyms.

mod common;

use ferroformer::semnet::{self, Graph, Node, Taxonomy};
use serde_json::Value;
use std::sync::OnceLock;

fn wordnet() -> &'static Graph {
    static G: OnceLock<Graph> = OnceLock::new();
    G.get_or_init(|| {
        let dir = ferroformer::assets::ensure("wordnet")
            .expect("asset wordnet (ferroformer fetch wordnet)");
        semnet::wordnet::import(&dir).expect("WordNet imports")
    })
}

fn fixture() -> Value {
    let p = common::fixture("semnet/wordnet_nltk.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn names(g: &Graph, ns: &[Node]) -> Vec<String> {
    ns.iter()
        .map(|n| match n {
            Node::Concept(c) => g.concept(*c).id.clone(),
            Node::Root => "*ROOT*".into(),
        })
        .collect()
}

fn close(what: &str, ours: Option<f64>, theirs: &Value) {
    match (ours, theirs.as_f64()) {
        (None, None) => {}
        (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-9, "{what}: ours {a}, NLTK {b}"),
        _ => panic!("{what}: ours {ours:?}, NLTK {theirs}"),
    }
}

#[test]
fn wordnet_counts_and_names_match_nltk() {
    let g = wordnet();
    let f = fixture();
    let count = |p: char| g.concepts.iter().filter(|c| c.pos == Some(p)).count();
    assert_eq!(count('n') as u64, f["noun_synsets"].as_u64().unwrap());
    assert_eq!(count('n'), 82_115);
    assert_eq!(count('v') as u64, f["verb_synsets"].as_u64().unwrap());
    let dog = g.concept(g.id_of("dog.n.01").unwrap());
    assert_eq!(dog.labels, ["dog", "domestic_dog", "Canis_familiaris"]);
    assert!(dog
        .gloss
        .as_deref()
        .unwrap()
        .starts_with("a member of the genus Canis"));
    // Every synset name NLTK used resolves.
    for name in f["synsets"].as_object().unwrap().keys() {
        assert!(g.id_of(name).is_some(), "{name}");
    }
}

#[test]
fn similarities_match_nltk_within_1e9() {
    let g = wordnet();
    let t = Taxonomy::new(g).unwrap();
    let f = fixture();
    let mut n = 0;
    for set in ["noun_pairs", "near_pairs", "verb_pairs"] {
        for p in f[set].as_array().unwrap() {
            let (a, b) = (p["a"].as_str().unwrap(), p["b"].as_str().unwrap());
            let (x, y) = (g.id_of(a).unwrap(), g.id_of(b).unwrap());
            let what = |m: &str| format!("{m}({a}, {b})");
            close(&what("path"), t.path_similarity(x, y, true), &p["path"]);
            close(
                &what("wup"),
                t.wup_similarity(x, y, true).unwrap(),
                &p["wup"],
            );
            close(
                &what("lch"),
                t.lch_similarity(x, y, true).unwrap(),
                &p["lch"],
            );
            let d = t.shortest_path_distance(Node::Concept(x), Node::Concept(y), false);
            assert_eq!(
                d.map(u64::from),
                p["distance"].as_u64(),
                "{}",
                what("distance")
            );
            let lch = t.lowest_common_hypernyms(x, y, false, false).unwrap();
            let want: Vec<String> = serde_json::from_value(p["lch_nodes"].clone()).unwrap();
            assert_eq!(names(g, &lch), want, "{}", what("lowest_common_hypernyms"));
            n += 1;
        }
    }
    assert_eq!(n, 800);
}

#[test]
fn hypernym_paths_and_depths_match_nltk() {
    let g = wordnet();
    let t = Taxonomy::new(g).unwrap();
    let f = fixture();
    for (name, want) in f["synsets"].as_object().unwrap() {
        let c = g.id_of(name).unwrap();
        let paths: Vec<Vec<String>> = t
            .hypernym_paths(c)
            .unwrap()
            .iter()
            .map(|p| p.iter().map(|&x| g.concept(x).id.clone()).collect())
            .collect();
        let want_paths: Vec<Vec<String>> =
            serde_json::from_value(want["hypernym_paths"].clone()).unwrap();
        assert_eq!(paths, want_paths, "hypernym_paths({name})");
        assert_eq!(
            u64::from(t.min_depth(Node::Concept(c)).unwrap()),
            want["min_depth"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            u64::from(t.max_depth(Node::Concept(c)).unwrap()),
            want["max_depth"].as_u64().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn wordnet_saves_and_loads_unchanged() {
    let g = wordnet();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wordnet.semnet");
    semnet::store::save(g, &path).unwrap();
    let h = semnet::store::load(&path).unwrap();
    assert_eq!(h.concepts, g.concepts);
    assert_eq!(h.edge_count(), g.edge_count());
    assert!(h
        .triples()
        .zip(g.triples())
        .all(|(a, b)| a.0 == b.0 && a.1 == b.1 && a.2 == b.2 && a.3 == b.3));
    assert_eq!(h.relations, g.relations);
}

// ---- the hand-built network of the toolkit's vocabulary (examples/semnet/toolkit.tsv) ----

fn toolkit() -> Graph {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/semnet/toolkit.tsv");
    let (g, opened) = semnet::open(path.to_str().unwrap(), None).unwrap();
    match opened {
        semnet::Opened::Tsv(r) => assert_eq!(r.skipped, 0, "{}", r.summary()),
        o => panic!("{o:?}"),
    }
    g
}

fn ids(g: &Graph, cs: impl IntoIterator<Item = u32>) -> Vec<String> {
    cs.into_iter().map(|c| g.concept(c).id.clone()).collect()
}

#[test]
fn inheritance_follows_is_a_and_nearer_exceptions_win() {
    let g = toolkit();
    let c = |n: &str| g.resolve(n).unwrap();
    let rel = |n: &str| g.relations.require(n).unwrap();
    let (cap, prop) = (rel("capable_of"), rel("has_property"));
    // Transformers attend to every position; decoder-only ones do not (causal mask), and
    // their descendants inherit the nearer exception; encoder-only ones inherit the rule.
    assert!(g
        .holds(c("BERT"), cap, c("attend to every position"))
        .unwrap());
    assert!(g
        .holds(c("ViT"), cap, c("attend to every position"))
        .unwrap());
    assert!(!g
        .holds(c("GPT-2"), cap, c("attend to every position"))
        .unwrap());
    assert!(!g
        .holds(
            c("decoder-only Transformer"),
            cap,
            c("attend to every position")
        )
        .unwrap());
    assert!(g
        .holds(c("Llama"), cap, c("generate text one token at a time"))
        .unwrap());
    // Fine-tuning updates every weight; PEFT methods do not, so neither does LoRA.
    let every = c("costly in memory");
    assert!(g.holds(c("full fine-tuning"), prop, every).unwrap());
    assert!(g.holds(c("instruction tuning"), prop, every).unwrap());
    assert!(!g.holds(c("LoRA"), prop, every).unwrap());
    assert!(!g.holds(c("frozen-layer fine-tuning"), prop, every).unwrap());
    assert!(g.holds(c("LoRA"), prop, c("small to store")).unwrap());
    assert!(g.holds(c("CLM"), prop, c("self-supervised")).unwrap());
    // Where an inherited value comes from, and how far.
    let lora = g.inherited(c("LoRA"));
    let small = lora
        .iter()
        .find(|i| i.value == c("small to store"))
        .unwrap();
    assert_eq!(
        (g.concept(small.from).id.as_str(), small.distance),
        ("PEFT method", 1)
    );
    // Not inheritable: refused by name.
    assert!(g.holds(c("LoRA"), rel("is_a"), c("fine-tuning")).is_err());
}

#[test]
fn symmetric_and_inverse_relations_read_both_ways() {
    let g = toolkit();
    let c = |n: &str| g.resolve(n).unwrap();
    let rel = |n: &str| g.relations.require(n).unwrap();
    let to = |from: &str, r: &str| ids(&g, g.hops(c(from), rel(r)).iter().map(|h| h.to));
    // related_to is symmetric: stated once, read from either end.
    assert_eq!(
        to("in-context learning", "related_to"),
        ["few-shot evaluation"]
    );
    assert_eq!(
        to("few-shot evaluation", "related_to"),
        ["in-context learning"]
    );
    assert_eq!(to("MLM", "related_to"), ["BERT"]);
    // part_of and has_part are declared inverses: each is read from the other's edges.
    assert_eq!(to("encoder", "part_of"), ["Transformer"]);
    assert_eq!(to("self-attention", "part_of"), ["encoder", "decoder"]);
    assert_eq!(to("LoRA", "has_part"), ["low-rank update"]);
    assert!(g.hops(c("encoder"), rel("part_of"))[0].reversed);
    // part_of is transitive: closure climbs through the inverse edges.
    let up = g.closure(
        c("self-attention"),
        &[rel("part_of")],
        semnet::Toward::Up,
        0,
    );
    assert_eq!(
        ids(&g, up.iter().map(|r| r.concept)),
        ["encoder", "decoder", "Transformer"]
    );
    assert_eq!(up.iter().map(|r| r.distance).collect::<Vec<_>>(), [1, 1, 2]);
    // Descendants along is_a, nearest first.
    let down = g.closure(c("Transformer"), &[rel("is_a")], semnet::Toward::Down, 0);
    assert_eq!(
        ids(&g, down.iter().map(|r| r.concept)),
        [
            "decoder-only Transformer",
            "encoder-only Transformer",
            "encoder-decoder Transformer",
            "GPT-2",
            "Llama",
            "BERT",
            "ViT",
            "Marian"
        ]
    );
    // Labels find concepts; an ambiguous or unknown name gets suggestions.
    assert_eq!(g.resolve("low-rank adaptation").unwrap(), c("LoRA"));
    assert_eq!(g.resolve("lora").unwrap(), c("LoRA"));
    let e = g.resolve("Lorra").unwrap_err().to_string();
    assert!(e.contains("LoRA"), "{e}");
}

#[test]
fn paths_depths_and_similarity_on_the_hand_built_network() {
    let g = toolkit();
    let c = |n: &str| g.resolve(n).unwrap();
    let hops = g.path(c("LoRA"), c("costly in memory"), &[], 0).unwrap();
    assert_eq!(
        ids(&g, hops.iter().map(|h| h.to)),
        ["PEFT method", "costly in memory"]
    );
    let rels: Vec<&str> = hops.iter().map(|h| g.relations.name(h.rel)).collect();
    assert_eq!(rels, ["is_a", "not_has_property"]);
    assert!(
        g.path(c("LoRA"), c("GGUF"), &[], 0).is_none(),
        "no chain joins LoRA and GGUF"
    );
    let t = Taxonomy::new(&g).unwrap();
    // Several top nodes (Transformer, attention, fine-tuning, ...): the root is simulated.
    assert!(t.needs_root(c("GPT-2")));
    assert_eq!(t.max_depth(Node::Concept(c("GPT-2"))).unwrap(), 2);
    // GPT-2 and Llama: siblings under decoder-only Transformer (depth 1). NLTK's Wu-Palmer:
    // 2*2 / ((1+2) + (1+2)).
    let wup = t
        .wup_similarity(c("GPT-2"), c("Llama"), true)
        .unwrap()
        .unwrap();
    assert!((wup - 4.0 / 6.0).abs() < 1e-12, "{wup}");
    // Path: GPT-2 -> decoder-only -> Transformer <- encoder-only <- BERT: 4 hops.
    assert_eq!(t.path_similarity(c("GPT-2"), c("BERT"), true), Some(0.2));
    // LCH: taxonomy depth 2 (+1 for the simulated root) = 3: -ln(5/6).
    let lch = t
        .lch_similarity(c("GPT-2"), c("BERT"), true)
        .unwrap()
        .unwrap();
    assert!((lch + (5.0f64 / 6.0).ln()).abs() < 1e-12, "{lch}");
}

#[test]
fn cycles_in_acyclic_relations_are_reported_not_looped_on() {
    let mut g = toolkit();
    let c = |g: &Graph, n: &str| g.resolve(n).unwrap();
    let isa = g.relations.require("is_a").unwrap();
    let src = g.source_id("test");
    let (t, gpt) = (c(&g, "Transformer"), c(&g, "GPT-2"));
    assert!(g.cycles(&[isa]).is_empty());
    g.add_edge(t, isa, gpt, 1.0, src);
    let cycles = g.cycles(&[isa]);
    assert_eq!(cycles.len(), 1);
    let cyc = ids(&g, cycles[0].1.iter().copied());
    assert_eq!(cyc.first(), cyc.last());
    assert!(
        cyc.contains(&"GPT-2".to_string()) && cyc.contains(&"Transformer".to_string()),
        "{cyc:?}"
    );
    // Closure terminates and the taxonomy measures say why they cannot answer.
    let up = g.closure(gpt, &[isa], semnet::Toward::Up, 0);
    assert_eq!(up.len(), 2);
    let tax = Taxonomy::new(&g).unwrap();
    let e = tax.max_depth(Node::Concept(gpt)).unwrap_err().to_string();
    assert!(e.contains("cycle") && e.contains("GPT-2"), "{e}");
}
