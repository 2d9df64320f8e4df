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

// ---- ConceptNet, TSV, the store and bad input ----

#[test]
fn conceptnet_import_reads_edges_and_names_skipped_lines() {
    let path = common::fixture("semnet/conceptnet_sample.csv");
    let mut g = Graph::new(semnet::Relations::builtin());
    let r = semnet::import::conceptnet(&mut g, &path, &[]).unwrap();
    assert_eq!((r.lines, r.edges, r.skipped), (17, 14, 3));
    let lines: Vec<&str> = r
        .first_skipped
        .iter()
        .map(|s| s.rsplit_once(".csv:").unwrap().1)
        .collect();
    assert!(
        lines[0].starts_with("4: 4 fields")
            && lines[1].starts_with("8: info is not")
            && lines[2].starts_with("11: start"),
        "{lines:?}"
    );
    assert_eq!(r.new_relations, ["dbpedia/genre"]);
    let c = |n: &str| g.resolve(n).unwrap();
    assert_eq!(g.concept(c("/c/en/dog")).pos, Some('n'));
    assert_eq!(g.resolve("penguin").unwrap(), c("/c/en/penguin"));
    // ConceptNet's relation names map onto the declared ones: IsA is taxonomic, so birds fly,
    // sparrows inherit it, penguins' NotCapableOf overrides it; animals' HasProperty alive
    // reaches penguins two steps up.
    let cap = g.relations.require("CapableOf").unwrap();
    assert!(g.holds(c("/c/en/sparrow"), cap, c("/c/en/fly")).unwrap());
    assert!(!g.holds(c("/c/en/penguin"), cap, c("/c/en/fly")).unwrap());
    assert!(g.holds(c("/c/en/penguin"), cap, c("/c/en/swim")).unwrap());
    let prop = g.relations.require("HasProperty").unwrap();
    assert!(g.holds(c("/c/en/penguin"), prop, c("/c/en/alive")).unwrap());
    // Antonym is symmetric; weights and datasets are kept.
    let ant = g.relations.require("Antonym").unwrap();
    assert_eq!(
        ids(&g, g.hops(c("/c/en/cold"), ant).iter().map(|h| h.to)),
        ["/c/en/hot"]
    );
    let (e, _, _) = g.all_edges(c("/c/en/hot"))[0];
    assert_eq!(
        (e.weight, g.sources[e.source as usize].as_str()),
        (2.5, "/d/wiktionary/en")
    );
    // A language filter keeps edges with both ends in the languages.
    let mut en = Graph::new(semnet::Relations::builtin());
    let r = semnet::import::conceptnet(&mut en, &path, &["en".to_string()]).unwrap();
    assert_eq!(r.edges, 12);
    assert!(en.id_of("/c/fr/chien").is_none());
}

