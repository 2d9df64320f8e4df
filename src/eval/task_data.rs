//! The documents of an evaluation task's data files: JSON lines (or a JSON array) of objects,
//! TSV with a header row (no quoting, as TSV is written), CSV with a header row (RFC 4180
//! quoting), or fastText lines (`__label__NAME text`, fields `label` and `text`).

use crate::{Error, Result};
use serde_json::Map;
use std::path::Path;

/// One document: its fields.
pub type Doc = Map<String, serde_json::Value>;

/// Reads a data file's documents; `format` is `jsonl`, `json`, `tsv`, `csv` or `fasttext`
/// (default: from the extension; `.cor`/`.txt` are fastText).
pub fn read_docs(path: &Path, format: Option<&str>, encoding: &str) -> Result<Vec<Doc>> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let format = format.unwrap_or(match ext.as_str() {
        "jsonl" | "ndjson" => "jsonl",
        "json" => "json",
        "tsv" => "tsv",
        "csv" => "csv",
        "cor" | "txt" | "ft" => "fasttext",
        _ => "",
    });
    let docs = match format {
        "fasttext" => crate::data::labelled::read_labelled(path, encoding)?
            .into_iter()
            .map(|l| {
                let mut d = Doc::new();
                d.insert("label".into(), l.label.into());
                d.insert("text".into(), l.text.into());
                d
            })
            .collect(),
        "jsonl" | "json" | "tsv" | "csv" => {
            let text = crate::data::corpus::read_text_in(path, encoding)?;
            match format {
                "jsonl" | "json" => read_json_docs(path, &text)?,
                "tsv" => read_tsv(path, &text)?,
                _ => read_csv(path, &text)?,
            }
        }
        "" => {
            return Err(Error::format(
                path,
                "cannot tell the data format from the extension: set format = \"jsonl\", \"json\", \"tsv\", \"csv\" or \"fasttext\"",
            ))
        }
        o => {
            return Err(Error::format(
                path,
                format!("format {o:?} is not jsonl, json, tsv, csv or fasttext"),
            ))
        }
    };
    if docs.is_empty() {
        return Err(Error::format(path, "no documents in this file"));
    }
    Ok(docs)
}

fn read_json_docs(path: &Path, text: &str) -> Result<Vec<Doc>> {
    let object = |v: serde_json::Value, at: String| -> Result<Doc> {
        match v {
            serde_json::Value::Object(m) => Ok(m),
            _ => Err(Error::format(path, format!("{at}: not a JSON object"))),
        }
    };
    if text.trim_start().starts_with('[') {
        let list: Vec<serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        return list
            .into_iter()
            .enumerate()
            .map(|(i, v)| object(v, format!("record {}", i + 1)))
            .collect();
    }
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::format(path, format!("line {}: invalid JSON: {e}", i + 1)))?;
        out.push(object(v, format!("line {}", i + 1))?);
    }
    Ok(out)
}

fn row_doc(path: &Path, header: &[String], row: Vec<String>, line: usize) -> Result<Doc> {
    if row.len() != header.len() {
        return Err(Error::format(
            path,
            format!(
                "line {line}: {} columns, but the header has {}",
                row.len(),
                header.len()
            ),
        ));
    }
    Ok(header
        .iter()
        .cloned()
        .zip(row.into_iter().map(serde_json::Value::String))
        .collect())
}

/// TSV: a header row, then rows of tab-separated fields, every value a string.
fn read_tsv(path: &Path, text: &str) -> Result<Vec<Doc>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, head)) = lines.next() else {
        return Ok(vec![]);
    };
    let header: Vec<String> = head.split('\t').map(|s| s.trim().to_string()).collect();
    lines
        .map(|(i, l)| {
            let row = l
                .trim_end_matches('\r')
                .split('\t')
                .map(str::to_string)
                .collect();
            row_doc(path, &header, row, i + 1)
        })
        .collect()
}

/// CSV (RFC 4180 quoting): a header row, then records, every value a string.
fn read_csv(path: &Path, text: &str) -> Result<Vec<Doc>> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let err = |e: csv::Error| Error::format(path, format!("invalid CSV: {e}"));
    let header: Vec<String> = r
        .headers()
        .map_err(err)?
        .iter()
        .map(|s| s.trim().to_string())
        .collect();
    let mut out = vec![];
    for rec in r.records() {
        let rec = rec.map_err(err)?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        out.push(row_doc(
            path,
            &header,
            rec.iter().map(str::to_string).collect(),
            line,
        )?);
    }
    Ok(out)
}
