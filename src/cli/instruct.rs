//! `ferroformer instruct`: instruction-tune a causal LM (supervised fine-tuning with the loss on
//! the responses), full or with a PEFT adapter.

use super::{pretrain, Common};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use ferroformer::train::Recipe;
use std::path::{Path, PathBuf};

use ferroformer::tasks::sft::INSTRUCT_RECIPE as DEFAULT_RECIPE;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct InstructArgs {
    #[command(subcommand)]
    pub cmd: Option<InstructCmd>,
    /// The model to tune: a run or Hugging Face directory, a .gguf file or an asset name
    /// [default: the recipe's model.init; built-in recipe: smollm2-135m-instruct].
    #[arg(long)]
    pub from: Option<String>,
    /// Instruction data: a JSON / JSON-lines file of Alpaca (instruction, input, output),
    /// ShareGPT (conversations), messages or prompt-completion records, or a directory (its
    /// train.jsonl, as `instruct build` writes, else every .json/.jsonl file). Repeatable.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Recipe file (TOML) [default: the built-in recipes/instruct.toml: LoRA r=16 on every
    /// linear layer, packed 512-token rows, 300 steps x 4 rows, lr 5e-4].
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Chat template: `model` (the model's own), `chatml`, `alpaca`, `llama-2` or a .jinja
    /// file [default: the recipe's sft.template; built-in recipe: model].
    #[arg(long)]
    pub template: Option<String>,
    /// Train an adapter: lora, ia3, ln_tuning, prompt_tuning, prefix_tuning (PEFT's options
    /// via --set peft.r=8 ...); `none` trains every weight [default: the recipe's [peft];
    /// built-in recipe: lora].
    #[arg(long, value_name = "METHOD")]
    pub peft: Option<String>,
    /// Compute the loss on every token, not just the responses (sft.train_on = "all").
    #[arg(long, default_value_t = false)]
    pub train_on_all: bool,
    /// Override a recipe key, e.g. --set train.steps=100 --set sft.packing=false (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the run in the recipe's train.out_dir from its newest checkpoint, exactly.
    #[arg(long, default_value_t = false)]
    pub resume: bool,
}

#[derive(Subcommand, Debug)]
pub enum InstructCmd {
    /// Write an instruction mixture from the project's real data, several phrasings per task
    /// (FLAN-style): sentiment (movie-review polarity), story_ending (Story Cloze),
    /// pronunciation (CMUdict syllables, rhymes, ARPAbet), definition (WordNet glosses to
    /// words), taxonomy (WordNet is-a / part-of). OUT/train.jsonl holds the training families;
    /// OUT/eval.jsonl multiple-choice questions of every family never used for training
    /// (score them with `eval choices`); OUT/manifest.json the counts.
    Build(BuildArgs),
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Families held out from training (comma-separated).
    #[arg(long, default_value = "sentiment,story_ending")]
    pub held_out: String,
    /// Training examples per training family.
    #[arg(long, default_value_t = 2000)]
    pub train_per_family: usize,
    /// Evaluation questions per family.
    #[arg(long, default_value_t = 300)]
    pub eval_per_family: usize,
}

fn build(a: BuildArgs, c: &Common) -> Result<()> {
    use ferroformer::tasks::instruct_mixture::{build, BuildOptions, Sources};
    let opts = BuildOptions {
        seed: c.seed.unwrap_or(1234),
        train_per_family: a.train_per_family,
        eval_per_family: a.eval_per_family,
        held_out: a
            .held_out
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    };
    let manifest = build(&a.out, &Sources::assets()?, &opts)?;
    if c.json {
        println!("{manifest}");
    } else {
        println!(
            "{} training examples, {} evaluation questions in {} (held out: {})",
            manifest["train_examples"],
            manifest["eval_examples"],
            a.out.display(),
            opts.held_out.join(", ")
        );
    }
    Ok(())
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub fn run(a: InstructArgs, c: &Common) -> Result<()> {
    if let Some(InstructCmd::Build(b)) = a.cmd {
        return build(b, c);
    }
    let mut set = vec!["objective=\"sft\"".to_string()];
    let data: Vec<String> = a
        .data
        .iter()
        .map(|p| quoted(&p.display().to_string()))
        .collect();
    set.push(format!("data.corpus=[{}]", data.join(", ")));
    if let Some(t) = &a.template {
        set.push(format!("sft.template={}", quoted(t)));
    }
    if a.train_on_all {
        set.push("sft.train_on=\"all\"".into());
    }
    if let Some(seed) = c.seed {
        set.push(format!("train.seed={seed}"));
    }
    if let Some(from) = &a.from {
        set.push(format!("model.init={}", quoted(from)));
    }
    let (text, origin) = match &a.recipe {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            p.clone(),
        ),
        None => (
            DEFAULT_RECIPE.to_string(),
            PathBuf::from("recipes/instruct.toml"),
        ),
    };
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{}: {}", origin.display(), e.message()))?;
    match a.peft.as_deref() {
        Some("none") => {
            table.remove("peft");
        }
        Some(method) => {
            ferroformer::peft::PeftType::parse(method)?;
            if !table.contains_key("peft") {
                table.insert("peft".into(), toml::Value::Table(Default::default()));
            }
            set.insert(0, format!("peft.peft_type={}", quoted(method)));
        }
        None => {}
    }
    set.extend(a.set);
    let recipe = Recipe::parse(&table.to_string(), &set, Path::new(&origin))?;
    if recipe.model.init.is_none() {
        bail!("nothing to tune: pass --from MODEL or set model.init");
    }
    ferroformer::tasks::resolve(&recipe)?;
    pretrain::train(recipe, a.resume, c)
}
