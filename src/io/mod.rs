//! Files in and out: atomic writes, JSON lines, safetensors, GGUF, and the corpus formats text
//! comes in (plain text in any encoding, MediaWiki XML dumps).

pub mod atomic;
pub mod corpus;
pub mod gguf;
pub mod gguf_write;
pub mod safetensors;
pub mod wiki;

pub use atomic::{read_json, write_atomic, write_json_atomic};

/// Reads every record of a JSON-lines file (none if it does not exist); errors name the line.
pub fn read_jsonl(path: &std::path::Path) -> crate::Result<Vec<serde_json::Value>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| crate::Error::format(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// Shell-style matching: `*` matches any run of characters except `/`, `?` any one character
/// except `/`; everything else matches itself.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    fn rec(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != b'/')
                .any(|i| rec(&p[1..], &s[i..])),
            Some(b'?') => s.first().is_some_and(|&c| c != b'/') && rec(&p[1..], &s[1..]),
            Some(c) => s.first() == Some(c) && rec(&p[1..], &s[1..]),
        }
    }
    rec(pattern.as_bytes(), s.as_bytes())
}
