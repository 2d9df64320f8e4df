//! Text corpora: files or folders of UTF-8 text, read in a fixed order.

use crate::io::wiki;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Expands `paths` (files, or folders searched recursively) into a sorted list of text files.
/// Hidden files are skipped. Errors name a missing path or a folder with no files.
pub fn corpus_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Err(Error::Config("no corpus given".into()));
    }
    let mut out = vec![];
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        if meta.is_dir() {
            let before = out.len();
            walk(p, &mut out)?;
            if out.len() == before {
                return Err(Error::format(p, "corpus folder contains no files"));
            }
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .map(|n| n.to_string_lossy().starts_with('.'))
                .unwrap_or(true)
        })
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Windows-1252's characters for bytes 0x80..=0x9F (where it differs from Latin-1); bytes it
/// leaves undefined decode to the C1 control of the same number, as Python's `cp1252` does
/// not (it fails) but browsers do.
const CP1252_HIGH: [char; 32] = [
    '\u{20AC}', '\u{81}', '\u{201A}', '\u{192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{2C6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8D}', '\u{17D}', '\u{8F}',
    '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{2DC}', '\u{2122}', '\u{161}', '\u{203A}', '\u{153}', '\u{9D}', '\u{17E}', '\u{178}',
];

/// Reads a whole text file in `encoding`: `utf-8` (see [`read_text`]), `windows-1252` (alias
/// `cp1252`, the usual "ANSI" of older English and Western European files) or `latin-1`
/// (alias `iso-8859-1`).
pub fn read_text_in(path: &Path, encoding: &str) -> Result<String> {
    let e = encoding.to_ascii_lowercase().replace('_', "-");
    let cp1252 = match e.as_str() {
        "utf-8" | "utf8" => {
            return read_text(path).map_err(|err| match err {
                Error::Format { path, msg } if msg.contains("UTF-8") => Error::format(
                    path,
                    format!("{msg}; for a legacy file set its encoding (data.encoding = \"windows-1252\" or \"latin-1\")"),
                ),
                other => other,
            })
        }
        "windows-1252" | "cp1252" => true,
        "latin-1" | "latin1" | "iso-8859-1" => false,
        other => {
            return Err(Error::Config(format!(
                "encoding {other:?} is not supported (utf-8, windows-1252, latin-1)"
            )))
        }
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9F if cp1252 => CP1252_HIGH[(b - 0x80) as usize],
            _ => b as char,
        })
        .collect())
}

/// Reads a whole corpus file as text (see [`for_each_chunk`] for the formats), with an error
/// naming the file and the byte offset of the first invalid UTF-8 sequence.
pub fn read_text(path: &Path) -> Result<String> {
    let mut out = String::new();
    for_each_chunk(path, 1 << 20, |s| {
        out.push_str(s);
        Ok(())
    })?;
    Ok(out)
}

/// Streams a corpus file as UTF-8 chunks of roughly `chunk` bytes, each ending at a line break
/// that is followed by a non-space character, so tokenizers that split on whitespace see the
/// same pieces as they would in the whole text. `.bz2` files are decompressed; a MediaWiki XML
/// export (a Wikipedia dump) yields the plain text of its articles, separated by blank lines.
pub fn for_each_chunk(
    path: &Path,
    chunk: usize,
    mut f: impl FnMut(&str) -> Result<()>,
) -> Result<()> {
    use std::io::Read;
    if wiki::is_mediawiki(path)? {
        let mut buf = String::with_capacity(chunk * 2);
        wiki::for_each_article(path, |_, text| {
            if !buf.is_empty() {
                buf.push('\n');
            }
            buf.push_str(text);
            if buf.len() >= chunk {
                f(&buf)?;
                buf.clear();
            }
            Ok(())
        })?;
        if buf.is_empty() {
            return Err(Error::format(
                path,
                "this MediaWiki export has no article text",
            ));
        }
        return f(&buf);
    }
    let mut file = wiki::open_text(path)?;
    let mut buf: Vec<u8> = Vec::with_capacity(chunk * 2);
    // Appends up to `chunk` more bytes; true at the end of the file.
    let read_more = |file: &mut Box<dyn Read>, buf: &mut Vec<u8>| -> Result<bool> {
        let start = buf.len();
        buf.resize(start + chunk, 0);
        let n = file
            .read(&mut buf[start..])
            .map_err(|e| Error::io(path, e))?;
        buf.truncate(start + n);
        Ok(n == 0)
    };
    let mut offset = 0usize; // bytes of the file already handed out, for error messages
    let mut eof = false;
    while !eof || !buf.is_empty() {
        if !eof && buf.len() < chunk {
            eof = read_more(&mut file, &mut buf)?;
            continue;
        }
        // Find a cut: after '\n' followed by a non-whitespace byte, searching backwards.
        let mut cut = buf.len();
        if !eof {
            cut = 0;
            for i in (1..buf.len()).rev() {
                if buf[i - 1] == b'\n' && !buf[i].is_ascii_whitespace() {
                    cut = i;
                    break;
                }
            }
            if cut == 0 {
                // No safe cut in this window: read more before handing anything out.
                eof = read_more(&mut file, &mut buf)?;
                continue;
            }
        }
        let text = std::str::from_utf8(&buf[..cut]).map_err(|e| {
            Error::format(
                path,
                format!(
                    "not valid UTF-8 (first bad byte at offset {})",
                    offset + e.valid_up_to()
                ),
            )
        })?;
        f(text)?;
        offset += cut;
        buf.drain(..cut);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn legacy_encodings_decode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.txt");
        std::fs::write(&p, b"clich\xe9s \x97 caf\xe9 \x80").unwrap();
        assert_eq!(
            super::read_text_in(&p, "windows-1252").unwrap(),
            "clichés — café €"
        );
        assert_eq!(
            super::read_text_in(&p, "latin-1").unwrap(),
            "clichés \u{97} café \u{80}"
        );
        let e = super::read_text_in(&p, "utf-8").unwrap_err().to_string();
        assert!(e.contains("old.txt") && e.contains("windows-1252"), "{e}");
        assert!(super::read_text_in(&p, "ebcdic").is_err());
    }

    use super::*;

    #[test]
    fn chunks_reassemble_and_cut_at_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        let text: String = (0..2000)
            .map(|i| format!("line {i} é\n  indented\n\n"))
            .collect();
        std::fs::write(&p, &text).unwrap();
        let mut parts = vec![];
        for_each_chunk(&p, 1000, |s| {
            parts.push(s.to_string());
            Ok(())
        })
        .unwrap();
        assert!(parts.len() > 10);
        assert_eq!(parts.concat(), text);
        for part in &parts[..parts.len() - 1] {
            assert!(part.ends_with('\n'));
        }
    }

    #[test]
    fn invalid_utf8_names_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.txt");
        std::fs::write(&p, b"hello\n\xff\xfe world").unwrap();
        let e = for_each_chunk(&p, 4, |_| Ok(())).unwrap_err().to_string();
        assert!(
            e.contains("bad.txt") && e.contains("UTF-8") && e.contains("offset 6"),
            "{e}"
        );
        let e = read_text(&p).unwrap_err().to_string();
        assert!(e.contains("offset 6"), "{e}");
    }
}
