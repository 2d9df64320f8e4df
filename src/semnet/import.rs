//! Reading networks from text: plain TSV triples and ConceptNet's CSV edge dumps. Malformed
//! lines are skipped and counted, the first few named, so one bad line in a million does not
//! stop an import but never passes silently.

use crate::semnet::graph::{Concept, Graph};
use crate::{Error, Result};
use std::path::Path;

/// What an import read and what it skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    pub lines: usize,
    pub edges: usize,
    pub skipped: usize,
    /// The first few skipped lines: "file:line: why".
    pub first_skipped: Vec<String>,
    /// Relations the file used that were not declared (added with no properties).
    pub new_relations: Vec<String>,
}

const NAMED: usize = 5;

impl ImportReport {
    fn skip(&mut self, path: &Path, line: usize, why: impl std::fmt::Display) {
        self.skipped += 1;
        if self.first_skipped.len() < NAMED {
            self.first_skipped
                .push(format!("{}:{line}: {why}", path.display()));
        }
    }

    /// One line for the user: counts and the first skipped lines.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} lines, {} edges added, {} skipped",
            self.lines, self.edges, self.skipped
        );
        if !self.first_skipped.is_empty() {
            s.push_str(&format!(" (first: {})", self.first_skipped.join("; ")));
        }
        if !self.new_relations.is_empty() {
            s.push_str(&format!(
                "; undeclared relations added without properties: {}",
                self.new_relations.join(", ")
            ));
        }
        s
    }
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::format(path, format!("not UTF-8 (line {line}, byte {at})"))
    })
}

fn relation(g: &mut Graph, name: &str, report: &mut ImportReport) -> crate::semnet::RelId {
    if g.relations.id(name).is_none() && !report.new_relations.iter().any(|r| r == name) {
        report.new_relations.push(name.to_string());
    }
    g.relations.get_or_declare(name)
}

/// Reads `head<TAB>relation<TAB>tail[<TAB>weight]` lines into `g`. `#` starts a comment line;
/// the relations `label` and `gloss` set a concept's extra label and its gloss instead of
/// adding an edge. Concepts are named by the strings as written (also their first label).
pub fn tsv(g: &mut Graph, path: &Path) -> Result<ImportReport> {
    let text = read_text(path)?;
    let source = g.source_id(&path.display().to_string());
    let mut report = ImportReport::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        report.lines += 1;
        let f: Vec<&str> = line.split('\t').map(str::trim).collect();
        if !(3..=4).contains(&f.len()) {
            report.skip(
                path,
                n,
                format!(
                    "{} fields, expected 3 or 4 (head, relation, tail, weight)",
                    f.len()
                ),
            );
            continue;
        }
        if f.iter().take(3).any(|x| x.is_empty()) {
            report.skip(path, n, "empty field");
            continue;
        }
        if n == 1 && f[0].eq_ignore_ascii_case("head") && f[1].eq_ignore_ascii_case("relation") {
            report.lines -= 1;
            continue;
        }
        let weight = match f.get(3) {
            None => 1.0,
            Some(w) => match w.parse::<f32>() {
                Ok(w) if w.is_finite() => w,
                _ => {
                    report.skip(path, n, format!("weight {w:?} is not a number"));
                    continue;
                }
            },
        };
        let head = concept(g, f[0]);
        match f[1] {
            "label" => {
                let c = g.concept(head).clone();
                if !c.labels.iter().any(|l| l == f[2]) {
                    g.add_concept(Concept {
                        labels: vec![f[2].to_string()],
                        ..c
                    });
                }
            }
            "gloss" => g.concepts[head as usize].gloss = Some(f[2].to_string()),
            r => {
                let rel = relation(g, r, &mut report);
                let tail = concept(g, f[2]);
                g.add_edge(head, rel, tail, weight, source);
                report.edges += 1;
            }
        }
    }
    if report.lines == 0 {
        return Err(Error::format(
            path,
            "no triples (head<TAB>relation<TAB>tail lines)",
        ));
    }
    Ok(report)
}

/// The concept named `name`, added with itself as label if new.
fn concept(g: &mut Graph, name: &str) -> u32 {
    match g.id_of(name) {
        Some(i) => i,
        None => g.add_concept(Concept {
            id: name.to_string(),
            labels: vec![name.to_string()],
            gloss: None,
            pos: None,
        }),
    }
}

/// A ConceptNet concept URI `/c/LANG/TERM[/POS[/...]]`: id `/c/LANG/TERM`, language, term
/// and part of speech.
fn conceptnet_uri(uri: &str) -> Option<(String, &str, &str, Option<char>)> {
    let rest = uri.strip_prefix("/c/")?;
    let mut parts = rest.split('/');
    let lang = parts.next().filter(|s| !s.is_empty())?;
    let term = parts.next().filter(|s| !s.is_empty())?;
    let pos = parts
        .next()
        .and_then(|p| p.chars().next())
        .filter(|c| "nvarsp".contains(*c));
    Some((format!("/c/{lang}/{term}"), lang, term, pos))
}

/// Reads ConceptNet 5's assertion dump: tab-separated `edge URI, relation URI, start URI,
/// end URI, JSON info` (weight and dataset are taken from the JSON). `langs` keeps only edges
/// whose two ends are in those languages (empty: all).
pub fn conceptnet(g: &mut Graph, path: &Path, langs: &[String]) -> Result<ImportReport> {
    let text = read_text(path)?;
    let mut report = ImportReport::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        report.lines += 1;
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 5 {
            report.skip(
                path,
                n,
                format!(
                    "{} fields, expected 5 (uri, relation, start, end, info)",
                    f.len()
                ),
            );
            continue;
        }
        let Some(rel_name) = f[1].strip_prefix("/r/").filter(|r| !r.is_empty()) else {
            report.skip(path, n, format!("relation {:?} is not a /r/ URI", f[1]));
            continue;
        };
        let (Some(start), Some(end)) = (conceptnet_uri(f[2]), conceptnet_uri(f[3])) else {
            report.skip(path, n, "start or end is not a /c/LANG/TERM URI");
            continue;
        };
        let info: serde_json::Value = match serde_json::from_str(f[4]) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => {
                report.skip(path, n, "info is not a JSON object");
                continue;
            }
        };
        let wanted = |lang: &str| langs.is_empty() || langs.iter().any(|l| l == lang);
        if !(wanted(start.1) && wanted(end.1)) {
            continue;
        }
        let weight = info["weight"].as_f64().unwrap_or(1.0) as f32;
        let dataset = info["dataset"].as_str().unwrap_or("conceptnet");
        let source = g.source_id(dataset);
        let mut ends = [0u32; 2];
        for (k, (id, _, term, pos)) in [start, end].into_iter().enumerate() {
            ends[k] = g.add_concept(Concept {
                id,
                labels: vec![term.to_string()],
                gloss: None,
                pos,
            });
        }
        let rel = relation(g, rel_name, &mut report);
        g.add_edge(ends[0], rel, ends[1], weight, source);
        report.edges += 1;
    }
    if report.lines == 0 {
        return Err(Error::format(path, "empty ConceptNet file"));
    }
    if report.edges == 0 && report.skipped == report.lines {
        return Err(Error::format(
            path,
            format!("no line is a ConceptNet edge: {}", report.summary()),
        ));
    }
    Ok(report)
}
