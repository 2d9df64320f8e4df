//! Instruction data in the formats the field uses, read into conversations:
//!
//! - Alpaca: `{"instruction", "input", "output"}` (a JSON array or JSON lines); the input, when
//!   not empty, follows the instruction after a blank line in the user turn.
//! - ShareGPT: `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}`.
//! - Messages: `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}`.
//! - Prompt-completion: `{"prompt", "completion"}`, each a string (plain text, no template) or
//!   a list of messages (TRL's conversational prompt-completion).
//!
//! A JSON array is read element by element, so a truncated file still yields every complete
//! record before the cut. Records that do not fit their format (missing fields, unknown roles,
//! no assistant turn) are skipped and counted, the first few named in the report.

use crate::text::chat::Message;
use crate::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One training example.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    /// A conversation; every assistant turn is trained.
    Chat(Vec<Message>),
    /// Prompt and completion as messages: the completion is trained.
    ChatCompletion {
        prompt: Vec<Message>,
        completion: Vec<Message>,
    },
    /// Prompt and completion as plain text (no template): the completion is trained.
    Text { prompt: String, completion: String },
}

/// What reading instruction data found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadReport {
    /// Records read (kept and skipped).
    pub records: usize,
    /// Records skipped.
    pub skipped: usize,
    /// The first skipped records: where and why.
    pub first_skipped: Vec<String>,
    /// Files that ended inside a record (truncated), with where.
    pub truncated: Vec<String>,
}

/// How many skipped records a report names.
const NAMED: usize = 5;

impl ReadReport {
    fn skip(&mut self, at: String, why: String) {
        self.skipped += 1;
        if self.first_skipped.len() < NAMED {
            self.first_skipped.push(format!("{at}: {why}"));
        }
    }

    /// One line for the user, or none when every record was used.
    pub fn summary(&self) -> Option<String> {
        let mut parts = vec![];
        if self.skipped > 0 {
            parts.push(format!(
                "skipped {} of {} records ({}{})",
                self.skipped,
                self.records,
                self.first_skipped.join("; "),
                if self.skipped > self.first_skipped.len() {
                    "; ..."
                } else {
                    ""
                }
            ));
        }
        for t in &self.truncated {
            parts.push(format!("truncated: {t}"));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// The files of `path`: the file itself, or for a directory its `train.jsonl` / `train.json`
/// when present (the layout `instruct build` writes), else every `.json` / `.jsonl` file in it,
/// sorted.
pub fn data_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    for name in ["train.jsonl", "train.json"] {
        if path.join(name).is_file() {
            return Ok(vec![path.join(name)]);
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("json" | "jsonl")
                )
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::format(
            path,
            "no .json or .jsonl files in this directory",
        ));
    }
    Ok(files)
}

/// Reads every example of `path` (a file or directory, see [`data_files`]).
pub fn read(path: &Path) -> Result<(Vec<Example>, ReadReport)> {
    let mut out = vec![];
    let mut report = ReadReport::default();
    for f in data_files(path)? {
        read_file(&f, &mut out, &mut report)?;
    }
    if out.is_empty() {
        let why = report
            .summary()
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        return Err(Error::format(
            path,
            format!("no usable instruction records{why}"),
        ));
    }
    Ok((out, report))
}

fn read_file(path: &Path, out: &mut Vec<Example>, report: &mut ReadReport) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        Error::format(
            path,
            format!("not UTF-8 (first bad byte at offset {})", e.valid_up_to()),
        )
    })?;
    let name = path.display().to_string();
    let mut take = |v: Value, at: String, report: &mut ReadReport| {
        report.records += 1;
        match parse_record(&v) {
            Ok(ex) => out.push(ex),
            Err(why) => report.skip(at, why),
        }
    };
    let body = text.trim_start_matches('\u{feff}').trim_start();
    if body.starts_with('[') {
        // A JSON array, one element at a time.
        let start = text.len() - body.len() + 1;
        let mut pos = start;
        let mut index = 0;
        loop {
            let rest = &text[pos..];
            let trimmed = rest.trim_start();
            if trimmed.starts_with(']') {
                break;
            }
            if trimmed.is_empty() {
                report.truncated.push(format!(
                    "{name}: the array is not closed (after {index} records)"
                ));
                break;
            }
            let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
            match stream.next() {
                Some(Ok(v)) => {
                    take(v, format!("{name} record {}", index + 1), report);
                    index += 1;
                    pos += stream.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => {
                    report.truncated.push(format!(
                        "{name}: ends inside record {} (the {index} before it were read)",
                        index + 1
                    ));
                    break;
                }
                Some(Err(e)) => {
                    return Err(Error::format(
                        path,
                        format!("record {}: invalid JSON: {e}", index + 1),
                    ))
                }
                None => break,
            }
            let after = text[pos..].trim_start();
            if let Some(r) = after.strip_prefix(',') {
                pos = text.len() - r.len();
            } else if !after.starts_with(']') && !after.is_empty() {
                return Err(Error::format(
                    path,
                    format!("record {}: expected ',' or ']' after it", index),
                ));
            }
        }
        return Ok(());
    }
    // JSON lines (a single JSON object is one line of it).
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) => take(v, format!("{name} line {}", i + 1), report),
            Err(e) if e.is_eof() && i + 1 == lines.len() => {
                report
                    .truncated
                    .push(format!("{name}: the last line ({}) is cut off", i + 1));
            }
            Err(e) => {
                report.records += 1;
                report.skip(
                    format!("{name} line {}", i + 1),
                    format!("invalid JSON: {e}"),
                );
            }
        }
    }
    Ok(())
}