#[test]
fn bad_input_is_named_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    // Malformed TSV lines are skipped, counted and named.
    std::fs::write(
        p("t.tsv"),
        "a\tis_a\tb\nbroken line\nc\tis_a\td\tnot-a-number\n\te\tis_a\n",
    )
    .unwrap();
    let (g, how) = semnet::open(p("t.tsv").to_str().unwrap(), None).unwrap();
    let semnet::Opened::Tsv(r) = how else {
        panic!()
    };
    assert_eq!((r.edges, r.skipped, g.edge_count()), (1, 3, 1));
    assert!(
        r.first_skipped[0].contains("t.tsv:2: 1 fields"),
        "{:?}",
        r.first_skipped
    );
    assert!(
        r.first_skipped[1].contains(":3: weight \"not-a-number\""),
        "{:?}",
        r.first_skipped
    );
    // Not UTF-8, empty, missing, unknown format: errors naming the file.
    std::fs::write(p("bin.tsv"), b"a\tis_a\t\xff\n").unwrap();
    let e = semnet::open(p("bin.tsv").to_str().unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bin.tsv") && e.contains("not UTF-8") && e.contains("line 1"),
        "{e}"
    );
    std::fs::write(p("empty.tsv"), "# nothing\n").unwrap();
    let e = semnet::open(p("empty.tsv").to_str().unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty.tsv") && e.contains("no triples"), "{e}");
    let e = semnet::open(p("missing.semnet").to_str().unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.semnet"), "{e}");
    std::fs::write(p("x.xml"), "<x/>").unwrap();
    assert!(semnet::open(p("x.xml").to_str().unwrap(), None)
        .unwrap_err()
        .to_string()
        .contains("unknown network format"));
    // A corrupt or truncated store is refused, never half-read.
    let g = toolkit();
    semnet::store::save(&g, &p("t.semnet")).unwrap();
    let bytes = std::fs::read(p("t.semnet")).unwrap();
    for cut in [4, 20, bytes.len() / 2, bytes.len() - 3] {
        std::fs::write(p("cut.semnet"), &bytes[..cut]).unwrap();
        let e = semnet::store::load(&p("cut.semnet"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut.semnet"), "{e}");
    }
    let mut bad = bytes.clone();
    bad[0] = b'X';
    std::fs::write(p("bad.semnet"), &bad).unwrap();
    assert!(semnet::store::load(&p("bad.semnet"))
        .unwrap_err()
        .to_string()
        .contains("not a ferroformer"));
    // Saved and loaded, the example network is the same.
    let h = semnet::store::load(&p("t.semnet")).unwrap();
    assert_eq!(h.concepts, g.concepts);
    assert_eq!(
        semnet::export::to_tsv(&h, None),
        semnet::export::to_tsv(&g, None)
    );
    // A declaration file with an unknown key or an undeclared inverse names itself.
    std::fs::write(p("rels.toml"), "[teaches]\ninverse = \"learns\"\n").unwrap();
    let e = semnet::open(p("t.tsv").to_str().unwrap(), Some(&p("rels.toml")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rels.toml") && e.contains("learns"), "{e}");
}

#[test]
fn exports_read_back_and_draw() {
    let g = toolkit();
    let dir = tempfile::tempdir().unwrap();
    // TSV export is what TSV import reads: the same triples, labels and glosses.
    let tsv = dir.path().join("again.tsv");
    std::fs::write(&tsv, semnet::export::to_tsv(&g, None)).unwrap();
    let (h, _) = semnet::open(tsv.to_str().unwrap(), None).unwrap();
    assert_eq!(h.concepts, g.concepts);
    let t = |g: &Graph| {
        g.triples()
            .map(|(a, r, b, _)| (a, g.relations.name(r).to_string(), b))
            .collect::<Vec<_>>()
    };
    assert_eq!(t(&h), t(&g));
    // JSON: every concept and edge; a neighbourhood keeps only its own.
    let j = semnet::export::to_json(&g, None);
    assert_eq!(j["concepts"].as_array().unwrap().len(), g.len());
    assert_eq!(j["edges"].as_array().unwrap().len(), g.edge_count());
    assert_eq!(j["relations"]["is_a"]["transitive"], true);
    let lora = g.resolve("LoRA").unwrap();
    let near = semnet::export::neighbourhood(&g, lora, 1, 50);
    assert_eq!(
        ids(&g, near.iter().map(|n| n.0)),
        ["LoRA", "PEFT method", "low-rank update"]
    );
    let idx: Vec<u32> = near.iter().map(|n| n.0).collect();
    let dot = semnet::export::to_dot(&g, Some(&idx), Some(lora));
    assert!(
        dot.starts_with("digraph")
            && dot.contains("label=\"is_a\"")
            && dot.matches(" -> ").count() == 2,
        "{dot}"
    );
    // PNG drawn without Graphviz: a real image.
    let png = dir.path().join("n.png");
    assert_eq!(
        semnet::export::png(&g, &near, &png, false).unwrap(),
        "built-in"
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
}

#[test]
fn extraction_precision_and_recall_on_the_hand_labelled_text() {
    let text = std::fs::read_to_string(common::fixture("semnet/extract_text.txt")).unwrap();
    let gold: Vec<(String, String, String)> =
        std::fs::read_to_string(common::fixture("semnet/extract_gold.tsv"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f[0].to_string(), f[1].to_string(), f[2].to_string())
            })
            .collect();
    assert_eq!(gold.len(), 38);
    let found = semnet::extract::extract(&text);
    let (p, r) = semnet::extract::score(&found, &gold);
    // 31 of 39 found are right, 31 of 38 labelled are found (README of the fixtures).
    assert_eq!(found.len(), 39);
    assert!(
        (p - 31.0 / 39.0).abs() < 1e-12 && (r - 31.0 / 38.0).abs() < 1e-12,
        "precision {p}, recall {r}"
    );
}

#[test]
fn facts_name_the_concepts_of_a_question() {
    let g = toolkit();
    let named = semnet::facts::mentions(&g, "Can a Vision Transformer use LoRA adapters?");
    assert_eq!(ids(&g, named), ["ViT", "LoRA"]);
    let fs = semnet::facts::facts(&g, "Is LoRA costly in memory?", 10);
    let texts: Vec<&str> = fs.iter().map(|f| f.text.as_str()).collect();
    assert!(
        texts.contains(&"LoRA is a kind of PEFT method."),
        "{texts:?}"
    );
    assert!(texts.contains(&"LoRA is small to store."), "{texts:?}");
    assert!(
        !texts.iter().any(|t| t.contains("LoRA is costly")),
        "{texts:?}"
    );
    let p = semnet::facts::prompt(&fs, "Is LoRA costly in memory?");
    assert!(
        p.starts_with("Facts:\n- ") && p.ends_with("Question: Is LoRA costly in memory?"),
        "{p}"
    );
    // WordNet: a word names its first sense.
    let wn = wordnet();
    assert_eq!(
        ids(wn, semnet::facts::mentions(wn, "Why does a dog bark?")),
        ["dog.n.01", "bark.n.01"]
    );
}

// ---- TransE against PyTorch (tests/fixtures/semnet/make_transe_fixture.py) ----

#[test]
fn transe_loss_gradients_and_ranking_match_pytorch() {
    use candle_core::{Device, Tensor};
    use ferroformer::semnet::transe::{self, TransE, TransEConfig};
    let f: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("semnet/transe_torch.json")).unwrap(),
    )
    .unwrap();
    let table = |k: &str| -> (Vec<f32>, usize) {
        let rows: Vec<Vec<f32>> = serde_json::from_value(f[k].clone()).unwrap();
        let w = rows[0].len();
        (rows.concat(), w)
    };
    let triples = |k: &str| -> Vec<[u32; 3]> { serde_json::from_value(f[k].clone()).unwrap() };
    let (e, dim) = table("entities");
    let (r, _) = table("relations");
    let (ne, nr) = (e.len() / dim, r.len() / dim);
    let known: std::collections::HashSet<[u32; 3]> = triples("known").into_iter().collect();
    for p in [1u8, 2] {
        let mut tensors = std::collections::BTreeMap::new();
        tensors.insert(
            transe::ENTITY_KEY.to_string(),
            Tensor::from_vec(e.clone(), (ne, dim), &Device::Cpu).unwrap(),
        );
        tensors.insert(
            transe::RELATION_KEY.to_string(),
            Tensor::from_vec(r.clone(), (nr, dim), &Device::Cpu).unwrap(),
        );
        let mut store =
            ferroformer::nn::ParamStore::from_tensors(tensors, &Device::Cpu, None).unwrap();
        let config = TransEConfig {
            model_type: "transe".into(),
            n_entities: ne,
            n_relations: nr,
            dim,
            norm: p,
            margin: f["margin"].as_f64().unwrap(),
        };
        let m = TransE::new(&config, &mut store).unwrap();
        let want = &f["loss"][p.to_string()];
        let l = m.margin_loss(&triples("pos"), &triples("neg")).unwrap();
        let loss = l.loss.to_scalar::<f32>().unwrap() as f64;
        let lw = want["loss"].as_f64().unwrap();
        assert!(
            (loss - lw).abs() <= 1e-5 * lw.abs(),
            "p={p}: loss {loss} vs PyTorch {lw}"
        );
        let grads = l.loss.backward().unwrap();
        for (key, name) in [
            (transe::ENTITY_KEY, "grad_entities"),
            (transe::RELATION_KEY, "grad_relations"),
        ] {
            let g: Vec<f32> = grads
                .get(store.vars()[key].as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w: Vec<Vec<f64>> = serde_json::from_value(want[name].clone()).unwrap();
            let w = w.concat();
            let scale = w.iter().fold(0f64, |a, x| a.max(x.abs()));
            for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                assert!(
                    (*a as f64 - b).abs() <= 1e-5 * scale,
                    "p={p} {name}[{i}]: {a} vs PyTorch {b}"
                );
            }
        }
        let want = &f["ranking"][p.to_string()];
        let got = transe::rank(&m, &triples("test"), &known).unwrap();
        assert_eq!(got.queries as u64, want["queries"].as_u64().unwrap());
        for (ours, key) in [
            (got.mrr, "mrr"),
            (got.mean_rank, "mean_rank"),
            (got.hits1, "hits1"),
            (got.hits3, "hits3"),
            (got.hits10, "hits10"),
        ] {
            let theirs = want[key].as_f64().unwrap();
            assert!(
                (ours - theirs).abs() < 1e-12,
                "p={p} {key}: {ours} vs {theirs}"
            );
        }
    }
}
