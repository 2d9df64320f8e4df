//! Writing networks out: JSON, TSV triples (what [`crate::semnet::import::tsv`] reads back),
//! Graphviz DOT, and a PNG of a concept's neighbourhood (rendered by Graphviz's `dot` when it
//! is installed, else drawn here).

use crate::io::atomic::write_atomic;
use crate::semnet::graph::Graph;
use crate::{Error, Result};
use serde_json::json;
use std::collections::VecDeque;
use std::path::Path;

/// Concepts within `depth` hops of `center` (edges read both ways), nearest first, at most
/// `max_nodes`; with their distances.
pub fn neighbourhood(g: &Graph, center: u32, depth: u32, max_nodes: usize) -> Vec<(u32, u32)> {
    let mut dist = vec![u32::MAX; g.len()];
    dist[center as usize] = 0;
    let mut out = vec![(center, 0)];
    let mut queue = VecDeque::from([center]);
    while let Some(x) = queue.pop_front() {
        let d = dist[x as usize];
        if d >= depth {
            continue;
        }
        for (_, other, _) in g.all_edges(x) {
            if dist[other as usize] == u32::MAX {
                if out.len() >= max_nodes {
                    return out;
                }
                dist[other as usize] = d + 1;
                out.push((other, d + 1));
                queue.push_back(other);
            }
        }
    }
    out
}

/// The edges among `nodes` (all edges when `nodes` is None), as (head, relation, tail, weight,
/// source).
fn edges_among<'a>(
    g: &'a Graph,
    nodes: Option<&'a [bool]>,
) -> impl Iterator<Item = (u32, u16, u32, f32, u16)> + 'a {
    g.triples()
        .filter(move |(h, _, t, _)| nodes.is_none_or(|m| m[*h as usize] && m[*t as usize]))
        .map(|(h, r, t, e)| (h, r, t, e.weight, e.source))
}

fn mask(g: &Graph, nodes: &[u32]) -> Vec<bool> {
    let mut m = vec![false; g.len()];
    for &n in nodes {
        m[n as usize] = true;
    }
    m
}

/// The network (or the part on `nodes`) as one JSON document: relation declarations,
/// concepts, edges.
pub fn to_json(g: &Graph, nodes: Option<&[u32]>) -> serde_json::Value {
    let m = nodes.map(|n| mask(g, n));
    let concepts: Vec<_> = g
        .concepts
        .iter()
        .enumerate()
        .filter(|(i, _)| m.as_ref().is_none_or(|m| m[*i]))
        .map(|(_, c)| {
            json!({"id": c.id, "labels": c.labels, "gloss": c.gloss, "pos": c.pos.map(String::from)})
        })
        .collect();
    let edges: Vec<_> = edges_among(g, m.as_deref())
        .map(|(h, r, t, w, s)| {
            json!({"head": g.concept(h).id, "relation": g.relations.name(r), "tail": g.concept(t).id,
                   "weight": w, "source": g.sources.get(s as usize)})
        })
        .collect();
    let relations: serde_json::Map<String, serde_json::Value> = g
        .relations
        .iter()
        .map(|(_, r)| {
            (
                r.name.clone(),
                serde_json::to_value(r).expect("relation serializes"),
            )
        })
        .collect();
    json!({"relations": relations, "concepts": concepts, "edges": edges})
}

/// TSV triples, `head relation tail weight`, then the labels beyond the first and the glosses
/// as `label`/`gloss` lines, so [`crate::semnet::import::tsv`] reads the network back.
pub fn to_tsv(g: &Graph, nodes: Option<&[u32]>) -> String {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    let m = nodes.map(|n| mask(g, n));
    let mut s = String::from("# head\trelation\ttail\tweight\n");
    for (h, r, t, w, _) in edges_among(g, m.as_deref()) {
        s.push_str(&format!(
            "{}\t{}\t{}\t{w}\n",
            clean(&g.concept(h).id),
            g.relations.name(r),
            clean(&g.concept(t).id)
        ));
    }
    for (i, c) in g.concepts.iter().enumerate() {
        if m.as_ref().is_some_and(|m| !m[i]) {
            continue;
        }
        for l in c.labels.iter().filter(|l| **l != c.id) {
            s.push_str(&format!("{}\tlabel\t{}\n", clean(&c.id), clean(l)));
        }
        if let Some(gl) = &c.gloss {
            s.push_str(&format!("{}\tgloss\t{}\n", clean(&c.id), clean(gl)));
        }
    }
    s
}

fn dot_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Graphviz DOT of the network (or the part on `nodes`); `center` is drawn filled.
pub fn to_dot(g: &Graph, nodes: Option<&[u32]>, center: Option<u32>) -> String {
    let m = nodes.map(|n| mask(g, n));
    let mut s = String::from("digraph semnet {\n  rankdir=BT;\n  node [shape=box, style=rounded, fontname=\"sans-serif\"];\n  edge [fontname=\"sans-serif\", fontsize=10];\n");
    for (i, c) in g.concepts.iter().enumerate() {
        if m.as_ref().is_some_and(|m| !m[i]) {
            continue;
        }
        let fill = if center == Some(i as u32) {
            ", style=\"rounded,filled\", fillcolor=\"#cfe2ff\""
        } else {
            ""
        };
        s.push_str(&format!(
            "  n{i} [label={}{fill}];\n",
            dot_quote(&c.label())
        ));
    }
    for (h, r, t, _, _) in edges_among(g, m.as_deref()) {
        s.push_str(&format!(
            "  n{h} -> n{t} [label={}];\n",
            dot_quote(g.relations.name(r))
        ));
    }
    s.push_str("}\n");
    s
}

