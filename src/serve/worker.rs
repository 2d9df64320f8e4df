//! The generation worker: one thread owns the causal LM and serves every generation request
//! with continuous batching. Each decode step advances every active sequence by one token
//! (sequences of the same adapter share one batched forward pass, `CausalModel::hidden_rows`,
//! each with its own KV cache); new requests are prefilled and join between steps, and a
//! sequence leaves as soon as it stops, so nobody waits for the longest one. Adapters are
//! switched per group of rows without reloading the base, and loaded or unloaded between
//! steps.

use crate::infer::generate::{pick, SamplingConfig, StopText};
use crate::infer::pretrained::PretrainedCausalLm;
use crate::nn::kernels::on_pool;
use crate::nn::KvCache;
use crate::peft::PeftType;
use crate::rng::Rng;
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use tokio::sync::{mpsc::UnboundedSender, oneshot};

/// One sequence to generate.
pub struct Generation {
    /// The prompt's token ids (non-empty, within the vocabulary and the context).
    pub prompt: Vec<u32>,
    /// The adapter applied (the worker's name for it), or the base model.
    pub adapter: Option<String>,
    pub sampling: SamplingConfig,
    /// Token ids that end the sequence (not part of the text).
    pub stop_ids: Vec<u32>,
    /// Strings that end the text (not part of it).
    pub stop_text: Vec<String>,
    /// Which of the request's choices this is (sent with every event).
    pub index: usize,
    /// Where the text goes as it is generated; a closed receiver (the client left) ends the
    /// sequence and frees its place.
    pub events: UnboundedSender<(usize, Event)>,
}

/// Why a sequence ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token or string.
    Stop,
    /// `max_tokens` (or the context) reached.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What the worker sends back for a sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text (complete UTF-8, never the start of a stop string still undecided).
    Text(String),
    /// The end: why, and how many tokens were generated.
    Done { finish: Finish, tokens: usize },
    /// The model failed on this sequence.
    Failed(String),
}

/// What the worker is asked to do.
pub enum Command {
    Generate(Generation),
    /// Loads a PEFT adapter directory under `name`; the reply comes once it can be used.
    LoadAdapter {
        name: String,
        dir: PathBuf,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Unloads an adapter once no sequence uses it any more.
    UnloadAdapter {
        name: String,
    },
}

/// The adapter kinds a request may choose: those applied by a switch every layer reads.
/// Prompt and prefix tuning are built into the model's inputs, and `modules_to_save` or
/// trained biases replace base weights every request would then see.
pub fn check_servable(dir: &std::path::Path) -> Result<()> {
    let cfg = crate::peft::adapter_io::read_config(dir)?;
    if matches!(
        cfg.peft_type,
        PeftType::PromptTuning | PeftType::PrefixTuning
    ) {
        return Err(Error::format(
            dir,
            "prompt and prefix tuning adapters cannot be chosen per request (their virtual tokens are part of the model's inputs); merge or serve them with `generate --adapter`",
        ));
    }
    if cfg.modules_to_save.as_ref().is_some_and(|m| !m.is_empty())
        || cfg.bias != crate::peft::BiasMode::None
    {
        return Err(Error::format(
            dir,
            "this adapter replaces base weights (modules_to_save or biases), which every other request would see; it cannot be served beside others",
        ));
    }
    Ok(())
}

type Stream<'t> = tokenizers::DecodeStream<
    't,
    tokenizers::models::ModelWrapper,
    tokenizers::normalizers::NormalizerWrapper,
    tokenizers::pre_tokenizers::PreTokenizerWrapper,
    tokenizers::processors::PostProcessorWrapper,
    tokenizers::decoders::DecoderWrapper,
>;

/// A sequence being generated.
struct Seq<'t> {
    g: Generation,
    caches: Vec<KvCache>,
    rng: Rng,
    /// The token chosen last, to be fed at the next step.
    next: u32,
    produced: usize,
    stream: Stream<'t>,
    stop: StopText,
    done: bool,
}

