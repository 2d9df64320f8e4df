//! Masked language modelling (BERT): choose 15% of the non-special tokens; of those, 80%
//! become `[MASK]`, 10% a random token and 10% stay unchanged; the model predicts the
//! original token at the chosen positions only. As transformers'
//! `DataCollatorForLanguageModeling`: every token is chosen independently, random tokens are
//! drawn from the whole vocabulary. With whole-word masking a word's pieces are chosen
//! together (WordPiece continuations start with `##`). Seeded, so a batch is reproducible.

use crate::data::{Split, TokenShard};
use crate::models::bert::Bert;
use crate::nn::kernels::cross_entropy::nll_rows;
use crate::rng::Rng;
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Masking probabilities (the `[mlm]` section of a recipe).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskingConfig {
    /// Fraction of tokens chosen for prediction.
    pub probability: f64,
    /// Of the chosen, the fraction replaced by `[MASK]`.
    pub mask_fraction: f64,
    /// Of the chosen, the fraction replaced by a random token (the rest stay unchanged).
    pub random_fraction: f64,
    /// Choose whole words (all pieces of a word together).
    pub whole_word: bool,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig {
            probability: 0.15,
            mask_fraction: 0.8,
            random_fraction: 0.1,
            whole_word: false,
        }
    }
}

impl MaskingConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = |p: f64| (0.0..=1.0).contains(&p);
        let valid = self.probability > 0.0
            && ok(self.probability)
            && ok(self.mask_fraction)
            && ok(self.random_fraction)
            && self.mask_fraction + self.random_fraction <= 1.0;
        if !valid {
            return Err(Error::Config(format!(
                "masking needs 0 < probability <= 1 and mask + random fractions <= 1 (got {}, {}, {})",
                self.probability, self.mask_fraction, self.random_fraction
            )));
        }
        Ok(())
    }
}

/// One sequence after masking.
#[derive(Debug, Clone, PartialEq)]
pub struct Masked {
    /// The corrupted input.
    pub inputs: Vec<u32>,
    /// The original token where one is to be predicted.
    pub labels: Vec<Option<u32>>,
}

/// Masks `ids`. `special(id)` marks tokens never chosen (`[CLS]`, `[SEP]`, `[PAD]`, ...);
/// `continues_word(i)` says token `i` continues the previous one's word (for whole-word
/// masking).
pub fn mask_tokens(
    ids: &[u32],
    special: &dyn Fn(u32) -> bool,
    continues_word: &dyn Fn(usize) -> bool,
    vocab_size: usize,
    mask_id: u32,
    cfg: &MaskingConfig,
    rng: &mut Rng,
) -> Masked {
    let n = ids.len();
    let mut chosen = vec![false; n];
    let mut i = 0;
    while i < n {
        // A word: token i and (with whole-word masking) the continuation pieces after it.
        let mut end = i + 1;
        if cfg.whole_word {
            while end < n && continues_word(end) && !special(ids[end]) {
                end += 1;
            }
        }
        if !special(ids[i]) && rng.uniform() < cfg.probability {
            chosen[i..end].iter_mut().for_each(|c| *c = true);
        }
        i = end;
    }
    let mut inputs = ids.to_vec();
    let mut labels = vec![None; n];
    for i in 0..n {
        if !chosen[i] {
            continue;
        }
        labels[i] = Some(ids[i]);
        let u = rng.uniform();
        if u < cfg.mask_fraction {
            inputs[i] = mask_id;
        } else if u < cfg.mask_fraction + cfg.random_fraction {
            inputs[i] = rng.below(vocab_size as u64) as u32;
        }
    }
    Masked { inputs, labels }
}

/// MLM loss and metrics over the labelled positions of logits `[n, vocab]`.
pub struct MlmLoss {
    /// Mean negative log-likelihood (nats) of the original tokens at the chosen positions.
    pub loss: Tensor,
    /// Chosen positions.
    pub count: usize,
    /// Chosen positions where the most likely token is the original.
    pub correct: usize,
}

/// The loss over positions whose label is `Some`; `logits` `[n, vocab]`, one label per row.
pub fn mlm_loss(logits: &Tensor, labels: &[Option<u32>]) -> Result<MlmLoss> {
    let rows: Vec<u32> = labels
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.map(|_| i as u32))
        .collect();
    if rows.is_empty() {
        return Err(Error::Data(
            "no token was chosen for prediction in this batch".into(),
        ));
    }
    let targets: Vec<u32> = labels.iter().filter_map(|l| *l).collect();
    let idx = Tensor::new(rows.as_slice(), logits.device())?;
    let chosen = logits.index_select(&idx, 0)?;
    let y = Tensor::new(targets.as_slice(), logits.device())?;
    let loss = nll_rows(&chosen, &y)?.mean_all()?;
    let pred: Vec<u32> = chosen.argmax(1)?.to_vec1()?;
    let correct = pred.iter().zip(&targets).filter(|(a, b)| a == b).count();
    Ok(MlmLoss {
        loss,
        count: targets.len(),
        correct,
    })
}