/// Writes `text` to `path` atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes())
}

/// A PNG of `nodes` (a neighbourhood with distances) around its first node: Graphviz's
/// rendering of the DOT when `dot` runs, else concentric rings drawn with plotters. Returns
/// which renderer drew it.
pub fn png(
    g: &Graph,
    nodes: &[(u32, u32)],
    path: &Path,
    use_graphviz: bool,
) -> Result<&'static str> {
    let ids: Vec<u32> = nodes.iter().map(|n| n.0).collect();
    if use_graphviz {
        let dot = to_dot(g, Some(&ids), ids.first().copied());
        let tmp = path.with_extension("tmp.png");
        let run = std::process::Command::new("dot")
            .arg("-Tpng")
            .arg("-o")
            .arg(&tmp)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Ok(mut child) = run {
            use std::io::Write;
            let wrote = child.stdin.take().map(|mut i| i.write_all(dot.as_bytes()));
            if matches!(wrote, Some(Ok(()))) && child.wait().is_ok_and(|s| s.success()) {
                return std::fs::rename(&tmp, path)
                    .map(|_| "graphviz")
                    .map_err(|e| Error::io(path, e));
            }
            let _ = std::fs::remove_file(&tmp);
        }
    }
    draw_rings(g, nodes, path)?;
    Ok("built-in")
}

fn draw_rings(g: &Graph, nodes: &[(u32, u32)], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    crate::plot::register_font();
    let (w, h) = (1200i32, 1000i32);
    let rings = nodes.iter().map(|n| n.1).max().unwrap_or(0).max(1);
    let radius = (h / 2 - 70) as f64 / rings as f64;
    let mut pos = vec![(0i32, 0i32); nodes.len()];
    for ring in 0..=rings {
        let members: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].1 == ring).collect();
        for (k, &i) in members.iter().enumerate() {
            let a =
                std::f64::consts::TAU * k as f64 / members.len().max(1) as f64 + 0.3 * ring as f64;
            let r = radius * ring as f64;
            pos[i] = (w / 2 + (r * a.cos()) as i32, h / 2 + (r * a.sin()) as i32);
        }
    }
    let index: std::collections::HashMap<u32, usize> =
        nodes.iter().enumerate().map(|(i, n)| (n.0, i)).collect();
    let tmp = path.with_extension("tmp.png");
    let err = |e: &dyn std::fmt::Display| Error::format(path, format!("cannot draw: {e}"));
    {
        let root = BitMapBackend::new(&tmp, (w as u32, h as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let grey = RGBColor(110, 110, 110);
        // Each edge among the drawn concepts once: from its head's outgoing edges.
        let among = nodes.iter().flat_map(|&(c, _)| {
            g.hops_where(c, petgraph::Direction::Outgoing, |_| true)
                .into_iter()
                .map(move |h| (c, h))
        });
        for (from, hop) in among {
            let (a, Some(&b)) = (index[&from], index.get(&hop.to)) else {
                continue;
            };
            let (p, q) = (pos[a], pos[b]);
            root.draw(&PathElement::new(vec![p, q], grey.stroke_width(1)))
                .map_err(|e| err(&e))?;
            // Arrowhead a little short of the target's centre.
            let (dx, dy) = ((q.0 - p.0) as f64, (q.1 - p.1) as f64);
            let len = (dx * dx + dy * dy).sqrt().max(1.0);
            let (ux, uy) = (dx / len, dy / len);
            let tip = (q.0 as f64 - ux * 22.0, q.1 as f64 - uy * 22.0);
            let wing = |s: f64| {
                (
                    (tip.0 - ux * 9.0 + s * uy * 5.0) as i32,
                    (tip.1 - uy * 9.0 - s * ux * 5.0) as i32,
                )
            };
            root.draw(&Polygon::new(
                vec![(tip.0 as i32, tip.1 as i32), wing(1.0), wing(-1.0)],
                grey.filled(),
            ))
            .map_err(|e| err(&e))?;
            let mid = ((p.0 + q.0) / 2, (p.1 + q.1) / 2);
            let rel = g.relations.name(hop.rel);
            root.draw(&Text::new(
                rel.to_string(),
                mid,
                ("sans-serif", 13).into_font().color(&RGBColor(40, 90, 160)),
            ))
            .map_err(|e| err(&e))?;
        }
        for (i, &(c, d)) in nodes.iter().enumerate() {
            let label = g.concept(c).label();
            let tw = 9 * label.chars().count() as i32 + 14;
            let (x, y) = pos[i];
            let fill = if d == 0 {
                RGBColor(207, 226, 255)
            } else {
                RGBColor(250, 250, 250)
            };
            root.draw(&Rectangle::new(
                [(x - tw / 2, y - 13), (x + tw / 2, y + 13)],
                fill.filled(),
            ))
            .map_err(|e| err(&e))?;
            root.draw(&Rectangle::new(
                [(x - tw / 2, y - 13), (x + tw / 2, y + 13)],
                BLACK.stroke_width(1),
            ))
            .map_err(|e| err(&e))?;
            root.draw(&Text::new(
                label,
                (x - tw / 2 + 6, y - 8),
                ("sans-serif", 15).into_font(),
            ))
            .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