impl Seq<'_> {
    fn send(&mut self, e: Event) {
        if self.g.events.send((self.g.index, e)).is_err() {
            // The client is gone: nothing more to compute for it.
            self.done = true;
        }
    }

    fn finish(&mut self, finish: Finish) {
        // Text held back as the possible start of a stop string that never came.
        let rest = self.stop.finish();
        if !rest.is_empty() {
            self.send(Event::Text(rest));
        }
        self.send(Event::Done {
            finish,
            tokens: self.produced,
        });
        self.done = true;
    }

    /// Takes the token chosen from `logits`: sends its text, or ends the sequence.
    fn accept(&mut self, logits: &[f32]) {
        let id = pick(logits, &self.g.sampling, &mut self.rng);
        if self.g.stop_ids.contains(&id) {
            return self.finish(Finish::Stop);
        }
        self.produced += 1;
        self.next = id;
        let piece = match self.stream.step(id) {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => {
                self.send(Event::Failed(format!("tokenizer: {e}")));
                self.done = true;
                return;
            }
        };
        let (text, stopped) = self.stop.push(&piece);
        if !text.is_empty() {
            self.send(Event::Text(text));
        }
        if stopped {
            self.finish(Finish::Stop);
        } else if self.produced >= self.g.sampling.max_tokens {
            self.finish(Finish::Length);
        }
    }

    fn fail(&mut self, e: &Error) {
        self.send(Event::Failed(e.to_string()));
        self.done = true;
    }
}

/// The worker's model and its adapters.
struct Model {
    p: PretrainedCausalLm,
    /// The adapter the model's switch is set to.
    current: Option<Option<String>>,
}

impl Model {
    fn select(&mut self, adapter: &Option<String>) -> Result<()> {
        if self.current.as_ref() != Some(adapter) {
            let names: Vec<&str> = adapter.iter().map(String::as_str).collect();
            self.p.store.peft().set_active(&names)?;
            self.current = Some(adapter.clone());
        }
        Ok(())
    }

    /// Loads an adapter and rebuilds the model with it (the base weights are shared, not
    /// reloaded); on failure the model is left as it was.
    fn load_adapter(&mut self, name: &str, dir: &std::path::Path) -> Result<()> {
        check_servable(dir)?;
        crate::peft::adapter_io::load_adapter(&mut self.p.store, dir, name)?;
        let built = self
            .rebuild()
            .and_then(|_| crate::peft::adapter_io::check_adapters_used(&self.p.store));
        if let Err(e) = built {
            let _ = self.p.store.remove_adapter(name);
            self.rebuild()?;
            return Err(e);
        }
        Ok(())
    }

    fn unload_adapter(&mut self, name: &str) -> Result<()> {
        self.p.store.remove_adapter(name)?;
        self.rebuild()
    }

    /// Rebuilds the model from the store, everything frozen (no backward graph).
    fn rebuild(&mut self) -> Result<()> {
        let all = self.p.store.vars().keys().cloned().collect();
        self.p.store.freeze(&all)?;
        self.p.model = crate::models::CausalModel::new(&self.p.model.config(), &mut self.p.store)?;
        self.current = None;
        Ok(())
    }

