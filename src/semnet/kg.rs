//! Link-prediction data: (head, relation, tail) triples over numbered entities and relations,
//! split into train/valid/test and written as TSV (`train.txt`, `valid.txt`, `test.txt`, one
//! `head<TAB>relation<TAB>tail` per line, as WN18RR ships), and a WN18RR-style split built
//! from WordNet 3.0.

use crate::rng::Rng;
use crate::semnet::graph::Graph;
use crate::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// A triple of ids: head entity, relation, tail entity.
pub type Triple = [u32; 3];

/// Entities, relations and the three splits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KgSplit {
    pub entities: Vec<String>,
    pub relations: Vec<String>,
    pub train: Vec<Triple>,
    pub valid: Vec<Triple>,
    pub test: Vec<Triple>,
}

/// WN18RR's relations (Dettmers et al., 2018: WN18 with the inverse relations removed) as
/// WordNet pointer relations, with WN18RR's names. Among nouns, also_see, verb_group and
/// similar_to do not occur.
pub const WN18RR_RELATIONS: &[(&str, &str)] = &[
    ("hypernym", "_hypernym"),
    ("instance_hypernym", "_instance_hypernym"),
    ("member_meronym", "_member_meronym"),
    ("part_meronym", "_has_part"),
    ("domain_topic", "_synset_domain_topic_of"),
    ("member_of_domain_usage", "_member_of_domain_usage"),
    ("member_of_domain_region", "_member_of_domain_region"),
    (
        "derivationally_related_form",
        "_derivationally_related_form",
    ),
    ("also_see", "_also_see"),
    ("verb_group", "_verb_group"),
    ("similar_to", "_similar_to"),
];

/// The number of `name`, numbering it next if new.
fn id(map: &mut HashMap<String, u32>, list: &mut Vec<String>, name: &str) -> u32 {
    *map.entry(name.to_string()).or_insert_with(|| {
        list.push(name.to_string());
        (list.len() - 1) as u32
    })
}

/// What building a split kept and dropped.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct SplitReport {
    pub triples: usize,
    pub train: usize,
    pub valid: usize,
    pub test: usize,
    /// Valid/test triples dropped because an entity never occurs in training (it would
    /// have no trained embedding).
    pub dropped_unseen: usize,
}

/// How a network's triples become a split.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitOptions {
    pub seed: u64,
    pub train_frac: f64,
    pub valid_frac: f64,
    /// Keep only the k-core first (see [`KgSplit::min_degree`]); 1 keeps all.
    pub min_degree: usize,
    /// WordNet: only noun-to-noun triples (the default); otherwise every part of speech, as
    /// WN18RR has.
    pub nouns_only: bool,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions {
            seed: 0,
            train_frac: 0.9,
            valid_frac: 0.05,
            min_degree: 1,
            nouns_only: true,
        }
    }
}

impl KgSplit {
    /// The WN18RR-style split of WordNet: the WN18RR relations (inverses removed) between
    /// noun synsets (or all synsets), with WN18RR's relation names, shuffled with the seed
    /// and cut train/valid/rest; valid and test triples with an entity unseen in training
    /// are dropped (counted in the report).
    pub fn wordnet(g: &Graph, o: &SplitOptions) -> Result<(Self, SplitReport)> {
        let rel_ids: Vec<(u16, &str)> = WN18RR_RELATIONS
            .iter()
            .filter_map(|(ours, theirs)| g.relations.id(ours).map(|i| (i, *theirs)))
            .collect();
        let mut named: Vec<(String, String, String)> = Vec::new();
        for (h, r, t, _) in g.triples() {
            let nouns = g.concept(h).pos == Some('n') && g.concept(t).pos == Some('n');
            if o.nouns_only && !nouns {
                continue;
            }
            if let Some(&(_, name)) = rel_ids.iter().find(|(i, _)| *i == r) {
                named.push((
                    g.concept(h).id.clone(),
                    name.to_string(),
                    g.concept(t).id.clone(),
                ));
            }
        }
        if named.is_empty() {
            return Err(Error::Data(
                "the network has no WN18RR relation to split".into(),
            ));
        }
        Self::split(Self::min_degree(named, o.min_degree), o)
    }

