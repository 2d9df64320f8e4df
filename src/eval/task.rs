//! Evaluation tasks as data, in lm-evaluation-harness's terms, so users add tasks without code
//! and our numbers mean what theirs do.
//!
//! A task is a TOML file:
//!
//! ```toml
//! name = "storycloze"
//! output_type = "multiple_choice"          # or "generate_until"
//! description = ""                         # text before the exemplars
//! doc_to_text = "{{[InputSentence1, InputSentence2, InputSentence3, InputSentence4]|join(' ')}}"
//! doc_to_choice = "{{[RandomFifthSentenceQuiz1, RandomFifthSentenceQuiz2]}}"
//! doc_to_target = "{{AnswerRightEnding|int - 1}}"
//! fewshot_split = "validation"             # exemplars come from here
//! test_split = "test"                      # documents evaluated
//! [splits]
//! validation = "asset:storycloze/cloze_test_spring2016_val.tsv"
//! test = { path = "data/test.csv", format = "csv", encoding = "utf-8" }
//! ```
//!
//! Templates are Jinja (minijinja, with Python's string methods), strict about undefined
//! fields. As in lm-eval, a template that is exactly a field's name means that field, and one
//! that is a single `{{ expression }}` keeps the expression's value (a list of choices, an
//! integer answer index); anything else renders to text. `doc_to_choice` may also be a TOML list
//! of templates. `doc_to_target` gives an index into the choices, a choice's text, or (for
//! generation) the reference answer or a list of accepted answers.
//!
//! Data files: JSON lines (or a JSON array) of objects, TSV with a header row (no quoting, as
//! TSV is written), CSV with a header row (RFC 4180 quoting), or fastText lines
//! (`__label__NAME text`, fields `label` and `text`). Paths are relative to the task file, or
//! `asset:NAME/FILE`.
//!
//! Length: one concept (the task format: parsing, templates, sources, validation) whose parts
//! share private types; a quarter of the file is its tests.

use crate::rng::PyRandom;
use crate::{Error, Result};
use minijinja::Value;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The tasks built into the binary, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("storycloze", include_str!("../../tasks/storycloze.toml")),
    ("polarity", include_str!("../../tasks/polarity.toml")),
];

/// How a task is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputType {
    /// Log-likelihood of each choice after the context.
    MultipleChoice,
    /// Greedy generation until a stop string, scored by exact match.
    GenerateUntil,
}

pub use super::task_data::{read_docs, Doc};

