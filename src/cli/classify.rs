//! `ferroformer classify`: class probabilities of images with a ViT classifier.

use super::Common;
use anyhow::{bail, Context, Result};
use clap::Args;
use ferroformer::classify::{attention_map, classify_files};
use ferroformer::data::images::Preprocessor;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// An image classifier: a run directory of a `classify` recipe, or a Hugging Face
    /// `ViTForImageClassification` directory with its preprocessor_config.json.
    #[arg(long)]
    pub model: String,
    /// Image files (PNG or JPEG), resized and normalised as the model's preprocessor_config.json
    /// says.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
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
    let dir = ferroformer::pretrained::resolve_model(&a.model)?;
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
            let top: Vec<String> = p
                .top
                .iter()
                .map(|t| format!("{} {:.4}", t.label, t.prob))
                .collect();
            println!("{}\t{}", p.file, top.join("\t"));
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