    /// The split a network calls for: WordNet's (synsets with parts of speech and a
    /// hypernym relation) is [`KgSplit::wordnet`]; any other network gives all its triples.
    pub fn from_graph(g: &Graph, o: &SplitOptions) -> Result<(Self, SplitReport)> {
        let wordnet =
            g.relations.id("hypernym").is_some() && g.concepts.iter().any(|c| c.pos == Some('n'));
        if wordnet {
            return Self::wordnet(g, o);
        }
        let named: Vec<(String, String, String)> = g
            .triples()
            .map(|(h, r, t, _)| {
                (
                    g.concept(h).id.clone(),
                    g.relations.name(r).to_string(),
                    g.concept(t).id.clone(),
                )
            })
            .collect();
        let named = Self::min_degree(named, o.min_degree);
        if named.is_empty() {
            return Err(Error::Data("the network has no triples to embed".into()));
        }
        Self::split(named, o)
    }

    /// Keeps the triples whose two entities each take part in at least `k` of the kept
    /// triples (the k-core, found by repeated removal): WN18 kept only well-connected
    /// synsets, and an entity met once is unpredictable once its one triple is held out.
    pub fn min_degree(
        named: Vec<(String, String, String)>,
        k: usize,
    ) -> Vec<(String, String, String)> {
        let mut named = named;
        loop {
            let mut deg: HashMap<&str, usize> = HashMap::new();
            for (h, _, t) in &named {
                *deg.entry(h).or_default() += 1;
                *deg.entry(t).or_default() += 1;
            }
            let keep: Vec<bool> = named
                .iter()
                .map(|(h, _, t)| deg[h.as_str()] >= k && deg[t.as_str()] >= k)
                .collect();
            if keep.iter().all(|&x| x) {
                return named;
            }
            let mut it = keep.into_iter();
            named.retain(|_| it.next().unwrap_or(false));
        }
    }

    /// Numbers named triples (entities and relations in order of first appearance in the
    /// shuffled list) and splits them.
    pub fn split(
        mut named: Vec<(String, String, String)>,
        o: &SplitOptions,
    ) -> Result<(Self, SplitReport)> {
        let (seed, train_frac, valid_frac) = (o.seed, o.train_frac, o.valid_frac);
        if !(0.0 < train_frac
            && train_frac < 1.0
            && valid_frac >= 0.0
            && train_frac + valid_frac <= 1.0)
        {
            return Err(Error::Config(format!(
                "split fractions train {train_frac}, valid {valid_frac} must be in (0, 1) and sum to at most 1"
            )));
        }
        named.sort();
        named.dedup();
        Rng::new(seed).shuffle(&mut named);
        let n = named.len();
        let n_train = (n as f64 * train_frac).round() as usize;
        let n_valid = (n as f64 * valid_frac).round() as usize;
        let mut s = KgSplit::default();
        let mut ents: HashMap<String, u32> = HashMap::new();
        let mut rels: HashMap<String, u32> = HashMap::new();
        let mut report = SplitReport {
            triples: n,
            ..Default::default()
        };
        for (i, (h, r, t)) in named.iter().enumerate() {
            if i >= n_train
                && (!ents.contains_key(h) || !ents.contains_key(t) || !rels.contains_key(r))
            {
                report.dropped_unseen += 1;
                continue;
            }
            let tr = [
                id(&mut ents, &mut s.entities, h),
                id(&mut rels, &mut s.relations, r),
                id(&mut ents, &mut s.entities, t),
            ];
            if i < n_train {
                s.train.push(tr);
            } else if i < n_train + n_valid {
                s.valid.push(tr);
            } else {
                s.test.push(tr);
            }
        }
        report.train = s.train.len();
        report.valid = s.valid.len();
        report.test = s.test.len();
        Ok((s, report))
    }

    /// Every known triple (all splits): the filter of filtered ranking.
    pub fn known(&self) -> HashSet<Triple> {
        self.train
            .iter()
            .chain(&self.valid)
            .chain(&self.test)
            .copied()
            .collect()
    }

