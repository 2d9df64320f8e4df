//! `ferroformer bench`: training and forward throughput on random tokens, printed in the same
//! JSON shape as `bench/throughput.py` and `bench/finetune_torch.py` print for PyTorch, for
//! side-by-side ratios (`bench/compare.sh`).

use super::Common;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferroformer::models::{ArchConfig, CausalModel, Gpt2Config};
use ferroformer::rng::Rng;
use ferroformer::train::Recipe;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Full training steps (forward, backward, AdamW) and forward passes on random tokens: a
    /// fresh GPT, or a pretrained model (--model), whole or with an adapter (--peft), through
    /// the engine `finetune` uses.
    Train(TrainArgs),
    /// Greedy generation with the KV cache: a prompt, then new tokens one at a time (a random
    /// GPT, or a real model with --model).
    Generate(GenerateArgs),
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model size, as for `bench train` [default: 6 layers, 6 heads, 384 dims, vocab 8192,
    /// 1024 positions]. Ignored with --model.
    #[arg(long)]
    pub config: Option<String>,
    /// A real model (Hugging Face directory, .gguf file or asset name); its prompt is
    /// --prompt-text cut to --prompt-tokens tokens [default: a random GPT, random prompt].
    #[arg(long)]
    pub model: Option<String>,
    /// With --model: keep GGUF matrices quantized.
    #[arg(long, default_value_t = false)]
    pub quantized: bool,
    /// With --model: the text whose first --prompt-tokens tokens form the prompt.
    #[arg(long, default_value = BENCH_TEXT)]
    pub prompt_text: String,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    /// Tokens generated after the prompt.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Timed repetitions (the median is reported), after one untimed.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Model size of a fresh GPT-2: a named config (gpt2, ...), a config.json path, or inline
    /// JSON [default: 6 layers, 6 heads, 384 dims, vocab 8192, tanh GELU, tied head]. Ignored
    /// with --model.
    #[arg(long)]
    pub config: Option<String>,
    /// A pretrained causal LM to train instead: a Hugging Face directory, a .gguf file
    /// (dequantized to f32; `--set model.quantized=true` keeps it quantized, with --peft) or an
    /// asset name.
    #[arg(long)]
    pub model: Option<String>,
    /// Train a PEFT adapter (lora, ia3, ln_tuning, prompt_tuning, prefix_tuning) on the frozen
    /// model instead of the whole model; its options as `--set peft.KEY=VALUE` (PEFT's
    /// defaults otherwise) [default: the whole model].
    #[arg(long, value_name = "METHOD")]
    pub peft: Option<String>,
    /// Recipe overrides, as for `finetune` (`train.lr`, `train.grad_accum`, `train.freeze`,
    /// `train.gradient_checkpointing=true`, `peft.r`, ...). The defaults: for a fresh GPT lr
    /// 3e-4, betas (0.9, 0.95), weight decay 0.1, no clipping (as bench/throughput.py); for
    /// --model those of
    /// recipes/domain-shakespeare.toml (lr 1e-4, betas (0.9, 0.999), weight decay 0.01,
    /// clipping at 1.0; as bench/finetune_torch.py).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
}

fn config(a: &TrainArgs) -> Result<Gpt2Config> {
    parse_config(a.config.as_deref(), a.context, a.context)
}

