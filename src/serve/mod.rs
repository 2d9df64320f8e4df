//! The HTTP server: OpenAI's API (chat, completions, embeddings, models) over a causal LM
//! served with continuous batching, PEFT adapters chosen per request and loaded at run time,
//! and an API key. axum on tokio answers HTTP; the models run on their own threads
//! ([`worker`] for generation, one for embeddings), never on the async runtime.

pub mod api;
pub mod completions;
pub mod embedder;
pub mod jobs;
pub mod routes;
pub mod tuning;
pub mod worker;

use crate::infer::pretrained::{PretrainedCausalLm, Prompting};
use crate::io::gguf::SpecialTokens;
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::Device;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, RwLock};

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The causal LM (`--model`: directory, .gguf or asset name).
    pub model: String,
    /// The id clients use for the base model [default: the model's file or asset name].
    pub served_name: Option<String>,
    pub quantized: bool,
    /// Adapters loaded at start, `(name, dir)`.
    pub adapters: Vec<(String, PathBuf)>,
    pub embedding_model: Option<String>,
    pub api_key: Option<String>,
    /// Sequences decoded together at most; later requests wait.
    pub max_batch: usize,
    /// Largest JSON request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest training file upload, in bytes.
    pub max_upload_bytes: usize,
    /// Where uploads and fine-tuning jobs live.
    pub data_dir: PathBuf,
    pub device: Device,
}

/// What the HTTP side knows of the causal LM (the model itself lives on the worker).
pub struct ModelInfo {
    pub tokenizer: Tokenizer,
    pub special: SpecialTokens,
    pub chat_template: Option<String>,
    pub source: PathBuf,
    /// Context length.
    pub max_positions: usize,
    /// Tokens that end a reply (end of sequence, the template's end of turn), found once.
    pub stop_ids: Vec<u32>,
    pub vocab_size: usize,
}

impl ModelInfo {
    pub fn prompting(&self) -> Prompting<'_> {
        Prompting {
            tokenizer: &self.tokenizer,
            special: &self.special,
            chat_template: self.chat_template.as_deref(),
            source: &self.source,
        }
    }
}

/// A model id clients may name.
#[derive(Debug, Clone)]
pub struct Served {
    /// The worker's name for the adapter (`None`: the base model).
    pub adapter: Option<String>,
    pub created: u64,
}

/// The ids clients may name, and what each is.
#[derive(Debug)]
pub struct Names {
    pub base: String,
    pub embedding: Option<String>,
    /// Adapters by public id.
    pub adapters: BTreeMap<String, Served>,
    next: usize,
}

impl Names {
    /// A fresh internal adapter name (public ids may hold characters parameter names cannot).
    pub fn internal_name(&mut self) -> String {
        self.next += 1;
        format!("served{}", self.next)
    }

    /// Every model id, the base first.
    pub fn all(&self) -> Vec<String> {
        std::iter::once(self.base.clone())
            .chain(self.adapters.keys().cloned())
            .chain(self.embedding.clone())
            .collect()
    }
}