    /// Writes `train.txt`, `valid.txt`, `test.txt` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (name, set) in [
            ("train.txt", &self.train),
            ("valid.txt", &self.valid),
            ("test.txt", &self.test),
        ] {
            let mut s = String::with_capacity(set.len() * 40);
            for [h, r, t] in set {
                s.push_str(&format!(
                    "{}\t{}\t{}\n",
                    self.entities[*h as usize],
                    self.relations[*r as usize],
                    self.entities[*t as usize]
                ));
            }
            crate::io::atomic::write_atomic(&dir.join(name), s.as_bytes())?;
        }
        Ok(())
    }

    /// Reads a split directory (`train.txt`, `valid.txt`, `test.txt`). Entities and relations
    /// are numbered in order of first appearance, training first; malformed lines are errors
    /// naming file and line.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut s = KgSplit::default();
        let mut ents: HashMap<String, u32> = HashMap::new();
        let mut rels: HashMap<String, u32> = HashMap::new();
        for name in ["train.txt", "valid.txt", "test.txt"] {
            let path = dir.join(name);
            let text = crate::data::read_text(&path)?;
            let mut set = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let f: Vec<&str> = line.split('\t').map(str::trim).collect();
                if f.len() != 3 || f.iter().any(|x| x.is_empty()) {
                    return Err(Error::format(
                        &path,
                        format!("line {}: expected head<TAB>relation<TAB>tail", i + 1),
                    ));
                }
                set.push([
                    id(&mut ents, &mut s.entities, f[0]),
                    id(&mut rels, &mut s.relations, f[1]),
                    id(&mut ents, &mut s.entities, f[2]),
                ]);
            }
            match name {
                "train.txt" => s.train = set,
                "valid.txt" => s.valid = set,
                _ => s.test = set,
            }
        }
        if s.train.is_empty() {
            return Err(Error::format(dir.join("train.txt"), "no training triples"));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: &str, r: &str, x: &str) -> (String, String, String) {
        (h.into(), r.into(), x.into())
    }

    #[test]
    fn k_core_removes_weakly_connected_entities_repeatedly() {
        // d hangs on c by one triple; once d goes, c has one triple left and goes too.
        let named = vec![
            t("a", "r", "b"),
            t("b", "r", "a"),
            t("b", "s", "c"),
            t("c", "s", "d"),
        ];
        let kept = KgSplit::min_degree(named.clone(), 2);
        assert_eq!(kept, [t("a", "r", "b"), t("b", "r", "a")]);
        assert_eq!(KgSplit::min_degree(named.clone(), 1), named);
    }

    #[test]
    fn split_is_seeded_counts_unseen_and_round_trips() {
        let named: Vec<_> = (0..200)
            .map(|i| {
                t(
                    &format!("e{}", i % 37),
                    if i % 3 == 0 { "r" } else { "s" },
                    &format!("e{}", (i * 7 + 1) % 41),
                )
            })
            .collect();
        let o = SplitOptions::default();
        let (a, ra) = KgSplit::split(named.clone(), &o).unwrap();
        let (b, _) = KgSplit::split(named.clone(), &o).unwrap();
        assert_eq!(a, b);
        let (c, _) = KgSplit::split(
            named.clone(),
            &SplitOptions {
                seed: 1,
                ..o.clone()
            },
        )
        .unwrap();
        assert_ne!(a.train, c.train);
        assert_eq!(
            ra.train + ra.valid + ra.test + ra.dropped_unseen,
            ra.triples
        );
        assert_eq!(ra.train, 180);
        // Every valid/test entity occurs in training.
        let seen: std::collections::HashSet<u32> =
            a.train.iter().flat_map(|x| [x[0], x[2]]).collect();
        assert!(a
            .valid
            .iter()
            .chain(&a.test)
            .all(|x| seen.contains(&x[0]) && seen.contains(&x[2])));
        let dir = tempfile::tempdir().unwrap();
        a.save(dir.path()).unwrap();
        assert_eq!(KgSplit::load(dir.path()).unwrap(), a);
        let bad = KgSplit::split(
            named,
            &SplitOptions {
                train_frac: 1.5,
                ..o
            },
        );
        assert!(bad.unwrap_err().to_string().contains("split fractions"));
    }
}
