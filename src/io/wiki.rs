//! MediaWiki XML exports (Wikipedia's `pages-articles` dumps, plain or bzip2-compressed) as
//! plain text: articles only (namespace 0, no redirects), wiki markup stripped. Streaming, so a
//! full dump never has to fit in memory.
//!
//! The markup rules follow what Wikipedia text-extraction tools (gensim's `filter_wiki`,
//! WikiExtractor) keep: the visible words of the article. Templates, tables, references,
//! comments, files, categories, interlanguage links and the link-list sections at the end
//! (References, External links, See also, ...) are dropped; links keep their label;
//! bold/italic quotes, heading and list markers go; HTML entities are decoded.
//!
//! Length: one concept (wiki markup to text); the stripping rules are small functions that only
//! make sense together, and a sixth of the file is their tests.

use crate::{Error, Result};
use std::io::{BufReader, Read};
use std::path::Path;

/// One page of an export, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct WikiPage {
    pub title: String,
    /// Namespace: 0 for articles.
    pub namespace: i64,
    pub redirect: bool,
    /// The wikitext, XML entities decoded.
    pub text: String,
}

/// Opens a file for reading, decompressing `.bz2` files on the fly.
pub fn open_text(path: &Path) -> Result<Box<dyn Read>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let is_bz2 = path.extension().is_some_and(|e| e == "bz2");
    Ok(if is_bz2 {
        Box::new(bzip2::read::MultiBzDecoder::new(BufReader::new(f)))
    } else {
        Box::new(f)
    })
}

/// Whether `path` is a MediaWiki XML export (by its first kilobyte).
pub fn is_mediawiki(path: &Path) -> Result<bool> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "xml" | "bz2") {
        return Ok(false);
    }
    let mut head = Vec::with_capacity(1024);
    open_text(path)?
        .take(1024)
        .read_to_end(&mut head)
        .map_err(|e| Error::format(path, format!("cannot read: {e}")))?;
    Ok(String::from_utf8_lossy(&head).contains("<mediawiki"))
}

