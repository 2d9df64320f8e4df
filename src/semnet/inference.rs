//! Inference over a network: transitive closure, inherited properties with exceptions,
//! shortest paths between concepts, and cycle checks for relations declared acyclic.

use crate::semnet::graph::{unique, Graph, Hop};
use crate::semnet::relation::RelId;
use crate::{Error, Result};
use petgraph::Direction;
use std::collections::VecDeque;

/// A concept reached by closure, with its distance in hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    pub concept: u32,
    pub distance: u32,
}

/// Direction of a closure: along the relations (ancestors) or against them (descendants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    Up,
    Down,
}

impl Graph {
    /// The concepts one hop from `c` along `rels` (or against them, going down), each once.
    pub fn step(&self, c: u32, rels: &[RelId], toward: Toward) -> Vec<Hop> {
        let mut out: Vec<Hop> = Vec::new();
        for &r in rels {
            // Against r = along its inverse; a symmetric relation is its own inverse.
            let hops = match toward {
                Toward::Down if !self.relations.get(r).symmetric => self.reverse_hops(c, r),
                _ => self.hops(c, r),
            };
            out.extend(hops);
        }
        unique(out)
    }

    /// Concepts with an `r` edge to `c`, or that `c` points to with r's inverse.
    fn reverse_hops(&self, c: u32, r: RelId) -> Vec<Hop> {
        let inv = self.relations.inverse(r);
        let mut found = self.hops_where(c, Direction::Incoming, |x| x == r);
        found.extend(self.hops_where(c, Direction::Outgoing, |x| Some(x) == inv));
        unique(found.into_iter().map(|h| Hop {
            rel: r,
            reversed: true,
            ..h
        }))
    }

    /// Breadth-first transitive closure of `c` over `rels` (`c` itself excluded), nearest
    /// first; `max_depth` 0 means unlimited. Cycles are cut, never followed twice.
    pub fn closure(&self, c: u32, rels: &[RelId], toward: Toward, max_depth: u32) -> Vec<Reached> {
        let mut seen = vec![false; self.len()];
        seen[c as usize] = true;
        let mut queue = VecDeque::from([(c, 0u32)]);
        let mut out = Vec::new();
        while let Some((x, d)) = queue.pop_front() {
            if max_depth > 0 && d >= max_depth {
                continue;
            }
            for h in self.step(x, rels, toward) {
                if !seen[h.to as usize] {
                    seen[h.to as usize] = true;
                    out.push(Reached {
                        concept: h.to,
                        distance: d + 1,
                    });
                    queue.push_back((h.to, d + 1));
                }
            }
        }
        out
    }

    /// Relations in `rels` that are declared acyclic but have a cycle: each with one cycle,
    /// as concept indices (first repeated at the end).
    pub fn cycles(&self, rels: &[RelId]) -> Vec<(RelId, Vec<u32>)> {
        let mut found = Vec::new();
        for &r in rels {
            if !self.relations.get(r).acyclic {
                continue;
            }
            if let Some(cycle) = self.find_cycle(&[r]) {
                found.push((r, cycle));
            }
        }
        found
    }

