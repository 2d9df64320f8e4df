//! `ferroformer serve`: an OpenAI-compatible HTTP server for a causal LM (with adapters per
//! request) and an embedding model.

use super::{adapter_specs, Common};
use anyhow::{bail, Context, Result};
use clap::Args;
use ferroformer::serve::{self, ServeOptions};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The causal LM: a Hugging Face directory, a llama.cpp .gguf file, or an asset name such
    /// as smollm2-135m-instruct.
    #[arg(long)]
    pub model: String,
    /// Keep a GGUF model's matrices quantized (about a quarter of the memory, faster
    /// generation) [default: dequantize to f32].
    #[arg(long, default_value_t = false)]
    pub quantized: bool,
    /// A PEFT adapter directory served beside the base, as `NAME=DIR` (repeatable); a
    /// request's `model` chooses it by NAME.
    #[arg(long, value_name = "NAME=DIR")]
    pub adapter: Vec<String>,
    /// The id clients use for the base model [default: the model's file or asset name].
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// A sentence-embedding model for /v1/embeddings (BERT family directory or asset name,
    /// e.g. all-minilm-l6-v2) [default: none].
    #[arg(long)]
    pub embedding_model: Option<String>,
    /// Address to listen on. Only this machine can connect to the default; use 0.0.0.0 to
    /// serve the network (then set an API key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health [default: the
    /// FERROFORMER_API_KEY environment variable, else no key].
    #[arg(long)]
    pub api_key: Option<String>,
    /// Sequences decoded together at most (continuous batching); later requests wait.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 4)]
    pub max_body_mb: usize,
    /// Largest training file upload (/v1/files), in MiB.
    #[arg(long, default_value_t = 64)]
    pub max_upload_mb: usize,
    /// Where uploaded training files and fine-tuning jobs (their runs, checkpoints and
    /// adapters) are kept; a server restarted on the same directory resumes unfinished jobs
    /// and serves finished ones [default: CACHE/serve, CACHE being FERROFORMER_CACHE or
    /// ~/.cache/ferroformer].
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}

pub fn run(a: ServeArgs, c: &Common) -> Result<()> {
    let api_key = a
        .api_key
        .clone()
        .or_else(|| std::env::var("FERROFORMER_API_KEY").ok())
        .filter(|k| !k.is_empty());
    if a.max_body_mb == 0 || a.max_upload_mb == 0 {
        bail!("--max-body-mb and --max-upload-mb must be at least 1");
    }
    let adapters = adapter_specs(&a.adapter)?;
    let opts = ServeOptions {
        model: a.model.clone(),
        served_name: a.served_model_name.clone(),
        quantized: a.quantized,
        adapters,
        embedding_model: a.embedding_model.clone(),
        api_key,
        max_batch: a.max_batch,
        max_body_bytes: a.max_body_mb << 20,
        max_upload_bytes: a.max_upload_mb << 20,
        data_dir: a
            .data_dir
            .clone()
            .unwrap_or_else(|| ferroformer::assets::cache_dir().join("serve")),
        device: c.device()?,
    };
    let start = std::time::Instant::now();
    let state = serve::start(&opts)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        if c.progress() {
            let names = state.names.read().expect("names").all();
            eprintln!(
                "serving {} in {:.1} s{}",
                names.join(", "),
                start.elapsed().as_secs_f64(),
                if state.api_key.is_some() {
                    " (API key required)"
                } else {
                    ""
                }
            );
        }
        println!("listening on http://{addr}");
        axum::serve(listener, serve::routes::router(state))
            .with_graceful_shutdown(shutdown())
            .await
            .context("the server failed")
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