/// What `doc_to_target` gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// An index into the choices.
    Index(usize),
    /// Accepted answers (the first is the one exemplars show).
    Text(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChoiceToml {
    One(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SplitToml {
    Path(String),
    Full {
        path: String,
        format: Option<String>,
        encoding: Option<String>,
    },
}

fn default_output_type() -> String {
    "multiple_choice".into()
}
fn default_target_delimiter() -> String {
    " ".into()
}
fn default_fewshot_delimiter() -> String {
    "\n\n".into()
}
fn default_seed() -> u64 {
    1234
}
fn default_max_gen_toks() -> usize {
    256
}
fn default_true() -> bool {
    true
}

/// Generation settings of a `generate_until` task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// Stop strings [default: the few-shot delimiter].
    #[serde(default)]
    pub until: Option<Vec<String>>,
    /// Most tokens generated per document.
    #[serde(default = "default_max_gen_toks")]
    pub max_gen_toks: usize,
    /// Trim whitespace around the generated answer before matching (lm-eval tasks do this with
    /// a filter).
    #[serde(default = "default_true")]
    pub strip: bool,
    /// Exact match ignoring case.
    #[serde(default)]
    pub ignore_case: bool,
    /// Exact match ignoring ASCII punctuation.
    #[serde(default)]
    pub ignore_punctuation: bool,
}

impl Default for Generation {
    fn default() -> Self {
        Generation {
            until: None,
            max_gen_toks: default_max_gen_toks(),
            strip: true,
            ignore_case: false,
            ignore_punctuation: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskToml {
    name: Option<String>,
    #[serde(default = "default_output_type")]
    output_type: String,
    #[serde(default)]
    description: String,
    doc_to_text: String,
    doc_to_target: String,
    doc_to_choice: Option<ChoiceToml>,
    /// The text a sentence encoder embeds (few-shot classifiers) [default: doc_to_text].
    embed_text: Option<String>,
    #[serde(default = "default_target_delimiter")]
    target_delimiter: String,
    #[serde(default = "default_fewshot_delimiter")]
    fewshot_delimiter: String,
    fewshot_split: Option<String>,
    test_split: String,
    #[serde(default = "default_seed")]
    fewshot_seed: u64,
    #[serde(default)]
    generation: Generation,
    splits: BTreeMap<String, SplitToml>,
}

/// How a template is applied (lm-eval's rules).
#[derive(Debug, Clone)]
enum Form {
    /// The source is a field name: that field's value.
    Field(String),
    /// The source is one `{{ expression }}`: the expression's value.
    Expr(String),
    /// Rendered to text (registered in the environment under its key).
    Text,
}

#[derive(Debug, Clone)]
struct Tmpl {
    /// `doc_to_text`, `doc_to_choice[1]`, ...
    key: String,
    form: Form,
    /// Line of the task file where the template starts.
    line: usize,
}

/// A loaded task with its documents.
pub struct Task {
    pub name: String,
    /// The task file (or `built-in:NAME`).
    pub path: PathBuf,
    pub output_type: OutputType,
    pub description: String,
    pub target_delimiter: String,
    pub fewshot_delimiter: String,
    pub fewshot_split: String,
    pub test_split: String,
    pub fewshot_seed: u64,
    pub generation: Generation,
    /// Documents of each split.
    pub splits: BTreeMap<String, Vec<Doc>>,
    /// Each split's file.
    pub files: BTreeMap<String, PathBuf>,
    text: Tmpl,
    target: Tmpl,
    choice: Vec<Tmpl>,
    embed: Option<Tmpl>,
    env: minijinja::Environment<'static>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("splits", &self.files)
            .finish()
    }
}

/// Jinja as lm-eval configures it: strict about undefined names, trailing newlines kept,
/// Python's string methods available.
fn env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env
}

/// The line (1-based) of `key = ...` in a TOML text, for error messages.
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

/// The inner expression of a template that is exactly one `{{ ... }}`.
fn sole_expression(src: &str) -> Option<&str> {
    let inner = src.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.trim_start_matches('-').trim_end_matches('-');
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%")).then_some(inner)
}

impl Task {
    /// Loads a task: a TOML file, or the name of a built-in task (see [`BUILTIN`]).
    pub fn load(arg: &str) -> Result<Task> {
        let path = Path::new(arg);
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            return Task::parse(&text, path, &base);
        }
        match BUILTIN.iter().find(|(n, _)| *n == arg) {
            Some((name, text)) => {
                Task::parse(text, Path::new(&format!("built-in:{name}")), Path::new("."))
            }
            None => Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "no such task file, and not a built-in task ({})",
                        BUILTIN.iter().map(|b| b.0).collect::<Vec<_>>().join(", ")
                    ),
                ),
            )),
        }
    }

    /// Parses a task file's text (`path` names it in errors; data paths are relative to
    /// `base`) and reads its data.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Task> {
        let t: TaskToml =
            toml::from_str(text).map_err(|e| Error::format(path, format!("invalid task: {e}")))?;
        let output_type = match t.output_type.as_str() {
            "multiple_choice" => OutputType::MultipleChoice,
            "generate_until" => OutputType::GenerateUntil,
            o => {
                return Err(Error::format(
                    path,
                    format!(
                        "line {}: output_type {o:?} is not multiple_choice or generate_until",
                        key_line(text, "output_type")
                    ),
                ))
            }
        };
        let fewshot_split = t.fewshot_split.unwrap_or_else(|| t.test_split.clone());
        for (key, split) in [
            ("test_split", &t.test_split),
            ("fewshot_split", &fewshot_split),
        ] {
            if !t.splits.contains_key(split) {
                return Err(Error::format(
                    path,
                    format!(
                        "line {}: {key} {split:?} is not in [splits] ({})",
                        key_line(text, key),
                        t.splits.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        if output_type == OutputType::MultipleChoice && t.doc_to_choice.is_none() {
            return Err(Error::format(
                path,
                "a multiple_choice task needs doc_to_choice",
            ));
        }
        let mut splits = BTreeMap::new();
        let mut files = BTreeMap::new();
        for (name, spec) in &t.splits {
            if name != &t.test_split && name != &fewshot_split {
                continue;
            }
            let (p, format, encoding) = match spec {
                SplitToml::Path(p) => (p.as_str(), None, None),
                SplitToml::Full {
                    path,
                    format,
                    encoding,
                } => (path.as_str(), format.as_deref(), encoding.as_deref()),
            };
            let file = if p.starts_with("asset:") {
                crate::assets::resolve(p)?
            } else {
                base.join(p)
            };
            let docs = read_docs(&file, format, encoding.unwrap_or("utf-8"))?;
            splits.insert(name.clone(), docs);
            files.insert(name.clone(), file);
        }
        let mut env = env();
        let fields: Vec<String> = splits
            .values()
            .flat_map(|d| d.first())
            .flat_map(|d| d.keys().cloned())
            .collect();
        let mut make = |key: String, source: String, line: usize| -> Result<Tmpl> {
            let form = if fields.contains(&source) {
                Form::Field(source.clone())
            } else if let Some(e) = sole_expression(&source) {
                Form::Expr(e.to_string())
            } else {
                env.add_template_owned(key.clone(), source.clone())
                    .map_err(|e| template_err(path, &key, line, &e))?;
                Form::Text
            };
            Ok(Tmpl { key, form, line })
        };
        let text_t = make(
            "doc_to_text".into(),
            t.doc_to_text,
            key_line(text, "doc_to_text"),
        )?;
        let target_t = make(
            "doc_to_target".into(),
            t.doc_to_target,
            key_line(text, "doc_to_target"),
        )?;
        let choice_line = key_line(text, "doc_to_choice");
        let choice = match t.doc_to_choice {
            None => vec![],
            Some(ChoiceToml::One(s)) => vec![make("doc_to_choice".into(), s, choice_line)?],
            Some(ChoiceToml::List(list)) => {
                if list.is_empty() {
                    return Err(Error::format(
                        path,
                        format!("line {choice_line}: doc_to_choice is an empty list"),
                    ));
                }
                list.into_iter()
                    .enumerate()
                    .map(|(i, s)| make(format!("doc_to_choice[{i}]"), s, choice_line))
                    .collect::<Result<_>>()?
            }
        };
        let embed = t
            .embed_text
            .map(|s| make("embed_text".into(), s, key_line(text, "embed_text")))
            .transpose()?;
        let task = Task {
            name: t.name.unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default()
            }),
            path: path.to_path_buf(),
            output_type,
            description: t.description,
            target_delimiter: t.target_delimiter,
            fewshot_delimiter: t.fewshot_delimiter,
            fewshot_split,
            test_split: t.test_split,
            fewshot_seed: t.fewshot_seed,
            generation: t.generation,
            splits,
            files,
            text: text_t,
            target: target_t,
            choice,
            embed,
            env,
        };
        task.check_fields()?;
        Ok(task)
    }

    fn templates(&self) -> impl Iterator<Item = &Tmpl> {
        [&self.text, &self.target]
            .into_iter()
            .chain(&self.choice)
            .chain(self.embed.as_ref())
    }

    /// Every name a template reads must be a field of the data (checked on each split's first
    /// document), so a typo fails before any model work, naming the task file, template, line
    /// and field.
    fn check_fields(&self) -> Result<()> {
        for t in self.templates() {
            let names = match &t.form {
                Form::Field(_) => continue,
                Form::Expr(e) => self
                    .env
                    .compile_expression_owned(e.clone())
                    .map_err(|e| template_err(&self.path, &t.key, t.line, &e))?
                    .undeclared_variables(false),
                Form::Text => self
                    .env
                    .get_template(&t.key)
                    .map_err(|e| template_err(&self.path, &t.key, t.line, &e))?
                    .undeclared_variables(false),
            };
            for (split, docs) in &self.splits {
                let Some(doc) = docs.first() else { continue };
                let mut missing: Vec<&String> = names
                    .iter()
                    .filter(|n| {
                        !doc.contains_key(*n) && self.env.globals().all(|(g, _)| g != n.as_str())
                    })
                    .collect();
                missing.sort();
                if let Some(name) = missing.first() {
                    let mut have: Vec<&String> = doc.keys().collect();
                    have.sort();
                    return Err(Error::format(
                        &self.path,
                        format!(
                            "line {}: {} uses field `{name}`, which the {split} data ({}) does not have; its fields: {}",
                            t.line,
                            t.key,
                            self.files[split].display(),
                            have.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The documents evaluated.
    pub fn test_docs(&self) -> &[Doc] {
        &self.splits[&self.test_split]
    }

    /// The documents exemplars are drawn from.
    pub fn fewshot_docs(&self) -> &[Doc] {
        &self.splits[&self.fewshot_split]
    }

    fn apply(&self, t: &Tmpl, doc: &Doc) -> Result<Value> {
        let ctx = Value::from(minijinja::value::Serde(doc));
        let err = |e: minijinja::Error| template_err(&self.path, &t.key, t.line, &e);
        match &t.form {
            Form::Field(f) => Ok(Value::from(minijinja::value::Serde(&doc[f]))),
            Form::Expr(e) => self
                .env
                .compile_expression_owned(e.clone())
                .map_err(err)?
                .eval(ctx)
                .map_err(err),
            Form::Text => Ok(Value::from(
                self.env
                    .get_template(&t.key)
                    .map_err(err)?
                    .render(ctx)
                    .map_err(err)?,
            )),
        }
    }

    fn apply_text(&self, t: &Tmpl, doc: &Doc) -> Result<String> {
        let v = self.apply(t, doc)?;
        Ok(match v.as_str() {
            Some(s) => s.to_string(),
            None => v.to_string(),
        })
    }

    /// `doc_to_text`.
    pub fn doc_text(&self, doc: &Doc) -> Result<String> {
        self.apply_text(&self.text, doc)
    }

    /// The text a sentence encoder embeds: `embed_text`, else `doc_to_text`.
    pub fn embed_text(&self, doc: &Doc) -> Result<String> {
        self.apply_text(self.embed.as_ref().unwrap_or(&self.text), doc)
    }

    /// `doc_to_choice` (empty for a generation task without one).
    pub fn choices(&self, doc: &Doc) -> Result<Vec<String>> {
        let out = match self.choice.as_slice() {
            [] => return Ok(vec![]),
            [one] if self.choice_is_list() => {
                let v = self.apply(one, doc)?;
                let items = v.try_iter().ok().filter(|_| v.as_str().is_none()).ok_or_else(|| {
                    Error::format(
                        &self.path,
                        format!(
                            "line {}: doc_to_choice gave {v} for a document, not a list: write it as one expression (\"{{{{[a, b]}}}}\") or as a TOML list of templates",
                            one.line
                        ),
                    )
                })?;
                items
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect()
            }
            many => many
                .iter()
                .map(|t| self.apply_text(t, doc))
                .collect::<Result<Vec<_>>>()?,
        };
        if out.is_empty() {
            return Err(Error::format(
                &self.path,
                "doc_to_choice gave no choices for a document",
            ));
        }
        if let Some(i) = out.iter().position(|c| c.is_empty()) {
            return Err(Error::format(
                &self.path,
                format!("doc_to_choice gave an empty choice (number {i}) for a document"),
            ));
        }
        Ok(out)
    }

    /// Whether `doc_to_choice` is one template giving the whole list.
    fn choice_is_list(&self) -> bool {
        self.choice.len() == 1 && self.choice[0].key == "doc_to_choice"
    }

    /// `doc_to_target`, checked against `choices` (multiple choice: an index or a choice's
    /// text, resolved to its index).
    pub fn target(&self, doc: &Doc, choices: &[String]) -> Result<Target> {
        let v = self.apply(&self.target, doc)?;
        let bad = |msg: String| {
            Error::format(
                &self.path,
                format!("line {}: doc_to_target {msg}", self.target.line),
            )
        };
        let index = if let Some(n) = v.as_i64() {
            Some(n)
        } else {
            v.as_str()
                .filter(|s| !s.is_empty() && s.trim().chars().all(|c| c.is_ascii_digit()))
                .and_then(|s| s.trim().parse().ok())
        };
        match self.output_type {
            OutputType::MultipleChoice => {
                let i = match (index, v.as_str()) {
                    (Some(i), _) => i,
                    (None, Some(s)) => choices.iter().position(|c| c == s).ok_or_else(|| {
                        bad(format!(
                            "gave {s:?}, which is none of the choices {choices:?}"
                        ))
                    })? as i64,
                    (None, None) => return Err(bad(format!("gave {v}, not an index or a choice"))),
                };
                if i < 0 || i as usize >= choices.len() {
                    return Err(bad(format!(
                        "gave index {i} for a document with {} choices",
                        choices.len()
                    )));
                }
                Ok(Target::Index(i as usize))
            }
            OutputType::GenerateUntil => {
                if let (Some(i), false) = (index, choices.is_empty()) {
                    let c = choices.get(i as usize).ok_or_else(|| {
                        bad(format!("gave index {i} but {} choices", choices.len()))
                    })?;
                    return Ok(Target::Text(vec![c.clone()]));
                }
                let answers: Vec<String> = if v.as_str().is_some() || v.as_i64().is_some() {
                    vec![v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())]
                } else if let Ok(items) = v.try_iter() {
                    items
                        .map(|x| {
                            x.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| x.to_string())
                        })
                        .collect()
                } else {
                    vec![v.to_string()]
                };
                if answers.is_empty() {
                    return Err(bad("gave no answers".into()));
                }
                Ok(Target::Text(answers))
            }
        }
    }

    /// The answer text an exemplar shows after its question.
    fn answer_text(&self, doc: &Doc) -> Result<String> {
        let choices = self.choices(doc)?;
        Ok(match self.target(doc, &choices)? {
            Target::Index(i) => choices[i].clone(),
            Target::Text(t) => t[0].clone(),
        })
    }

    /// The exemplars (indices into the few-shot split) for test document `doc`, drawn as
    /// lm-eval draws them from one `random.Random(seed)` advanced over the documents in order:
    /// `sample(pool, k)`, or when exemplars come from the evaluated split, `sample(pool, k+1)`
    /// without the document itself (and anything equal to it), cut to `k`.
    pub fn exemplars(&self, doc: usize, k: usize, rng: &mut PyRandom) -> Result<Vec<usize>> {
        if k == 0 {
            return Ok(vec![]);
        }
        let pool = self.fewshot_docs();
        let same = self.fewshot_split == self.test_split;
        let need = k + usize::from(same);
        if need > pool.len() {
            return Err(Error::Config(format!(
                "{} shots need {need} documents in the exemplar split `{}` ({}), which has {}",
                k,
                self.fewshot_split,
                self.files[&self.fewshot_split].display(),
                pool.len()
            )));
        }
        if !same {
            return Ok(rng.sample(pool.len(), k));
        }
        let this = &self.test_docs()[doc];
        let mut picked: Vec<usize> = rng
            .sample(pool.len(), k + 1)
            .into_iter()
            .filter(|&i| &pool[i] != this)
            .collect();
        if picked.len() < k {
            // Duplicates of the document were drawn: lm-eval draws again from the rest.
            let rest: Vec<usize> = (0..pool.len()).filter(|&i| &pool[i] != this).collect();
            if rest.len() < k {
                return Err(Error::Config(format!(
                    "{k} shots but only {} documents of `{}` differ from document {doc}",
                    rest.len(),
                    self.fewshot_split
                )));
            }
            picked = rng
                .sample(rest.len(), k)
                .into_iter()
                .map(|i| rest[i])
                .collect();
        }
        picked.truncate(k);
        Ok(picked)
    }

    /// The prompt for test document `doc` after the exemplars `shots` (few-shot split
    /// indices): description, then each exemplar's `text + target_delimiter + answer +
    /// fewshot_delimiter`, then the document's text (lm-eval's plain-text context).
    pub fn context(&self, doc: usize, shots: &[usize]) -> Result<String> {
        let mut out = self.description.clone();
        for &s in shots {
            let ex = &self.fewshot_docs()[s];
            let answer = self.answer_text(ex)?;
            out += &self.doc_text(ex)?;
            if !answer.is_empty() {
                out += &self.target_delimiter;
                out += &answer;
                out += &self.fewshot_delimiter;
            }
        }
        out += &self.doc_text(&self.test_docs()[doc])?;
        Ok(out)
    }

    /// Stop strings of a generation task.
    pub fn until(&self) -> Vec<String> {
        self.generation
            .until
            .clone()
            .unwrap_or_else(|| vec![self.fewshot_delimiter.clone()])
    }
}

fn template_err(path: &Path, key: &str, line: usize, e: &minijinja::Error) -> Error {
    let at = match e.line() {
        Some(l) if l > 1 => format!("line {} (template line {l})", line + l - 1),
        _ => format!("line {line}"),
    };
    let what = e
        .detail()
        .map(str::to_string)
        .unwrap_or_else(|| e.kind().to_string());
    Error::format(path, format!("{at}: {key}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(extra: &str, data: &str, ext: &str) -> (tempfile::TempDir, Result<Task>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("d.{ext}")), data).unwrap();
        let toml = format!("{extra}\ntest_split = \"all\"\n[splits]\nall = \"d.{ext}\"\n");
        let p = dir.path().join("t.toml");
        std::fs::write(&p, toml).unwrap();
        let t = Task::load(p.to_str().unwrap());
        (dir, t)
    }

    fn target_of(t: &Task, d: &Doc) -> Target {
        t.target(d, &t.choices(d).unwrap()).unwrap()
    }

    #[test]
    fn templates_follow_lm_eval_rules() {
        let (_d, t) = task(
            "doc_to_text = \"Q: {{q}}\\nA:\"\ndoc_to_choice = \"{{[a, b]}}\"\ndoc_to_target = \"{{ans|int - 1}}\"",
            "q\ta\tb\tans\nwhy?\tbecause\tno\t2\nhow? \"x\"\tso\tthus\t1\n",
            "tsv",
        );
        let t = t.unwrap();
        let d = &t.test_docs()[1];
        assert_eq!(t.doc_text(d).unwrap(), "Q: how? \"x\"\nA:");
        assert_eq!(t.choices(d).unwrap(), ["so", "thus"]);
        assert_eq!(target_of(&t, d), Target::Index(0));
        assert_eq!(target_of(&t, &t.test_docs()[0]), Target::Index(1));
        // A field name is the field; a target may name the choice.
        let (_d, t) = task(
            "doc_to_text = \"q\"\ndoc_to_choice = [\"yes\", \"{{other}}\"]\ndoc_to_target = \"ans\"",
            "{\"q\": \"Is it?\", \"other\": \"no\", \"ans\": \"no\"}\n",
            "jsonl",
        );
        let t = t.unwrap();
        let d = &t.test_docs()[0];
        assert_eq!(t.doc_text(d).unwrap(), "Is it?");
        assert_eq!(t.choices(d).unwrap(), ["yes", "no"]);
        assert_eq!(target_of(&t, d), Target::Index(1));
    }

    #[test]
    fn missing_field_names_file_line_and_field() {
        let (_d, t) = task(
            "doc_to_choice = [\"a\", \"b\"]\ndoc_to_target = \"0\"\ndoc_to_text = \"{{question}} {{cotnext}}\"",
            "question,context\nwhat,\"here, there\"\n",
            "csv",
        );
        let e = t.unwrap_err().to_string();
        assert!(e.contains("t.toml"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("doc_to_text") && e.contains("`cotnext`"), "{e}");
        assert!(e.contains("context, question"), "{e}");
    }

    #[test]
    fn bad_targets_and_choices() {
        let (_d, t) = task(
            "doc_to_text = \"q\"\ndoc_to_choice = \"{{[a, b]}}\"\ndoc_to_target = \"{{n}}\"",
            "{\"q\": \"x\", \"a\": \"1\", \"b\": \"\", \"n\": 5}\n",
            "jsonl",
        );
        let t = t.unwrap();
        let d = &t.test_docs()[0];
        let e = t.choices(d).unwrap_err().to_string();
        assert!(e.contains("empty choice"), "{e}");
        let e = t
            .target(d, &["p".into(), "q".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("index 5") && e.contains("line 3"), "{e}");
        let (_d, t) = task(
            "doc_to_text = \"q\"\ndoc_to_choice = []\ndoc_to_target = \"0\"",
            "{\"q\": \"x\"}\n",
            "jsonl",
        );
        assert!(t.unwrap_err().to_string().contains("empty list"));
    }

    #[test]
    fn exemplars_skip_the_document_and_fail_clearly_when_too_few() {
        let (_d, t) = task(
            "doc_to_text = \"q\"\ndoc_to_choice = [\"a\", \"b\"]\ndoc_to_target = \"0\"",
            "{\"q\": \"x\"}\n{\"q\": \"y\"}\n{\"q\": \"z\"}\n",
            "jsonl",
        );
        let t = t.unwrap();
        let mut rng = PyRandom::new(1234);
        for doc in 0..3 {
            let ex = t.exemplars(doc, 2, &mut rng).unwrap();
            assert_eq!(ex.len(), 2);
            assert!(!ex.contains(&doc));
        }
        let e = t.exemplars(0, 3, &mut rng).unwrap_err().to_string();
        assert!(
            e.contains("3 shots need 4 documents") && e.contains("has 3"),
            "{e}"
        );
        let ctx = t.context(2, &[0, 1]).unwrap();
        assert_eq!(ctx, "x a\n\ny a\n\nz");
    }
}