/// The named, file or inline config (default: 6 layers, 6 heads, 384 dims, vocab 8192 and
/// `default_positions`), which must have at least `context` positions.
fn parse_config(arg: Option<&str>, default_positions: usize, context: usize) -> Result<Gpt2Config> {
    let mut cfg = match arg {
        None => {
            let mut c = Gpt2Config::new(8192, default_positions, 384, 6, 6);
            c.activation_function = "gelu_new".into();
            c
        }
        Some(s) => {
            if let Some(c) = Gpt2Config::named(s) {
                c
            } else if s.trim_start().starts_with('{') {
                serde_json::from_str(s).context("--config: invalid JSON")?
            } else {
                Gpt2Config::load(std::path::Path::new(s))?
            }
        }
    };
    if cfg.n_positions < context {
        bail!(
            "--context {context} exceeds the config's n_positions {}",
            cfg.n_positions
        );
    }
    cfg = cfg.with_dropout(0.0);
    Ok(cfg)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// This machine's practical f32 ceiling: the rate of a 2048 x 2048 x 2048 matrix product on
/// the configured threads (the reference point BENCHMARKS.md uses), best of a few. Model FLOPs
/// utilisation (MFU) is the step's model FLOPs (6N + 12 L C T per token) per second over it.
fn matmul_peak_flops() -> f64 {
    use ferroformer::nn::kernels::gemm::{matmul, View, ViewMut};
    let n = 2048;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.01).collect();
    let mut c = vec![0f32; n * n];
    let mut best = f64::MAX;
    for _ in 0..4 {
        let t0 = Instant::now();
        matmul(
            ViewMut::rows(&mut c, n, n, n),
            View::rows(&a, n, n, n),
            View::rows(&a, n, n, n),
            false,
            true,
        );
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`).
fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(cmd: BenchCmd, c: &Common) -> Result<()> {
    match cmd {
        BenchCmd::Train(a) => train(a, c),
        BenchCmd::Generate(a) => generate(a, c),
    }
}

/// The benchmark prompt for real models (bench/llamacpp_generate.py uses the same text).
const BENCH_TEXT: &str = "The old lighthouse keeper climbed the spiral stairs every evening, carrying a lantern and a thermos of sweet tea. From the top he could see the whole bay: fishing boats returning home, gulls circling over the harbour, and the distant hills turning purple.";

fn generate(a: GenerateArgs, c: &Common) -> Result<()> {
    use ferroformer::infer::generate::{generate_ids, SamplingConfig};
    if a.prompt_tokens == 0 || a.new_tokens == 0 || a.repeats == 0 {
        bail!("--prompt-tokens, --new-tokens and --repeats must be positive");
    }
    let device = c.device()?;
    let (model, params, prompt) = match &a.model {
        Some(m) => {
            let p = super::load_model(m, c, a.quantized)?;
            let mut ids = p.tokenizer.encode(&a.prompt_text)?;
            if ids.len() < a.prompt_tokens {
                bail!(
                    "--prompt-text has {} tokens, fewer than --prompt-tokens {}",
                    ids.len(),
                    a.prompt_tokens
                );
            }
            ids.truncate(a.prompt_tokens);
            (p.model, p.store.numel() + p.quantized_numel, ids)
        }
        None => {
            let cfg = parse_config(a.config.as_deref(), 1024, 1)?;
            let mut rng = Rng::new(1);
            let prompt: Vec<u32> = (0..a.prompt_tokens)
                .map(|_| rng.below(cfg.vocab_size as u64) as u32)
                .collect();
            let (model, store) = CausalModel::init(&ArchConfig::new(cfg)?, &device, 0)?;
            (model, store.numel(), prompt)
        }
    };
    if a.prompt_tokens + a.new_tokens > model.max_positions() {
        bail!(
            "prompt + new tokens exceed the model's {} positions",
            model.max_positions()
        );
    }
    let greedy = SamplingConfig {
        max_tokens: a.new_tokens,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
    };
    let (mut prefill, mut decode) = (vec![], vec![]);
    for i in 0..=a.repeats {
        let t0 = Instant::now();
        let mut first: Option<f64> = None;
        let ids = generate_ids(&model, &prompt, &greedy, &[], &mut |_| {
            // The first token's time is the prompt's (prefill) time.
            first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            Ok(true)
        })?;
        let total = t0.elapsed().as_secs_f64();
        let p = first.unwrap_or(total);
        if i > 0 {
            prefill.push(p);
            decode.push((total - p) / (ids.len().saturating_sub(1)).max(1) as f64);
        }
    }
    let report = serde_json::json!({
        "impl": "ferroformer",
        "prompt_tokens_per_s": a.prompt_tokens as f64 / median(prefill),
        "tokens_per_s": 1.0 / median(decode),
        "peak_rss_mb": peak_rss_mb(),
        "params": params,
        "quantized": a.quantized,
    });
    if c.json {
        println!("{report}");
    } else {
        println!(
            "generation {:.1} tokens/s, prompt {:.0} tokens/s, peak RSS {:.0} MB",
            report["tokens_per_s"].as_f64().unwrap_or(0.0),
            report["prompt_tokens_per_s"].as_f64().unwrap_or(0.0),
            report["peak_rss_mb"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

/// The bench's run: random tokens, no evaluation, no checkpoints.
fn bench_recipe(a: &TrainArgs, fresh: Option<&Gpt2Config>, seed: u64) -> Result<Recipe> {
    let model = match fresh {
        Some(c) => format!(
            "architecture = \"gpt2\"\nn_layer = {}\nn_head = {}\nn_embd = {}\n",
            c.n_layer, c.n_head, c.n_embd
        ),
        None => String::new(),
    };
    let optimizer = if fresh.is_none() {
        "lr = 1e-4\nmin_lr = 1e-5\nbeta1 = 0.9\nbeta2 = 0.999\nweight_decay = 0.01\ngrad_clip = 1.0"
    } else {
        "lr = 3e-4\nmin_lr = 3e-4\nbeta1 = 0.9\nbeta2 = 0.95\nweight_decay = 0.1\ngrad_clip = 0.0"
    };
    let text = format!(
        "name = \"bench\"\nobjective = \"clm\"\n[data]\ncorpus = [\"(random tokens)\"]\n\
         [model]\n{model}[train]\nout_dir = \"(temporary)\"\nsteps = {}\nbatch_size = {}\n\
         context = {}\nwarmup_steps = 0\neval_interval = 1000000\nseed = {seed}\n{optimizer}\n",
        a.warmup + a.steps,
        a.batch,
        a.context,
    );
    let mut set = a.set.clone();
    if let Some(method) = &a.peft {
        ferroformer::peft::PeftType::parse(method)?;
        set.insert(
            0,
            format!("peft.peft_type={}", toml::Value::String(method.clone())),
        );
    }
    if let Some(m) = &a.model {
        set.insert(0, format!("model.init={}", toml::Value::String(m.clone())));
    }
    Ok(Recipe::parse(
        &text,
        &set,
        std::path::Path::new("bench train"),
    )?)
}

fn train(a: TrainArgs, c: &Common) -> Result<()> {
    if a.steps == 0 || a.batch == 0 || a.context == 0 {
        bail!("--steps, --batch and --context must be positive");
    }
    let device = c.device()?;
    let fresh = match &a.model {
        Some(_) => None,
        None if a.peft.is_some() => bail!("--peft needs a pretrained --model to adapt"),
        None => Some(config(&a)?),
    };
    let recipe = bench_recipe(&a, fresh.as_ref(), c.seed.unwrap_or(0))?;
    let (model, store) = match (&recipe.model.init, fresh) {
        (Some(m), _) => {
            let path = ferroformer::assets::resolve_model(m)?;
            if ferroformer::tasks::text::is_gguf(&path) {
                let p = ferroformer::infer::pretrained::PretrainedCausalLm::from_gguf(
                    &path,
                    &device,
                    recipe.model.quantized,
                )?;
                (p.model, p.store)
            } else if recipe.model.quantized {
                bail!("model.quantized needs a .gguf --model");
            } else {
                ferroformer::models::load_dir(&path, &device)?
            }
        }
        (None, Some(cfg)) => CausalModel::init(&ArchConfig::new(cfg)?, &device, 0)?,
        (None, None) => bail!("--set model.init cannot be removed"),
    };
    let config = model.config();
    let r = ferroformer::tasks::throughput::measure(recipe, model, store, a.warmup, a.steps)?;
    // Model FLOPs utilisation, for whole-model training only (an adapter's step does not
    // compute the frozen weights' gradients).
    let mfu_peak = (r.trainable_params == r.params).then(|| {
        let per_token =
            ferroformer::models::params::report(&config, a.batch, Some(a.context), &|_| false)
                .map(|p| p.flops_per_token.train);
        (per_token, matmul_peak_flops())
    });
    let mut report = serde_json::json!({
        "impl": "ferroformer",
        "tokens_per_s": r.tokens_per_s,
        "step_ms_median": r.step_ms_median,
        "forward_tokens_per_s": r.forward_tokens_per_s,
        "peak_rss_mb": r.peak_rss_mb,
        "params": r.params,
        "trainable_params": r.trainable_params,
        "last_loss": r.last_loss,
        "step_ms": r.step_ms,
    });
    if let Some((Ok(per_token), peak)) = mfu_peak {
        report["mfu"] = (per_token * r.tokens_per_s / peak).into();
        report["matmul_peak_gflops"] = (peak / 1e9).into();
    }
    if c.json {
        println!("{report}");
    } else {
        println!(
            "train {:.0} tokens/s ({:.1} ms/step{}), forward {:.0} tokens/s, peak RSS {:.0} MB, {} of {} parameters trained",
            r.tokens_per_s,
            r.step_ms_median,
            match report["mfu"].as_f64() {
                Some(m) => format!(", MFU {:.0}%", 100.0 * m),
                None => String::new(),
            },
            r.forward_tokens_per_s,
            r.peak_rss_mb.unwrap_or(0.0),
            r.trainable_params,
            r.params,
        );
    }
    Ok(())
}
