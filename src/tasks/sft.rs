//! Instruction tuning (supervised fine-tuning) of a pretrained causal LM: instruction records
//! (Alpaca, ShareGPT, messages, prompt-completion) rendered with the chat template, the loss on
//! the assistant's turns only, examples packed into `train.context`-token rows with attention
//! kept inside each example (see [`crate::objective::sft`]).

use super::text::causal_start;
use super::{Setup, TaskInfo};
use crate::models::{self, CausalModel, Kind};
use crate::nn::ParamStore;
use crate::objective::sft::{self, SftBatch, Tokenized};
use crate::rng::Rng;
use crate::text::chat::ChatTemplate;
use crate::text::tokenizer::{Tokenizer, EOT};
use crate::train::task::{Batch, BatchLoss, DataSummary, Describe, EpochOrder, Task};
use crate::train::{Prepared, Recipe};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The built-in instruction-tuning recipe (`ferroformer instruct` without `--recipe`, and
/// fine-tuning jobs through the server).
pub const INSTRUCT_RECIPE: &str = include_str!("../../recipes/instruct.toml");

pub static TASK: TaskInfo = TaskInfo {
    objective: "sft",
    what: "instruction tuning",
    architectures: || super::families(|f| f.kind == Kind::Causal),
    adapters: true,
    check,
    prepare,
};

fn check(r: &Recipe) -> Result<()> {
    let s = &r.sft;
    sft::Overflow::parse(&s.overflow)?;
    if !matches!(s.train_on.as_str(), "responses" | "all") {
        return Err(Error::Config(format!(
            "sft.train_on must be \"responses\" or \"all\", not {:?}",
            s.train_on
        )));
    }
    if r.model.init.is_none() {
        return Err(Error::Config(
            "instruction tuning starts from a pretrained model: set model.init or pass --from"
                .into(),
        ));
    }
    Ok(())
}

/// Instruction examples and the rows batches are made of.
pub struct Sft {
    pub model: CausalModel,
    pub tokenizer: Tokenizer,
    train: Vec<Tokenized>,
    val: Vec<Tokenized>,
    /// Each row a list of example indices: one, or several packed.
    train_rows: Vec<Vec<usize>>,
    val_rows: Vec<Vec<usize>>,
    packed: bool,
    notes: Vec<String>,
    order: EpochOrder,
    recipe: Recipe,
}

fn prepare(s: &Setup) -> Result<Prepared> {
    let r = s.recipe;
    let start = causal_start(r, s.from.as_deref(), &[], s.device)?;
    let data = instruct_data(r, &s.corpus, &start.tokenizer, start.template.as_ref())?;
    start.tokenizer.save(&s.out_dir.join("tokenizer.json"))?;
    super::text::check_fits(
        start.model.vocab_size(),
        start.model.max_positions(),
        &start.tokenizer,
        Some(r.train.context),
    )?;
    Ok(Prepared {
        task: Box::new(Sft {
            model: start.model,
            tokenizer: start.tokenizer,
            train_rows: data.rows(&data.train, r),
            val_rows: data.rows(&data.val, r),
            train: data.train,
            val: data.val,
            packed: r.sft.packing,
            notes: data.notes,
            order: EpochOrder::default(),
            recipe: r.clone(),
        }),
        store: start.store,
        files: start.files,
    })
}

struct Data {
    train: Vec<Tokenized>,
    val: Vec<Tokenized>,
    notes: Vec<String>,
}

impl Data {
    /// The rows of `set`: packed best-fit decreasing with `sft.packing`, else one each.
    fn rows(&self, set: &[Tokenized], r: &Recipe) -> Vec<Vec<usize>> {
        if r.sft.packing {
            let lengths: Vec<usize> = set.iter().map(|e| e.ids.len()).collect();
            sft::pack_bfd(&lengths, r.train.context)
        } else {
            (0..set.len()).map(|i| vec![i]).collect()
        }
    }
}

/// The instruction examples of `corpus`, rendered with the template, tokenised with their
/// trained positions and split (seeded, `data.val_fraction` of the examples held out).
fn instruct_data(
    recipe: &Recipe,
    corpus: &[PathBuf],
    tokenizer: &Tokenizer,
    own_template: Option<&ChatTemplate>,
) -> Result<Data> {
    let mut examples = vec![];
    let mut notes = vec![];
    for path in corpus {
        let (ex, report) = crate::data::instruct::read(path)?;
        if let Some(s) = report.summary() {
            notes.push(format!("{}: {s}", path.display()));
        }
        examples.extend(ex);
    }
    // Plain prompt-completion text needs no template.
    let needs_template = examples
        .iter()
        .any(|e| !matches!(e, crate::data::instruct::Example::Text { .. }));
    let template = if needs_template {
        Some(sft::resolve_template(
            &recipe.sft.template,
            own_template,
            tokenizer,
        )?)
    } else {
        None
    };
    let s = &recipe.sft;
    let context = recipe.train.context;
    let drop = s.overflow == "drop";
    let (mut all, report) = sft::tokenize_all(
        &examples,
        template.as_ref(),
        tokenizer,
        s.train_on == "all",
        context,
        sft::Overflow::parse(&s.overflow)?,
    )?;
    if report.truncated + report.dropped > 0 {
        notes.push(format!(
            "of {} examples, {} longer than train.context ({context}) were {}, {} left out{}",
            report.examples,
            report.truncated + if drop { report.dropped } else { 0 },
            if drop { "left out" } else { "truncated" },
            report.dropped,
            if drop { "" } else { " (nothing left to train)" }
        ));
    }
    if all.is_empty() {
        return Err(Error::Data(
            "no instruction example has anything to train".into(),
        ));
    }
    let mut rng = Rng::new(recipe.data.split_seed);
    rng.shuffle(&mut all);
    let n_val = if recipe.data.val_fraction > 0.0 && all.len() > 1 {
        ((all.len() as f64 * recipe.data.val_fraction).round() as usize).clamp(1, all.len() - 1)
    } else {
        0
    };
    let train = all.split_off(n_val);
    Ok(Data {
        train,
        val: all,
        notes,
    })
}

impl Task for Sft {
    fn model_type(&self) -> &str {
        self.model.model_type()
    }

    fn rebuild(&mut self, store: &mut ParamStore) -> Result<()> {
        self.model = CausalModel::new(&self.model.config(), store)?;
        Ok(())
    }

    fn uses_dropout(&self) -> bool {
        self.model.uses_dropout()
    }

    fn data(&self) -> DataSummary {
        DataSummary {
            train: self.train.len(),
            val: self.val.len(),
            unit: "examples",
            notes: self.notes.clone(),
            ..Default::default()
        }
    }

    fn describe(&self) -> Describe {
        Describe {
            perplexity: true,
            accuracy: "accuracy",
        }
    }

    fn has_validation(&self) -> bool {
        !self.val.is_empty()
    }

    fn batch_loss(
        &self,
        batch: Batch,
        rng: &mut Rng,
        dropout: Option<&mut Rng>,
    ) -> Result<BatchLoss> {
        let (set, rows) = if batch.is_val() {
            (&self.val, &self.val_rows)
        } else {
            (&self.train, &self.train_rows)
        };
        let idx = self.order.batch(rows.len(), batch, &self.recipe.train, rng);
        let batch_rows: Vec<Vec<&Tokenized>> = idx
            .iter()
            .map(|&r| rows[r].iter().map(|&i| &set[i]).collect())
            .collect();
        let pad = self.tokenizer.token_id(EOT).unwrap_or(0);
        let sb = SftBatch::new(
            &batch_rows,
            self.packed,
            self.recipe.train.context,
            pad,
            self.model.device(),
        )?;
        let loss = sft::loss(&self.model, &sb, dropout, batch.is_train())?;
        Ok(BatchLoss {
            loss,
            tokens: batch_rows.iter().flatten().map(|e| e.ids.len()).sum(),
            hits: None,
        })
    }

    fn save(&self, dir: &Path, store: &ParamStore) -> Result<()> {
        models::save_dir(dir, &self.model.config(), store)?;
        self.tokenizer.save(&dir.join("tokenizer.json"))
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        Some(&self.tokenizer)
    }

    fn causal(&self) -> Option<&CausalModel> {
        Some(&self.model)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