fn string_field<'a>(v: &'a Value, key: &str) -> std::result::Result<&'a str, String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("\"{key}\" is not a string")),
        None => Err(format!("no \"{key}\"")),
    }
}

/// ShareGPT speaker names and message roles, as roles.
fn role_of(name: &str) -> Option<&'static str> {
    Some(match name {
        "system" => "system",
        "human" | "user" => "user",
        "gpt" | "assistant" | "chatgpt" | "bard" | "bing" | "model" => "assistant",
        _ => return None,
    })
}

fn messages(
    list: &Value,
    field: &str,
    role_key: &str,
    text_key: &str,
) -> std::result::Result<Vec<Message>, String> {
    let items = list
        .as_array()
        .ok_or_else(|| format!("\"{field}\" is not a list"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = |e: String| format!("{field}[{i}]: {e}");
            let who = string_field(m, role_key).map_err(at)?;
            let role = role_of(who).ok_or_else(|| at(format!("unknown {role_key} \"{who}\"")))?;
            let content = string_field(m, text_key).map_err(at)?;
            Ok(Message::new(role, content))
        })
        .collect()
}

fn check_conversation(m: &[Message]) -> std::result::Result<(), String> {
    if !m.iter().any(|m| m.role == "assistant") {
        return Err("no assistant turn to train on".into());
    }
    if m.iter()
        .any(|m| m.role == "assistant" && m.content.is_empty())
    {
        return Err("an empty assistant turn".into());
    }
    Ok(())
}