/// Everything the request handlers share.
pub struct AppState {
    pub info: ModelInfo,
    pub generation: mpsc::Sender<worker::Command>,
    pub load: Arc<worker::Load>,
    pub embedder: Option<embedder::Embedder>,
    pub names: Arc<RwLock<Names>>,
    pub jobs: Arc<jobs::Jobs>,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub started: u64,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Nanoseconds since the Unix epoch (unique names).
pub fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The name a `--model` argument is served under: a file's stem, a directory's name, or the
/// asset name as given.
pub fn default_name(arg: &str) -> String {
    let p = Path::new(arg);
    if p.exists() {
        let stem = if p.is_dir() {
            p.file_name()
        } else {
            p.file_stem()
        };
        if let Some(s) = stem {
            return s.to_string_lossy().into_owned();
        }
    }
    arg.to_string()
}

/// Loads the models and starts their threads; returns the state the router serves.
pub fn start(opts: &ServeOptions) -> Result<Arc<AppState>> {
    if opts.max_batch == 0 {
        return Err(Error::Config("--max-batch must be at least 1".into()));
    }
    for (_, dir) in &opts.adapters {
        worker::check_servable(dir)?;
    }
    if opts.max_body_bytes == 0 || opts.max_upload_bytes == 0 {
        return Err(Error::Config(
            "body and upload limits must be positive".into(),
        ));
    }
    let p = PretrainedCausalLm::load(&opts.model, &opts.device, opts.quantized)?.for_inference()?;
    let quantized = p.quantized;
    let internal: Vec<(String, PathBuf)> = opts
        .adapters
        .iter()
        .enumerate()
        .map(|(i, (_, dir))| (format!("served{}", i + 1), dir.clone()))
        .collect();
    let p = p.with_adapters(&internal)?;
    // Requests choose their adapter; none is applied unless named.
    p.store.peft().set_active(&[])?;
    let info = ModelInfo {
        tokenizer: p.tokenizer.clone(),
        special: p.special.clone(),
        chat_template: p.chat_template.clone(),
        source: p.source.clone(),
        max_positions: p.model.max_positions(),
        stop_ids: p.stop_tokens(),
        vocab_size: p.model.vocab_size(),
    };
    let started = now();
    let names = Names {
        base: opts
            .served_name
            .clone()
            .unwrap_or_else(|| default_name(&opts.model)),
        embedding: opts.embedding_model.as_deref().map(default_name),
        adapters: opts
            .adapters
            .iter()
            .zip(&internal)
            .map(|((public, _), (name, _))| {
                (
                    public.clone(),
                    Served {
                        adapter: Some(name.clone()),
                        created: started,
                    },
                )
            })
            .collect(),
        next: internal.len(),
    };
    if names.adapters.contains_key(&names.base) {
        return Err(Error::Config(format!(
            "an adapter is named {:?}, like the base model",
            names.base
        )));
    }
    let embedder = match &opts.embedding_model {
        Some(m) => Some(embedder::Embedder::start(m, &opts.device)?),
        None => None,
    };
    let (tx, rx) = mpsc::channel();
    let tokenizer = p.tokenizer.clone();
    let max_batch = opts.max_batch;
    let load = Arc::new(worker::Load::default());
    let worker_load = load.clone();
    std::thread::Builder::new()
        .name("generation".into())
        .spawn(move || worker::run(p, &tokenizer, rx, max_batch, &worker_load))
        .map_err(|e| Error::Config(format!("cannot start the generation thread: {e}")))?;
    let names = Arc::new(RwLock::new(names));
    let base = jobs::Base {
        name: names.read().expect("names").base.clone(),
        source: info.source.clone(),
        quantized,
        device: opts.device.clone(),
    };
    let (reg_names, reg_tx) = (names.clone(), tx.clone());
    let register: jobs::Register = Box::new(move |public, dir| {
        let internal = reg_names.write().expect("names").internal_name();
        let (reply, rx) = tokio::sync::oneshot::channel();
        let stopped = || Error::Config("the generation thread has stopped".into());
        reg_tx
            .send(worker::Command::LoadAdapter {
                name: internal.clone(),
                dir: dir.to_path_buf(),
                reply,
            })
            .map_err(|_| stopped())?;
        rx.blocking_recv().map_err(|_| stopped())??;
        reg_names.write().expect("names").adapters.insert(
            public.to_string(),
            Served {
                adapter: Some(internal),
                created: now(),
            },
        );
        Ok(())
    });
    let (jobs, finished) = jobs::Jobs::start(&opts.data_dir, base, register)?;
    // The adapters of jobs finished before a restart are served again.
    for job in finished {
        if let (Some(name), Some(dir)) = (&job.fine_tuned_model, &job.adapter_dir) {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let internal = names.write().expect("names").internal_name();
            let sent = tx.send(worker::Command::LoadAdapter {
                name: internal.clone(),
                dir: dir.clone(),
                reply,
            });
            match sent.ok().and_then(|_| rx.blocking_recv().ok()) {
                Some(Ok(())) => {
                    names.write().expect("names").adapters.insert(
                        name.clone(),
                        Served {
                            adapter: Some(internal),
                            created: job.finished_at.unwrap_or(started),
                        },
                    );
                }
                Some(Err(e)) => eprintln!("warning: {name} ({}): {e}", dir.display()),
                None => return Err(Error::Config("the generation thread has stopped".into())),
            }
        }
    }
    Ok(Arc::new(AppState {
        info,
        generation: tx,
        load,
        embedder,
        names,
        jobs,
        api_key: opts.api_key.clone(),
        max_body_bytes: opts.max_body_bytes,
        max_upload_bytes: opts.max_upload_bytes,
        started,
    }))
}
