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