/// One record as an example, or why it cannot be one.
pub fn parse_record(v: &Value) -> std::result::Result<Example, String> {
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    if let Some(c) = v.get("conversations") {
        let m = messages(c, "conversations", "from", "value")?;
        check_conversation(&m)?;
        return Ok(Example::Chat(m));
    }
    if let Some(c) = v.get("messages") {
        let m = messages(c, "messages", "role", "content")?;
        check_conversation(&m)?;
        return Ok(Example::Chat(m));
    }
    if v.get("instruction").is_some() || v.get("output").is_some() {
        let instruction = string_field(v, "instruction")?;
        let output = string_field(v, "output")?;
        let input = match v.get("input") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s,
            Some(_) => return Err("\"input\" is not a string".into()),
        };
        if instruction.trim().is_empty() || output.is_empty() {
            return Err("empty \"instruction\" or \"output\"".into());
        }
        let user = if input.trim().is_empty() {
            instruction.to_string()
        } else {
            format!("{instruction}\n\n{input}")
        };
        return Ok(Example::Chat(vec![
            Message::new("user", &user),
            Message::new("assistant", output),
        ]));
    }
    if v.get("prompt").is_some() || v.get("completion").is_some() {
        let (p, c) = match (v.get("prompt"), v.get("completion")) {
            (Some(p), Some(c)) => (p, c),
            (None, _) => return Err("no \"prompt\"".into()),
            (_, None) => return Err("no \"completion\"".into()),
        };
        return match (p, c) {
            (Value::String(p), Value::String(c)) => {
                if c.is_empty() {
                    return Err("empty \"completion\"".into());
                }
                Ok(Example::Text {
                    prompt: p.clone(),
                    completion: c.clone(),
                })
            }
            (Value::Array(_), Value::Array(_)) => {
                let prompt = messages(p, "prompt", "role", "content")?;
                let completion = messages(c, "completion", "role", "content")?;
                check_conversation(&completion)?;
                Ok(Example::ChatCompletion { prompt, completion })
            }
            _ => Err(
                "\"prompt\" and \"completion\" must both be strings or both message lists".into(),
            ),
        };
    }
    Err(
        "not Alpaca (instruction/output), ShareGPT (conversations), messages or prompt/completion"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ff-instruct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn every_format() {
        let p = write(
            "mixed.jsonl",
            r#"{"instruction": "Add", "input": "2 and 3", "output": "5"}
{"instruction": "Greet", "input": "", "output": "Hello"}
{"conversations": [{"from": "system", "value": "Be brief"}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}, {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Ciao"}]}
{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
{"prompt": "2+2=", "completion": "4"}
{"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]}
"#,
        );
        let (ex, rep) = read(&p).unwrap();
        assert_eq!(rep.skipped, 0);
        assert_eq!(ex.len(), 6);
        assert_eq!(
            ex[0],
            Example::Chat(vec![
                Message::new("user", "Add\n\n2 and 3"),
                Message::new("assistant", "5")
            ])
        );
        let Example::Chat(greet) = &ex[1] else {
            panic!("{:?}", ex[1])
        };
        assert_eq!(greet[0].content, "Greet");
        let Example::Chat(multi) = &ex[2] else {
            panic!("{:?}", ex[2])
        };
        assert_eq!((multi.len(), multi[0].role.as_str()), (5, "system"));
        assert!(matches!(ex[4], Example::Text { .. }));
        assert!(matches!(ex[5], Example::ChatCompletion { .. }));
    }

    #[test]
    fn bad_records_are_skipped_and_named() {
        let p = write(
            "bad.jsonl",
            r#"{"instruction": "x"}
{"conversations": [{"from": "alien", "value": "x"}]}
{"messages": [{"role": "user", "content": "only a question"}]}
not json
{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
"#,
        );
        let (ex, rep) = read(&p).unwrap();
        assert_eq!(ex.len(), 1);
        assert_eq!((rep.records, rep.skipped), (5, 4));
        assert!(
            rep.first_skipped[0].contains("line 1: no \"output\""),
            "{rep:?}"
        );
        assert!(
            rep.first_skipped[1].contains("unknown from \"alien\""),
            "{rep:?}"
        );
        assert!(
            rep.first_skipped[2].contains("no assistant turn"),
            "{rep:?}"
        );
        assert!(rep.first_skipped[3].contains("invalid JSON"), "{rep:?}");
        assert!(rep.summary().unwrap().contains("skipped 4 of 5"));
    }

    #[test]
    fn truncated_sharegpt_array_keeps_complete_records() {
        let rec = r#"{"conversations": [{"from": "human", "value": "Hi, [x]"}, {"from": "gpt", "value": "Hello}"}]}"#;
        let full = format!("[\n {rec},\n {rec} ,{rec}]");
        let p = write("full.json", &full);
        let (ex, rep) = read(&p).unwrap();
        assert_eq!((ex.len(), rep.truncated.len()), (3, 0));
        let cut = &full[..full.len() - 30];
        let p = write("cut.json", cut);
        let (ex, rep) = read(&p).unwrap();
        assert_eq!(ex.len(), 2);
        assert!(rep.truncated[0].contains("inside record 3"), "{rep:?}");
        // A truncated JSON-lines file: the last line is reported, the rest kept.
        let p = write("cut.jsonl", &format!("{rec}\n{}", &rec[..20]));
        let (ex, rep) = read(&p).unwrap();
        assert_eq!((ex.len(), rep.truncated.len()), (1, 1));
        // Nothing usable is an error naming the file.
        let p = write("none.jsonl", "{\"x\": 1}\n");
        let err = read(&p).unwrap_err().to_string();
        assert!(
            err.contains("none.jsonl") && err.contains("no usable"),
            "{err}"
        );
        let p = write("latin1.json", "");
        std::fs::write(&p, b"[{\"instruction\": \"\xe9\"}]").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("not UTF-8"));
    }
}
