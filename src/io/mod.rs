//! Files in and out: atomic writes, safetensors, Hugging Face model directories.

pub mod atomic;
pub mod gguf;
pub mod safetensors;

pub use atomic::{read_json, write_atomic, write_json_atomic};

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
