//! The embedding model on its own thread, so embedding requests never wait behind decode
//! steps: sentence-transformers embeddings exactly as `ferroformer embed` computes them
//! (inputs longer than the model's limit are truncated, as there).

use crate::infer::embed::SentenceEncoder;
use crate::{Error, Result};
use candle_core::Device;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Embeddings of some texts, and how many tokens they took.
pub type Embedded = Result<(Vec<Vec<f32>>, usize)>;

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Embedded>,
}

/// A handle on the embedding thread.
pub struct Embedder {
    tx: mpsc::Sender<Job>,
    pub dimensions: usize,
}

/// Inputs per forward pass (as `embed`'s default).
const BATCH: usize = 32;

impl Embedder {
    /// Loads the encoder (`--embedding-model`: directory or asset name) and starts its thread.
    pub fn start(model: &str, device: &Device) -> Result<Self> {
        let dir = crate::assets::resolve_model(model)?;
        let enc = SentenceEncoder::load(&dir, device)?;
        let dimensions = enc.model.config.hidden_size;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("embeddings".into())
            .spawn(move || {
                for job in rx {
                    let texts = &job.texts;
                    let out = crate::nn::kernels::on_pool(|| embed(&enc, texts));
                    let _ = job.reply.send(out);
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the embedding thread: {e}")))?;
        Ok(Embedder { tx, dimensions })
    }

    /// Embeds `texts` on the embedding thread.
    pub async fn embed(&self, texts: Vec<String>) -> Embedded {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { texts, reply })
            .map_err(|_| Error::Config("the embedding thread has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Config("the embedding thread has stopped".into()))?
    }
}

fn embed(enc: &SentenceEncoder, texts: &[String]) -> Embedded {
    let toks: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| enc.tokenize(t).map(|t| t.ids))
        .collect::<Result<_>>()?;
    let tokens = toks.iter().map(Vec::len).sum();
    Ok((enc.embed_all(&toks, BATCH, &mut |_| {})?, tokens))
}