/// Calls `f` with every page of the export at `path`, in order.
pub fn for_each_page(path: &Path, mut f: impl FnMut(WikiPage) -> Result<()>) -> Result<()> {
    use quick_xml::events::Event;
    let bad =
        |e: &dyn std::fmt::Display| Error::format(path, format!("invalid MediaWiki XML: {e}"));
    let mut reader = quick_xml::Reader::from_reader(BufReader::new(open_text(path)?));
    let mut buf = Vec::new();
    // The element whose text is being collected, and the page being built.
    let mut field: Option<&'static str> = None;
    let mut page: Option<WikiPage> = None;
    let mut value = String::new();
    // Depth inside <revision>: only the text of the page's (last) revision counts.
    loop {
        let ev = reader
            .read_event_into(&mut buf)
            .map_err(|e| bad(&format!("{e} at byte {}", reader.buffer_position())))?;
        match ev {
            Event::Start(e) => match e.name().as_ref() {
                "page" => {
                    page = Some(WikiPage {
                        title: String::new(),
                        namespace: 0,
                        redirect: false,
                        text: String::new(),
                    })
                }
                "title" => field = Some("title"),
                "ns" => field = Some("ns"),
                "text" => field = Some("text"),
                _ => {}
            },
            Event::Empty(e) => match e.name().as_ref() {
                "redirect" => {
                    if let Some(p) = &mut page {
                        p.redirect = true;
                    }
                }
                "text" => {
                    if let Some(p) = &mut page {
                        p.text.clear();
                    }
                }
                _ => {}
            },
            Event::Text(t) if field.is_some() => value.push_str(&t.xml10_content()),
            Event::CData(t) if field.is_some() => value.push_str(&t.xml10_content()),
            Event::GeneralRef(r) if field.is_some() => {
                if let Some(c) = r.resolve_char_ref().map_err(|e| bad(&e))? {
                    value.push(c);
                } else {
                    let s = quick_xml::escape::resolve_xml_entity(&r)
                        .ok_or_else(|| bad(&format!("unknown entity &{};", &*r)))?;
                    value.push_str(s);
                }
            }
            Event::End(e) => match e.name().as_ref() {
                "title" | "ns" | "text" => {
                    if let (Some(p), Some(name)) = (&mut page, field) {
                        let v = std::mem::take(&mut value);
                        match name {
                            "title" => p.title = v,
                            "ns" => {
                                p.namespace = v.trim().parse().map_err(|_| {
                                    bad(&format!(
                                        "namespace {v:?} of {:?} is not a number",
                                        p.title
                                    ))
                                })?
                            }
                            _ => p.text = v,
                        }
                    }
                    field = None;
                    value.clear();
                }
                "page" => {
                    if let Some(p) = page.take() {
                        f(p)?;
                    }
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(())
}

/// Calls `f` with the plain text of every article of the export at `path` (title excluded,
/// paragraphs one per line), skipping redirects, other namespaces and articles left empty.
pub fn for_each_article(path: &Path, mut f: impl FnMut(&str, &str) -> Result<()>) -> Result<()> {
    for_each_page(path, |p| {
        if p.namespace != 0 || p.redirect {
            return Ok(());
        }
        let text = strip_markup(&p.text);
        if text.is_empty() {
            return Ok(());
        }
        f(&p.title, &text)
    })
}

/// Headings of the sections dropped with everything under them: lists of links and citations.
const DROPPED_SECTIONS: &[&str] = &[
    "references",
    "external links",
    "see also",
    "further reading",
    "notes",
    "footnotes",
    "bibliography",
    "sources",
    "citations",
    "notes and references",
    "references and notes",
    "works cited",
];

/// Elements removed together with their content.
const DROPPED_ELEMENTS: &[&str] = &[
    "ref",
    "math",
    "gallery",
    "timeline",
    "imagemap",
    "score",
    "chem",
    "ce",
    "hiero",
    "syntaxhighlight",
    "source",
    "graph",
    "references",
];

/// Link prefixes whose links are dropped entirely (media, categories, other wikis).
fn dropped_link(target: &str) -> bool {
    let t = target.trim().to_ascii_lowercase();
    let Some((prefix, _)) = t.split_once(':') else {
        return false;
    };
    matches!(
        prefix,
        "file" | "image" | "media" | "category" | "wikt" | "wiktionary" | "commons" | "s" | "q"
    ) || ((2..=3).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_lowercase()))
        || (prefix.contains('-')
            && prefix.len() <= 12
            && prefix.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
}

/// The visible text of wikitext (entities in the wikitext itself are decoded).
pub fn strip_markup(wikitext: &str) -> String {
    let s = remove_between(wikitext, "<!--", "-->");
    let s = remove_elements(&s);
    let s = remove_templates_and_tables(&s);
    let s = replace_links(&s);
    let s = replace_external_links(&s);
    let s = strip_tags(&s);
    let s = decode_entities(&s);
    clean_lines(&s)
}

/// Removes every `open ... close` span (not nested); an unclosed one runs to the end.
fn remove_between(s: &str, open: &str, close: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(open) {
        out.push_str(&rest[..i]);
        rest = match rest[i + open.len()..].find(close) {
            Some(j) => &rest[i + open.len() + j + close.len()..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// The tag name at the start of `s` (just after `<` or `</`), lowercase.
fn tag_name(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Removes the elements in [`DROPPED_ELEMENTS`] with their content (`<ref>..</ref>`,
/// `<ref name=x />`, ...).
fn remove_elements(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let name = tag_name(after);
        if name.is_empty() || !DROPPED_ELEMENTS.contains(&name.as_str()) {
            out.push('<');
            rest = after;
            continue;
        }
        let Some(gt) = after.find('>') else {
            rest = "";
            break;
        };
        if after[..gt].ends_with('/') {
            rest = &after[gt + 1..];
            continue;
        }
        let body = &after[gt + 1..];
        let lower = body.to_ascii_lowercase();
        let close = format!("</{name}");
        rest = match lower.find(&close) {
            Some(j) => match body[j..].find('>') {
                Some(k) => &body[j + k + 1..],
                None => "",
            },
            None => body,
        };
    }
    out.push_str(rest);
    out
}

/// Removes `{{templates}}`, `{{{parameters}}}` and `{| tables |}`, nested in any way.
fn remove_templates_and_tables(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut stack: Vec<u8> = vec![]; // b'{' for a template, b'|' for a table
    let mut i = 0;
    let mut copied = 0;
    // Where the outermost open template's content starts.
    let mut start = 0;
    let line_start = |i: usize| {
        let mut j = i;
        while j > 0 && (b[j - 1] == b' ' || b[j - 1] == b'\t') {
            j -= 1;
        }
        j == 0 || b[j - 1] == b'\n'
    };
    while i < b.len() {
        let two = &b[i..(i + 2).min(b.len())];
        if two == b"{{" || (two == b"{|" && line_start(i)) {
            if stack.is_empty() {
                out.push_str(&s[copied..i]);
                start = i + 2;
            }
            stack.push(two[1]);
            i += 2;
        } else if two == b"}}" && stack.last() == Some(&b'{') {
            stack.pop();
            i += 2;
            if stack.is_empty() {
                out.push_str(&template_text(&s[start..i - 2]));
                copied = i;
            }
        } else if two == b"|}" && stack.last() == Some(&b'|') {
            stack.pop();
            i += 2;
            if stack.is_empty() {
                copied = i;
            }
        } else {
            i += 1;
        }
    }
    if stack.is_empty() {
        out.push_str(&s[copied..]);
    }
    out
}

/// The visible text of the few inline templates whose words belong to the sentence (dashes,
/// `nowrap`, `lang`, `convert`); every other template is dropped.
fn template_text(content: &str) -> String {
    // Arguments split at top level (nested templates and links keep their pipes).
    let mut args = vec![];
    let (mut depth, mut from) = (0i32, 0);
    let b = content.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b'|' if depth == 0 => {
                args.push(&content[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    args.push(&content[from..]);
    let name = args[0].trim().to_lowercase();
    let positional: Vec<&str> = args[1..]
        .iter()
        .filter(|a| !a.contains('='))
        .map(|a| a.trim())
        .collect();
    match name.as_str() {
        "snd" | "spnd" | "sndash" | "spaced ndash" | "spaced en dash" => " – ".into(),
        "ndash" | "nsndns" => "–".into(),
        "mdash" | "spaced mdash" => " — ".into(),
        "nowrap" | "nobr" | "lang" | "transl" | "small" => positional
            .last()
            .map(|a| remove_templates_and_tables(a))
            .unwrap_or_default(),
        "convert" | "cvt" if positional.len() >= 2 => {
            format!("{} {}", positional[0], positional[1])
        }
        _ => String::new(),
    }
}

/// Replaces `[[target|label]]` by its label (or the target), drops media, category and
/// interlanguage links; links nest in file captions.
fn replace_links(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("[[") {
        out.push_str(&rest[..i]);
        let inner_start = i + 2;
        // Find the matching "]]".
        let b = rest.as_bytes();
        let (mut depth, mut j) = (1usize, inner_start);
        while j + 1 < b.len() && depth > 0 {
            if &b[j..j + 2] == b"[[" {
                depth += 1;
                j += 2;
            } else if &b[j..j + 2] == b"]]" {
                depth -= 1;
                j += 2;
            } else {
                j += 1;
            }
        }
        if depth > 0 {
            // Unclosed: drop the brackets, keep the text.
            rest = &rest[inner_start..];
            continue;
        }
        let inner = &rest[inner_start..j - 2];
        rest = &rest[j..];
        let (target, label) = match inner.split_once('|') {
            Some((t, l)) => (t, Some(l)),
            None => (inner, None),
        };
        let visible = target.trim_start().starts_with(':');
        if !visible && dropped_link(target) {
            continue;
        }
        match label {
            Some(l) if !l.trim().is_empty() => out.push_str(&replace_links(l)),
            _ => out.push_str(target.trim().trim_start_matches(':')),
        }
    }
    out.push_str(rest);
    out
}

/// `[http://x.org label]` becomes `label`; a bare bracketed URL disappears.
fn replace_external_links(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let is_url = ["http://", "https://", "ftp://", "//"].iter().any(|p| {
            after
                .get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p))
        });
        match after.find(']') {
            Some(j) if is_url && !after[..j].contains('\n') => {
                if let Some((_, label)) = after[..j].split_once(' ') {
                    out.push_str(label.trim());
                }
                rest = &after[j + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Removes the remaining HTML tags (`<br/>`, `<span ...>`, `</small>`), keeping their content.
fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let is_tag = after
            .strip_prefix('/')
            .unwrap_or(after)
            .starts_with(|c: char| c.is_ascii_alphabetic());
        match after.find('>') {
            Some(j) if is_tag && !after[..j].contains('\n') => {
                let name = tag_name(after.trim_start_matches('/'));
                // Line breaks and block elements separate words.
                if matches!(name.as_str(), "br" | "p" | "div" | "li" | "tr" | "td") {
                    out.push(' ');
                }
                rest = &after[j + 1..];
            }
            _ => {
                out.push('<');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decodes the HTML entities wikitext uses (`&nbsp;`, `&ndash;`, `&#8212;`, ...).
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let decoded = after.find(';').filter(|&j| j <= 10).and_then(|j| {
            let name = &after[..j];
            let c = if let Some(num) = name.strip_prefix('#') {
                let v = match num.strip_prefix(['x', 'X']) {
                    Some(h) => u32::from_str_radix(h, 16).ok(),
                    None => num.parse().ok(),
                };
                v.and_then(char::from_u32).map(|c| c.to_string())
            } else {
                quick_xml::escape::resolve_html5_entity(name).map(str::to_string)
            };
            c.map(|c| (c, j))
        });
        match decoded {
            Some((c, j)) => {
                out.push_str(&c);
                rest = &after[j + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Line-level markup: headings become plain lines (link-list sections are dropped with their
/// content), list and indent markers go, table leftovers and magic words go, bold/italic quotes
/// go, whitespace is collapsed and empty lines removed.
fn clean_lines(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // Level of the dropped section we are in, if any.
    let mut dropping: Option<usize> = None;
    for raw in s.lines() {
        let line = raw.trim();
        let level = line.bytes().take_while(|&b| b == b'=').count();
        if level >= 2 && line.len() > 2 * level && line.ends_with(&"=".repeat(level)[..]) {
            let title = line[level..line.len() - level].trim();
            let title = remove_quotes(title);
            if dropping.is_some_and(|d| level > d) {
                continue;
            }
            dropping = DROPPED_SECTIONS
                .contains(&title.to_lowercase().as_str())
                .then_some(level);
            if dropping.is_none() {
                push_line(&mut out, &title);
            }
            continue;
        }
        if dropping.is_some() {
            continue;
        }
        if line.starts_with('|') || line.starts_with('!') || line.starts_with("__") {
            continue;
        }
        let line = line.trim_start_matches(['*', '#', ':', ';']);
        push_line(&mut out, &remove_quotes(line));
    }
    out
}

fn remove_quotes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("''") {
        out.push_str(&rest[..i]);
        rest = rest[i..].trim_start_matches('\'');
    }
    out.push_str(rest);
    out
}

/// Appends `line` with runs of whitespace collapsed, empty brackets left by removed templates
/// dropped, and spaces before punctuation removed; skips lines left empty.
fn push_line(out: &mut String, line: &str) {
    let mut l = line.split_whitespace().collect::<Vec<_>>().join(" ");
    for (from, to) in [
        ("( )", ""),
        ("()", ""),
        ("(, ", "("),
        ("(; ", "("),
        (" ,", ","),
        (" .", "."),
        (" ;", ";"),
        (" )", ")"),
        ("( ", "("),
    ] {
        while l.contains(from) {
            l = l.replace(from, to);
        }
    }
    let l = l.trim();
    if l.is_empty() || !l.chars().any(|c| c.is_alphanumeric()) {
        return;
    }
    out.push_str(l);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_stripped() {
        let text = "{{Infobox person|name=X|birth={{birth date|1900|1|1}}}}\n\
'''Ada Lovelace''' (10 December 1815{{snd}}27 November 1852) was an [[England|English]] \
[[mathematician]]s and writer,<ref name=\"a\">{{cite book|title=T}}</ref> chiefly known\
<ref name=b /> for her work on [[Charles Babbage]]'s ''[[Analytical Engine|engine]]''.<!-- hidden -->\n\
[[File:Ada.jpg|thumb|A portrait of [[Ada Lovelace|Ada]].]]\n\
== Early life ==\n\
* She was born in [[London]]&nbsp;&ndash; see [http://example.org the site] and [http://x.org].\n\
{| class=\"wikitable\"\n|-\n| cell || {{flag|UK}}\n|}\n\
:Indented &amp; <small>small</small> text<br/>here.\n\
=== ''Notes'' on x ===\n\
== See also ==\n* [[Computer]]\n=== Sub ===\ngone\n\
== Legacy ==\nKept.\n[[Category:Mathematicians]]\n[[de:Ada Lovelace]]\n__NOTOC__\n";
        let got = strip_markup(text);
        let want = "Ada Lovelace (10 December 1815 – 27 November 1852) was an English mathematicians and writer, chiefly known for her work on Charles Babbage's engine.\n\
Early life\n\
She was born in London – see the site and.\n\
Indented & small text here.\n\
Notes on x\n\
Legacy\nKept.\n";
        assert_eq!(got, want);
    }

    #[test]
    fn unclosed_markup_does_not_panic() {
        for s in [
            "{{open",
            "[[open",
            "<ref>open",
            "<!-- open",
            "[http://x",
            "&amp",
            "a }} b |}",
            "==",
            "<",
            "'''",
            "[[a|[[b]]",
            "&#99999999;",
            "[ɑjbubɛn]",
            "[é",
            "&é;",
        ] {
            let _ = strip_markup(s);
        }
        assert_eq!(strip_markup("x {{open"), "x\n");
        assert_eq!(strip_markup("[[a|b [[c]] d]]"), "b c d\n");
    }

    #[test]
    fn pages_and_bz2() {
        use std::io::Write;
        let xml = r#"<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">
  <siteinfo><sitename>Wikipedia</sitename></siteinfo>
  <page><title>A</title><ns>0</ns><id>1</id><revision><id>5</id>
    <text xml:space="preserve">'''A''' is a &lt;b&gt;letter&lt;/b&gt; &amp;amp; [[sound]].&#10;Second line.</text></revision></page>
  <page><title>B</title><ns>0</ns><id>2</id><redirect title="A" /><revision><text>#REDIRECT [[A]]</text></revision></page>
  <page><title>Talk:A</title><ns>1</ns><id>3</id><revision><text>talk</text></revision></page>
  <page><title>C</title><ns>0</ns><id>4</id><revision><text xml:space="preserve" /></revision></page>
</mediawiki>"#;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("dump.xml");
        std::fs::write(&plain, xml).unwrap();
        let bz = dir.path().join("dump.xml.bz2");
        let mut enc = bzip2::write::BzEncoder::new(
            std::fs::File::create(&bz).unwrap(),
            bzip2::Compression::best(),
        );
        enc.write_all(xml.as_bytes()).unwrap();
        enc.finish().unwrap();
        for p in [&plain, &bz] {
            assert!(is_mediawiki(p).unwrap());
            let mut pages = vec![];
            for_each_page(p, |pg| {
                pages.push(pg);
                Ok(())
            })
            .unwrap();
            assert_eq!(pages.len(), 4);
            assert!(pages[1].redirect && pages[2].namespace == 1 && pages[3].text.is_empty());
            let mut arts = vec![];
            for_each_article(p, |t, x| {
                arts.push((t.to_string(), x.to_string()));
                Ok(())
            })
            .unwrap();
            assert_eq!(
                arts,
                vec![(
                    "A".to_string(),
                    "A is a letter & sound.\nSecond line.\n".to_string()
                )]
            );
        }
        let txt = dir.path().join("x.txt");
        std::fs::write(&txt, "<mediawiki").unwrap();
        assert!(!is_mediawiki(&txt).unwrap());
        let broken = dir.path().join("broken.xml");
        std::fs::write(
            &broken,
            "<mediawiki><page><title>A</title><ns>zero</ns></page>",
        )
        .unwrap();
        let e = for_each_page(&broken, |_| Ok(())).unwrap_err().to_string();
        assert!(e.contains("broken.xml") && e.contains("namespace"), "{e}");
        let mut head = String::new();
        open_text(&bz).unwrap().read_to_string(&mut head).unwrap();
        assert_eq!(head, xml);
    }
}
