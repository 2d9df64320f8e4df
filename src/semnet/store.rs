//! The compact file a network is saved in (`.semnet`):
//!
//! ```text
//! "FFSEMNET" u32 version
//! u32 n  then n strings      relation names, in id order
//! string                     relation declarations (TOML)
//! u32 n  then n strings      sources
//! u32 n  then n concepts     id, u8 pos (0 = none), u32 labels + strings, gloss ("" = none)
//! u32 n  then n edges        u32 head, u32 tail, u16 relation, u16 source, f32 weight
//! ```
//!
//! Little-endian; a string is a u32 byte length and UTF-8. Written atomically.

use crate::io::atomic::write_atomic;
use crate::semnet::graph::{Concept, Graph};
use crate::semnet::relation::Relations;
use crate::{Error, Result};
use std::path::Path;

const MAGIC: &[u8; 8] = b"FFSEMNET";
const VERSION: u32 = 1;

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u32(b, s.len() as u32);
    b.extend_from_slice(s.as_bytes());
}

/// The file's bytes.
pub fn to_bytes(g: &Graph) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 * g.len() + 16 * g.edge_count());
    b.extend_from_slice(MAGIC);
    put_u32(&mut b, VERSION);
    put_u32(&mut b, g.relations.len() as u32);
    for (_, r) in g.relations.iter() {
        put_str(&mut b, &r.name);
    }
    put_str(&mut b, &g.relations.to_toml());
    put_u32(&mut b, g.sources.len() as u32);
    for s in &g.sources {
        put_str(&mut b, s);
    }
    put_u32(&mut b, g.len() as u32);
    for c in &g.concepts {
        put_str(&mut b, &c.id);
        b.push(c.pos.map(|p| p as u8).unwrap_or(0));
        put_u32(&mut b, c.labels.len() as u32);
        for l in &c.labels {
            put_str(&mut b, l);
        }
        put_str(&mut b, c.gloss.as_deref().unwrap_or(""));
    }
    put_u32(&mut b, g.edge_count() as u32);
    for (h, r, t, e) in g.triples() {
        put_u32(&mut b, h);
        put_u32(&mut b, t);
        b.extend_from_slice(&r.to_le_bytes());
        b.extend_from_slice(&e.source.to_le_bytes());
        b.extend_from_slice(&e.weight.to_le_bytes());
    }
    b
}

/// Saves `g` to `path` (temp file, fsync, rename).
pub fn save(g: &Graph, path: &Path) -> Result<()> {
    write_atomic(path, &to_bytes(g))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        match end {
            Some(end) => {
                let s = &self.b[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(format!("truncated at byte {}", self.at)),
        }
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u16(&mut self) -> std::result::Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn count(&mut self, what: &str) -> std::result::Result<usize, String> {
        let n = self.u32()? as usize;
        // Every item takes at least 4 bytes: a larger count is corruption, not a huge file.
        if n > (self.b.len() - self.at) / 4 {
            return Err(format!("{what} count {n} does not fit the file"));
        }
        Ok(n)
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.u32()? as usize;
        let at = self.at;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| format!("invalid UTF-8 at byte {at}"))
    }
}

/// Reads a network saved by [`save`].
pub fn load(path: &Path) -> Result<Graph> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes).map_err(|msg| Error::format(path, msg))
}

pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Graph, String> {
    let mut r = Reader { b: bytes, at: 0 };
    if r.take(8).ok() != Some(MAGIC.as_slice()) {
        return Err("not a ferroformer semantic network (.semnet) file".into());
    }
    let v = r.u32()?;
    if v != VERSION {
        return Err(format!(
            "file version {v}; this build reads version {VERSION}"
        ));
    }
    let n = r.count("relation")?;
    let names = (0..n)
        .map(|_| r.string())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let toml = r.string()?;
    let relations = Relations::from_toml_ordered(&toml, &names, Path::new("(relations)"))
        .map_err(|e| e.to_string())?;
    let mut g = Graph::new(relations);
    let n = r.count("source")?;
    for _ in 0..n {
        let s = r.string()?;
        g.sources.push(s);
    }
    let n = r.count("concept")?;
    for _ in 0..n {
        let id = r.string()?;
        let pos = r.take(1)?[0];
        let nl = r.count("label")?;
        let labels = (0..nl)
            .map(|_| r.string())
            .collect::<std::result::Result<_, _>>()?;
        let gloss = r.string()?;
        let before = g.len();
        let i = g.add_concept(Concept {
            id,
            labels,
            gloss: (!gloss.is_empty()).then_some(gloss),
            pos: (pos != 0).then_some(pos as char),
        });
        if i as usize != before {
            return Err(format!("concept {:?} appears twice", g.concept(i).id));
        }
    }
    let n = r.count("edge")?;
    let (nc, nr, ns) = (g.len() as u32, g.relations.len() as u16, g.sources.len());
    for k in 0..n {
        let (h, t) = (r.u32()?, r.u32()?);
        let (rel, src) = (r.u16()?, r.u16()?);
        let w = f32::from_le_bytes(r.take(4)?.try_into().unwrap());
        if h >= nc || t >= nc || rel >= nr || (src as usize) >= ns.max(1) {
            return Err(format!("edge {k} refers past the tables"));
        }
        g.graph.add_edge(
            petgraph::graph::NodeIndex::new(h as usize),
            petgraph::graph::NodeIndex::new(t as usize),
            crate::semnet::graph::Edge {
                rel,
                weight: w,
                source: src,
            },
        );
    }
    if r.at != bytes.len() {
        return Err(format!("{} bytes after the last edge", bytes.len() - r.at));
    }
    Ok(g)
}
