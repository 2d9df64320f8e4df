//! Taxonomy measures as WordNet users know them, with NLTK's exact definitions
//! (`nltk.corpus.reader.wordnet.Synset`): depth, hypernym paths, lowest common hypernyms,
//! shortest path distance, and path, Wu-Palmer and Leacock-Chodorow similarity, including
//! NLTK's `simulate_root` (a fake `*ROOT*` above every top node, for taxonomies with several
//! roots). The taxonomy is the network's taxonomic relations (WordNet: hypernym and instance
//! hypernym, read as NLTK reads them).

use crate::semnet::graph::Graph;
use crate::semnet::inference::Toward;
use crate::{Error, Result};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

/// A node of the taxonomy: a concept, or NLTK's simulated root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    Concept(u32),
    Root,
}

const ROOT_NAME: &str = "*ROOT*";

/// Which measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Path,
    WuPalmer,
    LeacockChodorow,
}

impl std::str::FromStr for Measure {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "path" => Ok(Measure::Path),
            "wup" | "wu-palmer" => Ok(Measure::WuPalmer),
            "lch" | "leacock-chodorow" => Ok(Measure::LeacockChodorow),
            _ => Err(Error::Config(format!(
                "unknown similarity measure {s:?} (known: path, wup, lch)"
            ))),
        }
    }
}

/// The taxonomy of a graph, with depths cached.
pub struct Taxonomy<'g> {
    pub graph: &'g Graph,
    parents: Vec<Vec<u32>>,
    max_depth: RefCell<Vec<u32>>,
    min_depth: RefCell<Vec<u32>>,
    /// Leacock-Chodorow's taxonomy depth per (part of speech, simulated root).
    lch_depth: RefCell<HashMap<(Option<char>, bool), u32>>,
    /// Whether concepts without a part of speech have several top nodes.
    multi_rooted: bool,
}

const UNKNOWN: u32 = u32::MAX;

impl<'g> Taxonomy<'g> {
    pub fn new(graph: &'g Graph) -> Result<Self> {
        let tax = graph.relations.taxonomic();
        if tax.is_empty() {
            return Err(Error::Data(
                "the network declares no taxonomic (is-a) relation".into(),
            ));
        }
        let parents: Vec<Vec<u32>> = (0..graph.len() as u32)
            .map(|c| {
                graph
                    .step(c, &tax, Toward::Up)
                    .iter()
                    .map(|h| h.to)
                    .collect()
            })
            .collect();
        // Top nodes among the concepts the taxonomy covers (someone's parent).
        let mut has_child = vec![false; graph.len()];
        for ps in &parents {
            for &p in ps {
                has_child[p as usize] = true;
            }
        }
        let tops = (0..graph.len())
            .filter(|&c| graph.concepts[c].pos.is_none() && parents[c].is_empty() && has_child[c])
            .count();
        Ok(Taxonomy {
            graph,
            parents,
            max_depth: RefCell::new(vec![UNKNOWN; graph.len()]),
            min_depth: RefCell::new(vec![UNKNOWN; graph.len()]),
            lch_depth: RefCell::new(HashMap::new()),
            multi_rooted: tops > 1,
        })
    }

    pub fn parents(&self, c: u32) -> &[u32] {
        &self.parents[c as usize]
    }

    fn name(&self, n: Node) -> &str {
        match n {
            Node::Concept(c) => &self.graph.concept(c).id,
            Node::Root => ROOT_NAME,
        }
    }

    /// NLTK's `_needs_root`: WordNet's nouns share one top node, its other parts of speech
    /// do not. A concept without a part of speech needs the simulated root when its network's
    /// taxonomy has several top nodes.
    pub fn needs_root(&self, c: u32) -> bool {
        match self.graph.concept(c).pos {
            Some(p) => p != 'n',
            None => self.multi_rooted,
        }
    }

    fn cycle_error(&self, at: u32) -> Error {
        let cycle = self
            .graph
            .find_cycle(&self.graph.relations.taxonomic())
            .unwrap_or_else(|| vec![at]);
        let names: Vec<&str> = cycle
            .iter()
            .map(|&c| self.graph.concept(c).id.as_str())
            .collect();
        Error::Data(format!("the taxonomy has a cycle: {}", names.join(" -> ")))
    }