    /// Prefills a new sequence: its caches, and its first token chosen.
    fn start<'t>(&mut self, g: Generation, tok: &'t Tokenizer) -> Seq<'t> {
        let mut seq = Seq {
            caches: self.p.model.new_caches(),
            rng: Rng::new(g.sampling.seed),
            next: 0,
            produced: 0,
            stream: tok.inner.decode_stream(false),
            stop: StopText::new(g.stop_text.clone()),
            done: false,
            g,
        };
        let logits = self.select(&seq.g.adapter).and_then(|_| {
            let (model, prompt, caches) = (&self.p.model, &seq.g.prompt, &mut seq.caches);
            on_pool(|| {
                let x = Tensor::new(prompt.as_slice(), model.device())?.unsqueeze(0)?;
                let h = model.hidden(&x, Some(caches), None)?;
                let last = h.narrow(1, prompt.len() - 1, 1)?;
                Ok(model.logits(&last)?.flatten_all()?.to_vec1::<f32>()?)
            })
        });
        match logits {
            Ok(l) => seq.accept(&l),
            Err(e) => seq.fail(&e),
        }
        seq
    }

    /// One decode step for `rows` (all of one adapter).
    fn step(&mut self, rows: &mut [&mut Seq]) -> Result<()> {
        self.select(&rows[0].g.adapter)?;
        let ids: Vec<u32> = rows.iter().map(|s| s.next).collect();
        let mut caches: Vec<Vec<KvCache>> = rows
            .iter_mut()
            .map(|s| std::mem::take(&mut s.caches))
            .collect();
        let model = &self.p.model;
        let out = crate::nn::kernels::team::decode(|| {
            let h = model.hidden_rows(&ids, &mut caches)?;
            Ok::<_, Error>(model.logits(&h)?.squeeze(1)?.to_vec2::<f32>()?)
        });
        for (s, c) in rows.iter_mut().zip(caches) {
            s.caches = c;
        }
        for (s, l) in rows.iter_mut().zip(out?) {
            s.accept(&l);
        }
        Ok(())
    }
}

/// How busy the worker is, for `/health`.
#[derive(Debug, Default)]
pub struct Load {
    /// Sequences being generated.
    pub active: AtomicUsize,
    /// Sequences waiting for a place in the batch.
    pub waiting: AtomicUsize,
}

/// Runs the worker until every sender of `rx` is gone.
pub fn run(
    p: PretrainedCausalLm,
    tokenizer: &Tokenizer,
    rx: Receiver<Command>,
    max_batch: usize,
    load: &Load,
) {
    let mut m = Model { p, current: None };
    let mut active: Vec<Seq> = Vec::new();
    let mut waiting: VecDeque<Generation> = VecDeque::new();
    let mut retiring: Vec<String> = Vec::new();
    loop {
        // Block only when there is nothing to compute.
        let mut incoming = Vec::new();
        if active.is_empty() && waiting.is_empty() {
            match rx.recv() {
                Ok(c) => incoming.push(c),
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(c) => incoming.push(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if active.is_empty() && waiting.is_empty() => {
                    return
                }
                Err(TryRecvError::Disconnected) => break,
            }
        }
        for c in incoming {
            match c {
                Command::Generate(g) => waiting.push_back(g),
                Command::LoadAdapter { name, dir, reply } => {
                    let _ = reply.send(m.load_adapter(&name, &dir));
                }
                Command::UnloadAdapter { name } => retiring.push(name),
            }
        }
        while active.len() < max_batch {
            let Some(g) = waiting.pop_front() else { break };
            if g.events.is_closed() {
                continue;
            }
            active.push(m.start(g, tokenizer));
        }
        active.retain(|s| !s.done);
        // Sequences of one adapter share a step; adapters take turns.
        let mut groups: Vec<Option<String>> = Vec::new();
        for s in &active {
            if !groups.contains(&s.g.adapter) {
                groups.push(s.g.adapter.clone());
            }
        }
        for adapter in groups {
            let mut rows: Vec<&mut Seq> = active
                .iter_mut()
                .filter(|s| s.g.adapter == adapter && !s.g.events.is_closed())
                .collect();
            if rows.is_empty() {
                continue;
            }
            if let Err(e) = m.step(&mut rows) {
                rows.iter_mut().for_each(|s| s.fail(&e));
            }
        }
        active.retain(|s| !s.done && !s.g.events.is_closed());
        load.active.store(active.len(), Ordering::Relaxed);
        load.waiting.store(waiting.len(), Ordering::Relaxed);
        retiring.retain(|name| {
            let in_use = active
                .iter()
                .map(|s| &s.g.adapter)
                .chain(waiting.iter().map(|g| &g.adapter))
                .any(|a| a.as_deref() == Some(name.as_str()));
            if in_use {
                return true;
            }
            if let Err(e) = m.unload_adapter(name) {
                eprintln!("warning: unloading adapter {name}: {e}");
            }
            false
        });
    }
}