/// A masked batch: inputs `[b, t]` and one optional label per position (row-major).
pub struct MlmBatch {
    pub inputs: Tensor,
    pub labels: Vec<Option<u32>>,
}

/// The masked-LM objective for one tokenizer: which ids are special, which continue a word,
/// and how sequences are framed.
pub struct MaskedLm {
    pub config: MaskingConfig,
    special: Vec<bool>,
    continues: Vec<bool>,
    mask_id: u32,
    cls_id: u32,
    sep_id: u32,
    vocab_size: usize,
}

impl MaskedLm {
    /// The objective for `tokenizer`, which must have `[CLS]`, `[SEP]` and `[MASK]`. Its
    /// special tokens (`[PAD]`, `[UNK]`, ...) are never chosen; pieces starting with `##`
    /// continue a word.
    pub fn new(tokenizer: &Tokenizer, config: MaskingConfig) -> Result<Self> {
        config.validate()?;
        let id = |t: &str| {
            tokenizer.token_id(t).ok_or_else(|| {
                Error::Config(format!(
                    "masked LM needs a tokenizer with {t} (train one with data.tokenizer = \"wordpiece\")"
                ))
            })
        };
        let (mask_id, cls_id, sep_id) = (id("[MASK]")?, id("[CLS]")?, id("[SEP]")?);
        let vocab_size = tokenizer.vocab_size();
        let mut special = vec![false; vocab_size];
        for id in tokenizer.special_ids() {
            if let Some(s) = special.get_mut(id as usize) {
                *s = true;
            }
        }
        let continues = (0..vocab_size as u32)
            .map(|i| tokenizer.id_token(i).is_some_and(|t| t.starts_with("##")))
            .collect();
        Ok(MaskedLm {
            config,
            special,
            continues,
            mask_id,
            cls_id,
            sep_id,
            vocab_size,
        })
    }

    /// Masks one framed sequence (`[CLS] ... [SEP]`); at least one token is always chosen, so
    /// every sequence contributes to the loss.
    pub fn mask(&self, ids: &[u32], rng: &mut Rng) -> Masked {
        let special = |id: u32| self.special.get(id as usize).copied().unwrap_or(false);
        let continues = |i: usize| {
            self.continues
                .get(ids[i] as usize)
                .copied()
                .unwrap_or(false)
        };
        let mut m = mask_tokens(
            ids,
            &special,
            &continues,
            self.vocab_size,
            self.mask_id,
            &self.config,
            rng,
        );
        if m.labels.iter().all(|l| l.is_none()) {
            let eligible: Vec<usize> = (0..ids.len()).filter(|&i| !special(ids[i])).collect();
            if !eligible.is_empty() {
                let i = eligible[rng.below(eligible.len() as u64) as usize];
                m.labels[i] = Some(ids[i]);
                m.inputs[i] = self.mask_id;
            }
        }
        m
    }