    /// Longest (`longest`) or shortest number of taxonomic hops from `c` to a top node.
    fn depth(&self, c: u32, longest: bool) -> Result<u32> {
        let cache = if longest {
            &self.max_depth
        } else {
            &self.min_depth
        };
        if cache.borrow()[c as usize] != UNKNOWN {
            return Ok(cache.borrow()[c as usize]);
        }
        let mut on_stack = vec![false; 0];
        let mut stack = vec![(c, 0usize)];
        on_stack.resize(self.graph.len(), false);
        on_stack[c as usize] = true;
        while let Some(&mut (x, ref mut i)) = stack.last_mut() {
            let ps = &self.parents[x as usize];
            if *i < ps.len() {
                let p = ps[*i];
                *i += 1;
                if cache.borrow()[p as usize] == UNKNOWN {
                    if on_stack[p as usize] {
                        return Err(self.cycle_error(p));
                    }
                    on_stack[p as usize] = true;
                    stack.push((p, 0));
                }
                continue;
            }
            let d = ps.iter().map(|&p| cache.borrow()[p as usize] + 1);
            let d = if longest { d.max() } else { d.min() }.unwrap_or(0);
            cache.borrow_mut()[x as usize] = d;
            on_stack[x as usize] = false;
            stack.pop();
        }
        Ok(cache.borrow()[c as usize])
    }

    /// NLTK's `max_depth`: the longest hypernym path to a top node (the root: 0).
    pub fn max_depth(&self, n: Node) -> Result<u32> {
        match n {
            Node::Concept(c) => self.depth(c, true),
            Node::Root => Ok(0),
        }
    }

    /// NLTK's `min_depth`.
    pub fn min_depth(&self, n: Node) -> Result<u32> {
        match n {
            Node::Concept(c) => self.depth(c, false),
            Node::Root => Ok(0),
        }
    }

