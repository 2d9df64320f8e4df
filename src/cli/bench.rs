//! `ferroformer bench`: training and forward throughput on random tokens, printed in the same
//! JSON shape as `bench/throughput.py` prints for PyTorch, for side-by-side ratios.

use super::Common;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::{Args, Subcommand};
use ferroformer::models::{ArchConfig, CausalModel, Gpt2Config};
use ferroformer::objective::CausalLm;
use ferroformer::rng::Rng;
use ferroformer::train::{AdamW, AdamWConfig, GradAccumulator};
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Full training steps (forward, backward, AdamW) and forward passes of a GPT.
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
    /// Model size: a named config (gpt2, ...), a config.json path, or inline JSON
    /// [default: 6 layers, 6 heads, 384 dims, vocab 8192, tanh GELU, tied head].
    #[arg(long)]
    pub config: Option<String>,
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

fn train(a: TrainArgs, c: &Common) -> Result<()> {
    if a.steps == 0 || a.batch == 0 || a.context == 0 {
        bail!("--steps, --batch and --context must be positive");
    }
    let device = c.device()?;
    let cfg = config(&a)?;
    let (model, store) = CausalModel::init(&ArchConfig::new(cfg.clone())?, &device, 0)?;
    let mut opt = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    });
    let mut rng = Rng::new(0);
    let n = a.batch * a.context;
    let ids = |rng: &mut Rng| -> Result<Tensor> {
        let v: Vec<u32> = (0..n)
            .map(|_| rng.below(cfg.vocab_size as u64) as u32)
            .collect();
        Ok(Tensor::from_vec(v, (a.batch, a.context), &device)?)
    };
    let (x, y) = (ids(&mut rng)?, ids(&mut rng)?);
    let mut times = vec![];
    for i in 0..a.warmup + a.steps {
        let t0 = Instant::now();
        let loss = CausalLm::train_loss(&model, &x, &y, None)?;
        let mut acc = GradAccumulator::default();
        acc.add(&store, &loss.backward()?)?;
        opt.step(&store, acc.grads(), 3e-4, 1.0)?;
        // Reading the loss forces the step to complete on asynchronous devices.
        loss.to_scalar::<f32>()?;
        if i >= a.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let mut fwd = vec![];
    for i in 0..a.warmup + a.steps {
        let t0 = Instant::now();
        let logits = model.forward(&x, None, None)?;
        logits.sum_all()?.to_scalar::<f32>()?;
        if i >= a.warmup {
            fwd.push(t0.elapsed().as_secs_f64());
        }
    }
    let step = median(times);
    let flops_per_token =
        ferroformer::models::params::gpt2_report(&cfg, a.batch, Some(a.context), &|_| false)?
            .flops_per_token
            .train;
    // Read before the ceiling measurement allocates its own matrices.
    let rss = peak_rss_mb();
    let peak = matmul_peak_flops();
    let report = serde_json::json!({
        "impl": "ferroformer",
        "tokens_per_s": n as f64 / step,
        "step_ms_median": 1000.0 * step,
        "forward_tokens_per_s": n as f64 / median(fwd),
        "peak_rss_mb": rss,
        "mfu": flops_per_token * n as f64 / step / peak,
        "matmul_peak_gflops": peak / 1e9,
        "params": store.numel(),
    });
    if c.json {
        println!("{report}");
    } else {
        println!(
            "train {:.0} tokens/s ({:.1} ms/step, MFU {:.0}% of {:.0} GFLOP/s), forward {:.0} tokens/s, peak RSS {:.0} MB, {} parameters",
            report["tokens_per_s"].as_f64().unwrap_or(0.0),
            1000.0 * step,
            100.0 * report["mfu"].as_f64().unwrap_or(0.0),
            peak / 1e9,
            report["forward_tokens_per_s"].as_f64().unwrap_or(0.0),
            report["peak_rss_mb"].as_f64().unwrap_or(0.0),
            store.numel()
        );
    }
    Ok(())
}