    /// `batch` random windows of `split`, each framed as `[CLS]` + `context - 2` tokens +
    /// `[SEP]` (documents are packed back to back, as RoBERTa's full-sentence inputs), then
    /// masked.
    pub fn batch(
        &self,
        data: &TokenShard,
        split: Split,
        batch: usize,
        context: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<MlmBatch> {
        if context < 3 {
            return Err(Error::Config(format!(
                "masked LM needs train.context >= 3 ([CLS], a token, [SEP]), got {context}"
            )));
        }
        let mut inputs = Vec::with_capacity(batch * context);
        let mut labels = Vec::with_capacity(batch * context);
        for _ in 0..batch {
            let mut ids = Vec::with_capacity(context);
            ids.push(self.cls_id);
            ids.extend(data.random_window(split, context - 2, rng));
            ids.push(self.sep_id);
            let m = self.mask(&ids, rng);
            inputs.extend(m.inputs);
            labels.extend(m.labels);
        }
        Ok(MlmBatch {
            inputs: Tensor::from_vec(inputs, (batch, context), device)?,
            labels,
        })
    }

    /// The loss over a batch: the encoder runs on every token, the MLM head only on the chosen
    /// positions (a sixth of the tokens, so the vocabulary projection costs a sixth).
    /// `rng` enables dropout.
    pub fn loss(&self, model: &Bert, batch: &MlmBatch, rng: Option<&mut Rng>) -> Result<MlmLoss> {
        let h = model.forward(&batch.inputs, None, None, rng)?;
        let (b, t, c) = h.dims3()?;
        let rows: Vec<u32> = (0..(b * t) as u32)
            .filter(|&i| batch.labels[i as usize].is_some())
            .collect();
        let labels: Vec<Option<u32>> = batch
            .labels
            .iter()
            .filter(|l| l.is_some())
            .copied()
            .collect();
        let idx = Tensor::new(rows.as_slice(), h.device())?;
        let chosen = h.reshape((b * t, c))?.index_select(&idx, 0)?;
        mlm_loss(&model.mlm_logits(&chosen)?, &labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over 400k tokens: 15% chosen, then 80/10/10, within 5 standard deviations; special
    /// tokens never chosen; the same seed gives the same masks.
    #[test]
    fn masking_statistics() {
        let vocab = 1000usize;
        let (cls, sep, mask) = (1u32, 2u32, 3u32);
        let mut rng = Rng::new(11);
        let ids: Vec<u32> = (0..400_000)
            .map(|i| {
                if i % 50 == 0 {
                    cls
                } else if i % 50 == 49 {
                    sep
                } else {
                    10 + rng.below(vocab as u64 - 10) as u32
                }
            })
            .collect();
        let special = |id: u32| id < 10;
        let cfg = MaskingConfig::default();
        let m = mask_tokens(
            &ids,
            &special,
            &|_| false,
            vocab,
            mask,
            &cfg,
            &mut Rng::new(5),
        );
        let eligible = ids.iter().filter(|&&i| !special(i)).count() as f64;
        let chosen: Vec<usize> = (0..ids.len()).filter(|&i| m.labels[i].is_some()).collect();
        assert!(chosen.iter().all(|&i| !special(ids[i])));
        let within = |k: f64, n: f64, p: f64| {
            let sd = (n * p * (1.0 - p)).sqrt();
            assert!((k - n * p).abs() < 5.0 * sd, "{k} of {n}, expected p {p}");
        };
        let c = chosen.len() as f64;
        within(c, eligible, 0.15);
        let masked = chosen.iter().filter(|&&i| m.inputs[i] == mask).count() as f64;
        let same = chosen.iter().filter(|&&i| m.inputs[i] == ids[i]).count() as f64;
        within(masked, c, 0.8);
        // Unchanged: 10%, plus random draws that hit the original (1/1000 of 10%).
        within(same, c, 0.1 + 0.1 / vocab as f64);
        within(c - masked - same, c, 0.1 - 0.1 / vocab as f64);
        // Unchosen positions are untouched; reproducible.
        assert!((0..ids.len()).all(|i| m.labels[i].is_some() || m.inputs[i] == ids[i]));
        let again = mask_tokens(
            &ids,
            &special,
            &|_| false,
            vocab,
            mask,
            &cfg,
            &mut Rng::new(5),
        );
        assert_eq!(again, m);
    }

    /// Loss and accuracy count only the labelled rows: -log softmax by hand.
    #[test]
    fn loss_over_labelled_rows() {
        let dev = candle_core::Device::Cpu;
        let logits =
            Tensor::new(&[[2f32, 0.0, 0.0], [0.0, 5.0, 0.0], [1.0, 0.0, 3.0]], &dev).unwrap();
        let r = mlm_loss(&logits, &[Some(0), None, Some(0)]).unwrap();
        let lse = |v: [f64; 3]| v.iter().map(|x| x.exp()).sum::<f64>().ln();
        let want = ((lse([2.0, 0.0, 0.0]) - 2.0) + (lse([1.0, 0.0, 3.0]) - 1.0)) / 2.0;
        let got = r.loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert_eq!((r.count, r.correct), (2, 1));
        assert!(mlm_loss(&logits, &[None, None, None]).is_err());
    }

    #[test]
    fn whole_words_are_masked_together() {
        // Words of 3 pieces: positions 3k, 3k+1, 3k+2.
        let ids: Vec<u32> = (0..30_000).map(|i| 10 + (i % 97) as u32).collect();
        let cfg = MaskingConfig {
            whole_word: true,
            ..Default::default()
        };
        let m = mask_tokens(
            &ids,
            &|_| false,
            &|i| i % 3 != 0,
            200,
            3,
            &cfg,
            &mut Rng::new(1),
        );
        for w in m.labels.chunks(3) {
            assert!(w.iter().all(|l| l.is_some()) || w.iter().all(|l| l.is_none()));
        }
        let c = m.labels.iter().filter(|l| l.is_some()).count() as f64 / 3.0;
        assert!((c / 10_000.0 - 0.15).abs() < 0.02, "{c}");
    }
}