    /// NLTK's `hypernym_paths`: every path from a top node down to `c`, sorted by names.
    pub fn hypernym_paths(&self, c: u32) -> Result<Vec<Vec<u32>>> {
        self.depth(c, true)?; // fails on a cycle before the recursion could loop
        fn walk(t: &Taxonomy, c: u32, out: &mut Vec<Vec<u32>>) {
            let ps = t.parents(c);
            if ps.is_empty() {
                out.push(vec![c]);
            }
            for &p in ps {
                let mut sub = Vec::new();
                walk(t, p, &mut sub);
                for mut path in sub {
                    path.push(c);
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(self, c, &mut out);
        let key = |p: &Vec<u32>| -> Vec<String> {
            p.iter()
                .map(|&c| self.graph.concept(c).id.clone())
                .collect()
        };
        out.sort_by_key(key);
        Ok(out)
    }

    /// NLTK's `_shortest_hypernym_paths`: breadth-first hop counts from `n` to itself and
    /// every ancestor, plus the root one beyond the farthest when simulated.
    fn distances(&self, n: Node, simulate_root: bool) -> HashMap<Node, u32> {
        let c = match n {
            Node::Root => return HashMap::from([(Node::Root, 0)]),
            Node::Concept(c) => c,
        };
        let mut out = HashMap::new();
        let mut queue = VecDeque::from([(c, 0u32)]);
        while let Some((x, d)) = queue.pop_front() {
            if out.contains_key(&Node::Concept(x)) {
                continue;
            }
            out.insert(Node::Concept(x), d);
            for &p in self.parents(x) {
                queue.push_back((p, d + 1));
            }
        }
        if simulate_root {
            let far = out.values().copied().max().unwrap_or(0);
            out.insert(Node::Root, far + 1);
        }
        out
    }

    /// NLTK's `shortest_path_distance`: hops through the nearest common ancestor (None when
    /// there is none).
    pub fn shortest_path_distance(&self, a: Node, b: Node, simulate_root: bool) -> Option<u32> {
        if a == b {
            return Some(0);
        }
        let d1 = self.distances(a, simulate_root);
        let d2 = self.distances(b, simulate_root);
        d1.iter()
            .filter_map(|(n, x)| d2.get(n).map(|y| x + y))
            .min()
    }

    /// The node and its ancestors.
    fn ancestors_or_self(&self, c: u32) -> Vec<u32> {
        let mut seen = vec![c];
        let mut i = 0;
        while i < seen.len() {
            for &p in self.parents(seen[i]) {
                if !seen.contains(&p) {
                    seen.push(p);
                }
            }
            i += 1;
        }
        seen
    }

    /// NLTK's `lowest_common_hypernyms`: the common ancestors (either node included) of the
    /// greatest depth, sorted by name; depth is `min_depth` when `use_min_depth`, else
    /// `max_depth`.
    pub fn lowest_common_hypernyms(
        &self,
        a: u32,
        b: u32,
        simulate_root: bool,
        use_min_depth: bool,
    ) -> Result<Vec<Node>> {
        let bs = self.ancestors_or_self(b);
        let mut common: Vec<Node> = self
            .ancestors_or_self(a)
            .into_iter()
            .filter(|x| bs.contains(x))
            .map(Node::Concept)
            .collect();
        if simulate_root {
            common.push(Node::Root);
        }
        let depth = |n: Node| {
            if use_min_depth {
                self.min_depth(n)
            } else {
                self.max_depth(n)
            }
        };
        let mut best = None;
        for &n in &common {
            let d = depth(n)?;
            best = best.max(Some(d));
        }
        let Some(best) = best else {
            return Ok(Vec::new());
        };
        let mut lch = Vec::new();
        for n in common {
            if depth(n)? == best {
                lch.push(n);
            }
        }
        lch.sort_by(|x, y| self.name(*x).cmp(self.name(*y)));
        Ok(lch)
    }

    /// NLTK's `path_similarity`: 1 / (shortest path + 1).
    pub fn path_similarity(&self, a: u32, b: u32, simulate_root: bool) -> Option<f64> {
        let root = simulate_root && (self.needs_root(a) || self.needs_root(b));
        self.shortest_path_distance(Node::Concept(a), Node::Concept(b), root)
            .map(|d| 1.0 / (d as f64 + 1.0))
    }

    /// NLTK's `wup_similarity`: 2·depth(lcs) / (len1 + len2 + 2·depth(lcs)), with the lcs
    /// chosen by minimum depth as NLTK 2 did, and depth(lcs) = its max depth + 1.
    pub fn wup_similarity(&self, a: u32, b: u32, simulate_root: bool) -> Result<Option<f64>> {
        let root = simulate_root && (self.needs_root(a) || self.needs_root(b));
        let subsumers = self.lowest_common_hypernyms(a, b, root, true)?;
        let Some(&first) = subsumers.first() else {
            return Ok(None);
        };
        let subsumer = if subsumers.contains(&Node::Concept(a)) {
            Node::Concept(a)
        } else {
            first
        };
        let depth = self.max_depth(subsumer)? + 1;
        let len1 = self.shortest_path_distance(Node::Concept(a), subsumer, root);
        let len2 = self.shortest_path_distance(Node::Concept(b), subsumer, root);
        Ok(match (len1, len2) {
            (Some(l1), Some(l2)) => {
                let d = depth as f64;
                Some(2.0 * d / ((l1 + depth) as f64 + (l2 + depth) as f64))
            }
            _ => None,
        })
    }

    /// The deepest max depth among concepts of `pos` (+1 with a simulated root): NLTK's
    /// `_compute_max_depth`.
    pub fn taxonomy_depth(&self, pos: Option<char>, simulate_root: bool) -> Result<u32> {
        if let Some(&d) = self.lch_depth.borrow().get(&(pos, simulate_root)) {
            return Ok(d);
        }
        // NLTK walks all_synsets(pos): for adjectives that includes the satellites.
        let same = |p: Option<char>| match pos {
            Some('a') => matches!(p, Some('a') | Some('s')),
            _ => p == pos,
        };
        let mut depth = 0;
        for c in 0..self.graph.len() as u32 {
            if same(self.graph.concept(c).pos) {
                depth = depth.max(self.depth(c, true)?);
            }
        }
        if simulate_root {
            depth += 1;
        }
        self.lch_depth
            .borrow_mut()
            .insert((pos, simulate_root), depth);
        Ok(depth)
    }

    /// NLTK's `lch_similarity`: -log((shortest path + 1) / (2·taxonomy depth)).
    pub fn lch_similarity(&self, a: u32, b: u32, simulate_root: bool) -> Result<Option<f64>> {
        let (pa, pb) = (self.graph.concept(a).pos, self.graph.concept(b).pos);
        if pa != pb {
            return Err(Error::Data(format!(
                "Leacock-Chodorow similarity needs one part of speech: {} and {} differ",
                self.graph.concept(a).id,
                self.graph.concept(b).id
            )));
        }
        let need_root = self.needs_root(a);
        let depth = self.taxonomy_depth(pa, need_root)?;
        let d = self.shortest_path_distance(
            Node::Concept(a),
            Node::Concept(b),
            simulate_root && need_root,
        );
        Ok(match d {
            Some(d) if depth > 0 => Some(-((d as f64 + 1.0) / (2.0 * depth as f64)).ln()),
            _ => None,
        })
    }

    /// One measure by name, NLTK's defaults (`simulate_root=True`).
    pub fn similarity(&self, m: Measure, a: u32, b: u32) -> Result<Option<f64>> {
        match m {
            Measure::Path => Ok(self.path_similarity(a, b, true)),
            Measure::WuPalmer => self.wup_similarity(a, b, true),
            Measure::LeacockChodorow => self.lch_similarity(a, b, true),
        }
    }
}
