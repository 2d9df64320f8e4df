//! `ferroformer classify`: class probabilities of images (a ViT classifier) or of texts (a
//! sequence classifier: BERT, GPT-2 or Llama with a classification head).

use super::Common;
use anyhow::{bail, Context, Result};
use clap::Args;
use ferroformer::data::images::Preprocessor;
use ferroformer::infer::classify::{attention_map, classify_files};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// A classifier: a run directory of a `classify` recipe, a Hugging Face
    /// `ViTForImageClassification` directory (with its preprocessor_config.json), or a
    /// `BertForSequenceClassification` / `GPT2ForSequenceClassification` /
    /// `LlamaForSequenceClassification` directory (with its tokenizer.json).
    #[arg(long)]
    pub model: String,
    /// Image files (PNG or JPEG), resized and normalised as the model's preprocessor_config.json
    /// says.
    #[arg(required_unless_present = "text", conflicts_with = "text")]
    pub images: Vec<PathBuf>,
    /// A text to classify (repeatable; `-` reads one text per line from stdin).
    #[arg(long)]
    pub text: Vec<String>,
    /// Texts are cut to this many tokens [default: the run's train.context, else 512].
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Classes listed per image, most probable first.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Write the attention rollout of the (single) image over it to this PNG.
    #[arg(long)]
    pub attention_map: Option<PathBuf>,
}

pub fn run(a: ClassifyArgs, c: &Common) -> Result<()> {
    if a.top_k == 0 {
        bail!("--top-k must be positive");
    }
    if a.attention_map.is_some() && a.images.len() != 1 {
        bail!("--attention-map draws one image; {} given", a.images.len());
    }
    let dir = ferroformer::assets::resolve_model(&a.model)?;
    if !a.text.is_empty() {
        return classify_texts(&a, &dir, c);
    }
    let (model, _store) = ferroformer::models::vit::load_dir(&dir, &c.device()?)?;
    let pre_path = dir.join("preprocessor_config.json");
    let pre = Preprocessor::load(&pre_path, model.config.num_channels)
        .with_context(|| format!("{} needs its image preprocessing", dir.display()))?;
    let files: Vec<&std::path::Path> = a.images.iter().map(|p| p.as_path()).collect();
    let preds = classify_files(&model, &pre, &files, a.top_k)?;
    for p in &preds {
        if c.json {
            println!("{}", serde_json::to_string(p)?);
        } else {
            println!("{}\t{}", p.file, top_line(&p.top));
        }
    }
    if let Some(png) = &a.attention_map {
        attention_map(&model, &pre, &a.images[0], png)?;
        if !c.quiet {
            eprintln!("attention map: {}", png.display());
        }
    }
    Ok(())
}

fn classify_texts(a: &ClassifyArgs, dir: &std::path::Path, c: &Common) -> Result<()> {
    use std::io::BufRead;
    let (model, _store) =
        ferroformer::models::sequence_classifier::load_dir(dir, &c.device()?, None, None, 0)?;
    let tokenizer = ferroformer::text::tokenizer::Tokenizer::load_dir(dir)?;
    let max_len = match a.max_length {
        Some(n) => n,
        None => {
            let recipe = dir.join("recipe.toml");
            if recipe.exists() {
                ferroformer::train::Recipe::load(&recipe, &[])?
                    .train
                    .context
            } else {
                512
            }
        }
    };
    let mut texts = vec![];
    for t in &a.text {
        if t == "-" {
            for line in std::io::stdin().lock().lines() {
                let line = line.context("reading stdin")?;
                if !line.trim().is_empty() {
                    texts.push(line);
                }
            }
        } else {
            texts.push(t.clone());
        }
    }
    if texts.is_empty() {
        bail!("no text to classify");
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let preds =
        ferroformer::infer::classify::classify_texts(&model, &tokenizer, &refs, max_len, a.top_k)?;
    for p in &preds {
        if c.json {
            println!("{}", serde_json::to_string(p)?);
        } else {
            println!("{}\t{}", top_line(&p.top), p.text);
        }
    }
    Ok(())
}

/// `label prob` pairs, tab-separated, most probable first.
fn top_line(top: &[ferroformer::infer::classify::TopClass]) -> String {
    let parts: Vec<String> = top
        .iter()
        .map(|t| format!("{} {:.4}", t.label, t.prob))
        .collect();
    parts.join("\t")
}