    /// One cycle along `rels` (stored edges and inverses read forwards), if any: iterative
    /// depth-first search with an on-stack mark.
    pub fn find_cycle(&self, rels: &[RelId]) -> Option<Vec<u32>> {
        // 0 unvisited, 1 on the stack, 2 done.
        let mut state = vec![0u8; self.len()];
        for start in 0..self.len() as u32 {
            if state[start as usize] != 0 {
                continue;
            }
            let mut stack: Vec<(u32, Vec<Hop>, usize)> = Vec::new();
            state[start as usize] = 1;
            stack.push((start, self.step(start, rels, Toward::Up), 0));
            while let Some((node, hops, i)) = stack.last_mut() {
                if *i == hops.len() {
                    state[*node as usize] = 2;
                    stack.pop();
                    continue;
                }
                let to = hops[*i].to;
                *i += 1;
                match state[to as usize] {
                    0 => {
                        state[to as usize] = 1;
                        let next = self.step(to, rels, Toward::Up);
                        stack.push((to, next, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|(n, _, _)| *n == to).unwrap();
                        let mut cycle: Vec<u32> =
                            stack[from..].iter().map(|(n, _, _)| *n).collect();
                        cycle.push(to);
                        return Some(cycle);
                    }
                    _ => {}
                }
            }
        }
        None
    }

    /// Shortest chain of relations between `a` and `b`, edges read either way; `rels` empty
    /// means every relation. Returns the concepts and the hops (each with its direction).
    pub fn path(&self, a: u32, b: u32, rels: &[RelId], max_len: u32) -> Option<Vec<Hop>> {
        if a == b {
            return Some(Vec::new());
        }
        let mut prev: Vec<Option<Hop>> = vec![None; self.len()];
        let mut seen = vec![false; self.len()];
        seen[a as usize] = true;
        let mut queue = VecDeque::from([(a, 0u32)]);
        let allowed = |r: RelId| rels.is_empty() || rels.contains(&r);
        while let Some((x, d)) = queue.pop_front() {
            if max_len > 0 && d >= max_len {
                continue;
            }
            let mut next = self.hops_where(x, Direction::Outgoing, allowed);
            next.extend(self.hops_where(x, Direction::Incoming, allowed));
            for h in next {
                if seen[h.to as usize] {
                    continue;
                }
                seen[h.to as usize] = true;
                prev[h.to as usize] = Some(Hop { to: x, ..h });
                if h.to == b {
                    // Walk back: each stored hop holds where it came from.
                    let mut hops = Vec::new();
                    let mut at = b;
                    while at != a {
                        let p = prev[at as usize].expect("on the path");
                        hops.push(Hop { to: at, ..p });
                        at = p.to;
                    }
                    hops.reverse();
                    return Some(hops);
                }
                queue.push_back((h.to, d + 1));
            }
        }
        None
    }

    /// What `c` inherits along the taxonomic relations for the inheritable relations: each
    /// (relation, value, from whom, distance), the nearest statement winning. A nearer
    /// negation ("penguin not_capable_of fly") blocks the value from farther up; its own
    /// statements count at distance 0.
    pub fn inherited(&self, c: u32) -> Vec<Inherited> {
        let tax = self.relations.taxonomic();
        let mut chain = vec![Reached {
            concept: c,
            distance: 0,
        }];
        chain.extend(self.closure(c, &tax, Toward::Up, 0));
        let inheritable: Vec<RelId> = self
            .relations
            .iter()
            .filter(|(_, r)| r.inheritable)
            .map(|(i, _)| i)
            .collect();
        let mut out: Vec<Inherited> = Vec::new();
        // (relation, value) already settled, by a statement or a negation.
        let mut settled: Vec<(RelId, u32)> = Vec::new();
        for reached in chain {
            for &r in &inheritable {
                for h in self.hops(reached.concept, r) {
                    if !settled.contains(&(r, h.to)) {
                        settled.push((r, h.to));
                        out.push(Inherited {
                            rel: r,
                            value: h.to,
                            from: reached.concept,
                            distance: reached.distance,
                        });
                    }
                }
                for &neg in self.relations.negated_by(r) {
                    for h in self.hops(reached.concept, neg) {
                        settled.push((r, h.to));
                    }
                }
            }
        }
        out
    }

    /// Whether `c` holds `rel` to `value`, by its own statement or by inheritance.
    pub fn holds(&self, c: u32, rel: RelId, value: u32) -> Result<bool> {
        if !self.relations.get(rel).inheritable {
            return Err(Error::Data(format!(
                "relation {} is not declared inheritable",
                self.relations.name(rel)
            )));
        }
        Ok(self
            .inherited(c)
            .iter()
            .any(|i| i.rel == rel && i.value == value))
    }
}

/// A property a concept has, stated on it or on an ancestor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inherited {
    pub rel: RelId,
    pub value: u32,
    pub from: u32,
    pub distance: u32,
}
