//! Sequence-to-sequence training: source/target pairs batched with padding, teacher forcing
//! (the decoder reads the target shifted right behind the start token), and the
//! cross-entropy of the next target token with optional label smoothing; plus the error
//! rates of sequence outputs against one or more references.

use crate::data::lexicon::{LexEntry, Lexicon, Part};
use crate::models::marian::Marian;
use crate::nn::kernels::cross_entropy::nll_rows;
use crate::nn::ops::log_softmax;
use crate::rng::Rng;
use crate::text::tokenizer::{Tokenizer, SEQ2SEQ_SPECIAL};
use crate::{Error, Result};
use candle_core::{Device, Tensor, D};

/// One training example: source ids (ending with end-of-sequence) and target ids (ending with
/// end-of-sequence, without the start token).
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub src: Vec<u32>,
    pub tgt: Vec<u32>,
}

/// The pairs of a sequence-to-sequence run, encoded.
pub struct PairData {
    /// Turns target ids back into text (the source tokenizer is the run's `tokenizer.json`).
    pub target_tokenizer: Tokenizer,
    /// Every (input, output) pair of the training part; an input with several outputs gives
    /// several pairs. Sorted by source then target length (stably, so pairs of one length
    /// stay in the split's shuffled order) for [`sample`]'s length grouping.
    pub train: Vec<Pair>,
    /// Mean target length (with end of sequence) over `train`: the per-batch token count a
    /// length-grouped batch's loss is normalised to.
    pub mean_target_len: f64,
    /// The same for the validation part (teacher-forced loss).
    pub valid: Vec<Pair>,
    /// Each validation input once, with all its outputs (error rates).
    pub valid_refs: Vec<(Vec<u32>, Vec<Vec<u32>>)>,
}

/// Source ids of `text` (one token per character) followed by end-of-sequence; an error names
/// characters outside the vocabulary unless `allow_unk`.
pub fn encode_source(tok: &Tokenizer, text: &str, allow_unk: bool) -> Result<Vec<u32>> {
    encode_with(tok, text, allow_unk, "character")
}

/// Target ids of space-separated `text` followed by end-of-sequence.
pub fn encode_target(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    encode_with(tok, text, false, "symbol")
}

fn encode_with(tok: &Tokenizer, text: &str, allow_unk: bool, what: &str) -> Result<Vec<u32>> {
    let unk = tok.token_id(SEQ2SEQ_SPECIAL[2]);
    let eos = tok
        .token_id(SEQ2SEQ_SPECIAL[1])
        .ok_or_else(|| Error::Config(format!("the vocabulary has no {}", SEQ2SEQ_SPECIAL[1])))?;
    let mut ids = tok.encode(text)?;
    if !allow_unk {
        if let Some(i) = ids.iter().position(|&id| Some(id) == unk) {
            let bad: String = if what == "character" {
                text.chars().nth(i).map(String::from).unwrap_or_default()
            } else {
                text.split_whitespace()
                    .nth(i)
                    .unwrap_or_default()
                    .to_string()
            };
            return Err(Error::Data(format!(
                "{what} {bad:?} of {text:?} is not in the model's vocabulary"
            )));
        }
    }
    ids.push(eos);
    Ok(ids)
}

impl PairData {
    /// Grapheme-to-phoneme pairs from a lexicon split by word: the source vocabulary is the
    /// characters, the target vocabulary the phonemes, of the training words (given tokenizers
    /// are used as they are: a resumed run keeps its own). Sequences longer than `max_len`
    /// (end-of-sequence included) are an error naming the word.
    pub fn from_lexicon(
        lex: &Lexicon,
        seed: u64,
        fractions: [f64; 2],
        tokenizers: Option<(Tokenizer, Tokenizer)>,
        max_len: usize,
    ) -> Result<(Tokenizer, PairData)> {
        let train_words = lex.split(seed, fractions, Part::Train);
        let valid_words = lex.split(seed, fractions, Part::Valid);
        let (src_tok, tgt_tok) = match tokenizers {
            Some(t) => t,
            None => {
                let chars: std::collections::BTreeSet<String> = train_words
                    .iter()
                    .flat_map(|e| e.word.chars().map(String::from))
                    .collect();
                let phones: std::collections::BTreeSet<String> = train_words
                    .iter()
                    .flat_map(|e| e.prons.iter().flatten().cloned())
                    .collect();
                (
                    Tokenizer::from_symbols(&chars.into_iter().collect::<Vec<_>>(), true)?,
                    Tokenizer::from_symbols(&phones.into_iter().collect::<Vec<_>>(), false)?,
                )
            }
        };
        let encode = |e: &LexEntry, allow_unk: bool| -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
            let src = encode_source(&src_tok, &e.word, allow_unk)?;
            let tgts: Vec<Vec<u32>> = e
                .prons
                .iter()
                .map(|p| encode_with(&tgt_tok, &p.join(" "), allow_unk, "phoneme"))
                .collect::<Result<_>>()?;
            let longest = tgts
                .iter()
                .map(|t| t.len())
                .chain([src.len()])
                .max()
                .unwrap_or(0);
            if longest > max_len {
                return Err(Error::Data(format!(
                    "{:?}: {longest} tokens exceed the model's {max_len} positions",
                    e.word
                )));
            }
            Ok((src, tgts))
        };
        let mut train = vec![];
        for e in &train_words {
            let (src, tgts) = encode(e, false)?;
            train.extend(tgts.into_iter().map(|tgt| Pair {
                src: src.clone(),
                tgt,
            }));
        }
        train.sort_by_key(|p| (p.src.len(), p.tgt.len()));
        let mean_target_len =
            train.iter().map(|p| p.tgt.len()).sum::<usize>() as f64 / train.len().max(1) as f64;
        // Validation words may hold characters or phonemes training never saw: <unk>.
        let mut valid = vec![];
        let mut valid_refs = vec![];
        for e in &valid_words {
            let (src, tgts) = encode(e, true)?;
            valid.extend(tgts.iter().map(|tgt| Pair {
                src: src.clone(),
                tgt: tgt.clone(),
            }));
            valid_refs.push((src, tgts));
        }
        Ok((
            src_tok,
            PairData {
                target_tokenizer: tgt_tok,
                train,
                mean_target_len,
                valid,
                valid_refs,
            },
        ))
    }
}

/// How many batches' worth of neighbouring pairs a length-grouped batch is drawn from.
const GROUP_WINDOW: usize = 16;

/// `batch` pairs drawn with replacement from `pairs`, each pair equally likely. With
/// `group_by_length` (`pairs` sorted by length) a batch is drawn from a random window of
/// `GROUP_WINDOW * batch` neighbours (wrapping around), so its pairs have about the same
/// length and padding, nearly half the work of a uniform batch of words, all but vanishes;
/// every pair stays equally likely because the window's start is uniform.
pub fn sample<'a>(
    pairs: &'a [Pair],
    batch: usize,
    group_by_length: bool,
    rng: &mut Rng,
) -> Vec<&'a Pair> {
    let n = pairs.len() as u64;
    if !group_by_length {
        return (0..batch).map(|_| &pairs[rng.below(n) as usize]).collect();
    }
    let window = ((GROUP_WINDOW * batch) as u64).min(n);
    let start = rng.below(n);
    (0..batch)
        .map(|_| &pairs[((start + rng.below(window)) % n) as usize])
        .collect()
}

/// The factor that turns a length-grouped batch's per-token mean loss into a sum over its
/// target tokens divided by the expected count, `batch.len() * mean_target_len`. A grouped
/// batch's pairs share a length, so its per-token mean would weigh a token of a short-word
/// batch ~3x one of a long-word batch; scaled, every target token weighs alike, as in uniform
/// batches, and the expected loss is the per-token mean over the training pairs.
pub fn grouped_loss_scale(batch: &[&Pair], mean_target_len: f64) -> f64 {
    let n: usize = batch.iter().map(|p| p.tgt.len()).sum();
    n as f64 / (batch.len() as f64 * mean_target_len)
}

/// A padded batch.
pub struct PairBatch {
    /// `[b, s]` source ids, padded.
    pub src: Tensor,
    /// `[b, s]` 1 for tokens, 0 for padding.
    pub src_mask: Tensor,
    /// `[b, t]` decoder inputs: the start token, then the target without its last token.
    pub dec_in: Tensor,
    /// `[b * t]` the target token to predict at each decoder position, `None` at padding.
    pub labels: Vec<Option<u32>>,
}

/// Pads `pairs` into a batch (`pad` fills; `start` begins every decoder input).
pub fn pad_batch(pairs: &[&Pair], pad: u32, start: u32, device: &Device) -> Result<PairBatch> {
    if pairs.is_empty() {
        return Err(Error::Data("an empty batch".into()));
    }
    let b = pairs.len();
    let s = pairs.iter().map(|p| p.src.len()).max().unwrap_or(0);
    let t = pairs.iter().map(|p| p.tgt.len()).max().unwrap_or(0);
    let mut src = Vec::with_capacity(b * s);
    let mut mask = Vec::with_capacity(b * s);
    let mut dec = Vec::with_capacity(b * t);
    let mut labels = Vec::with_capacity(b * t);
    for p in pairs {
        src.extend(
            p.src
                .iter()
                .copied()
                .chain(std::iter::repeat_n(pad, s - p.src.len())),
        );
        mask.extend((0..s).map(|i| if i < p.src.len() { 1u32 } else { 0 }));
        dec.push(start);
        dec.extend(p.tgt.iter().take(t - 1).copied());
        dec.extend(std::iter::repeat_n(pad, t - p.tgt.len().min(t - 1) - 1));
        labels.extend((0..t).map(|i| p.tgt.get(i).copied()));
    }
    Ok(PairBatch {
        src: Tensor::from_vec(src, (b, s), device)?,
        src_mask: Tensor::from_vec(mask, (b, s), device)?,
        dec_in: Tensor::from_vec(dec, (b, t), device)?,
        labels,
    })
}

/// Mean over rows of `(1 - eps) * nll(target) + eps * mean_j(-log p_j)` for logits `[n, v]`
/// and targets `[n]` (PyTorch's `cross_entropy(..., label_smoothing=eps)`).
pub fn smoothed_cross_entropy(logits: &Tensor, targets: &Tensor, eps: f64) -> Result<Tensor> {
    let nll = nll_rows(logits, targets)?;
    if eps == 0.0 {
        return Ok(nll.mean_all()?);
    }
    let smooth = log_softmax(logits)?.mean(D::Minus1)?.neg()?;
    Ok(((nll * (1.0 - eps))? + (smooth * eps)?)?.mean_all()?)
}

/// Teacher forcing over a batch: the logits `[n, v]` of its `n` non-padding target positions,
/// their targets `[n]`, and the batch row each position belongs to. `rng` enables dropout.
pub fn target_logits(
    model: &Marian,
    batch: &PairBatch,
    mut rng: Option<&mut Rng>,
) -> Result<(Tensor, Tensor, Vec<usize>)> {
    let mask = Marian::source_mask(&batch.src_mask)?;
    let enc = model.encode(&batch.src, Some(&mask), rng.as_deref_mut())?;
    let h = model.decode(&batch.dec_in, &enc, Some(&mask), None, rng)?;
    let (b, t, d) = h.dims3()?;
    let (mut rows, mut targets, mut owners) = (vec![], vec![], vec![]);
    for (i, y) in batch.labels.iter().enumerate() {
        if let Some(y) = y {
            rows.push(i as u32);
            targets.push(*y);
            owners.push(i / t);
        }
    }
    let idx = Tensor::new(rows.as_slice(), h.device())?;
    let logits = model.logits(&h.reshape((b * t, d))?.index_select(&idx, 0)?)?;
    let y = Tensor::new(targets.as_slice(), h.device())?;
    Ok((logits, y, owners))
}

/// The teacher-forced loss of a batch over its non-padding target positions, and how many
/// positions that is. `rng` enables dropout.
pub fn pair_loss(
    model: &Marian,
    batch: &PairBatch,
    label_smoothing: f64,
    rng: Option<&mut Rng>,
) -> Result<(Tensor, usize)> {
    let (logits, y, owners) = target_logits(model, batch, rng)?;
    Ok((
        smoothed_cross_entropy(&logits, &y, label_smoothing)?,
        owners.len(),
    ))
}

/// Levenshtein distance between two sequences.
pub fn edit_distance<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Word and phoneme (token) error rates.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ErrorRates {
    /// Fraction of outputs that equal none of their references.
    pub wer: f64,
    /// Edit distance to the closest reference, summed, over that reference's length, summed.
    pub per: f64,
    pub n: usize,
}

/// Error rates of `outputs` against their references (several per input allowed: an output
/// is right if it equals any of them).
pub fn error_rates<T: PartialEq>(outputs: &[Vec<T>], references: &[Vec<Vec<T>>]) -> ErrorRates {
    let (mut wrong, mut edits, mut len) = (0usize, 0usize, 0usize);
    for (out, refs) in outputs.iter().zip(references) {
        let best = refs
            .iter()
            .map(|r| (edit_distance(out, r), r.len()))
            .min()
            .unwrap_or((out.len(), 0));
        if best.0 > 0 {
            wrong += 1;
        }
        edits += best.0;
        len += best.1;
    }
    let n = outputs.len();
    ErrorRates {
        wer: if n > 0 { wrong as f64 / n as f64 } else { 0.0 },
        per: if len > 0 {
            edits as f64 / len as f64
        } else {
            0.0
        },
        n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_pad_and_shift() {
        let p1 = Pair {
            src: vec![5, 6, 1],
            tgt: vec![7, 8, 9, 1],
        };
        let p2 = Pair {
            src: vec![5, 1],
            tgt: vec![7, 1],
        };
        let b = pad_batch(&[&p1, &p2], 0, 0, &Device::Cpu).unwrap();
        assert_eq!(
            b.src.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 1], vec![5, 1, 0]]
        );
        assert_eq!(
            b.src_mask.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 1], vec![1, 1, 0]]
        );
        assert_eq!(
            b.dec_in.to_vec2::<u32>().unwrap(),
            vec![vec![0, 7, 8, 9], vec![0, 7, 1, 0]]
        );
        let l: Vec<Option<u32>> = vec![
            Some(7),
            Some(8),
            Some(9),
            Some(1),
            Some(7),
            Some(1),
            None,
            None,
        ];
        assert_eq!(b.labels, l);
    }

    #[test]
    fn length_grouped_batches_are_short_on_padding_and_fair() {
        // 4,000 pairs of source lengths 2..=21, sorted as PairData::train is.
        let mut pairs: Vec<Pair> = (0..4000u32)
            .map(|i| Pair {
                src: vec![i; 2 + (i as usize * 7919) % 20],
                tgt: vec![1; 2],
            })
            .collect();
        pairs.sort_by_key(|p| (p.src.len(), p.tgt.len()));
        for (k, p) in pairs.iter_mut().enumerate() {
            p.src[0] = k as u32; // its place in the sorted order
        }
        let (batch, draws) = (8, 20_000);
        let mut rng = Rng::new(3);
        let mut hits = vec![0u32; pairs.len()];
        let (mut spread, mut uniform_spread) = (0, 0);
        for _ in 0..draws {
            let b = sample(&pairs, batch, true, &mut rng);
            let lens: Vec<usize> = b.iter().map(|p| p.src.len()).collect();
            spread += lens.iter().max().unwrap() - lens.iter().min().unwrap();
            for p in b {
                hits[p.src[0] as usize] += 1;
            }
            let u = sample(&pairs, batch, false, &mut rng);
            let lens: Vec<usize> = u.iter().map(|p| p.src.len()).collect();
            uniform_spread += lens.iter().max().unwrap() - lens.iter().min().unwrap();
        }
        // A window of 128 neighbours among 200 pairs per length spans at most two lengths
        // (all at the rare wrap-around); a uniform batch of 8 spans about 15.
        assert!(spread as f64 / (draws as f64) < 2.0, "spread {spread}");
        assert!(uniform_spread as f64 / (draws as f64) > 12.0);
        // Every pair equally likely: 40 expected hits each; no region of the sorted order
        // (not the ends either) is over- or under-drawn.
        let expected = (draws * batch) as f64 / pairs.len() as f64;
        for chunk in hits.chunks(400) {
            let mean = chunk.iter().sum::<u32>() as f64 / chunk.len() as f64;
            assert!((mean / expected - 1.0).abs() < 0.08, "{mean} vs {expected}");
        }
    }

    #[test]
    fn grouped_batches_weigh_every_target_token_alike() {
        // Target lengths 2..=13, sorted as PairData::train is; every token of a pair of
        // target length L has loss L (long words are the hard ones).
        let mut pairs: Vec<Pair> = (0..3000usize)
            .map(|i| Pair {
                src: vec![1; 2 + i % 12],
                tgt: vec![1; 2 + (i * 7) % 12],
            })
            .collect();
        pairs.sort_by_key(|p| (p.src.len(), p.tgt.len()));
        let tokens: usize = pairs.iter().map(|p| p.tgt.len()).sum();
        let mean_len = tokens as f64 / pairs.len() as f64;
        // What uniform batches estimate: the mean loss over all target tokens.
        let per_token =
            pairs.iter().map(|p| p.tgt.len().pow(2)).sum::<usize>() as f64 / tokens as f64;
        let (batch, draws) = (16, 40_000);
        let mut rng = Rng::new(11);
        let (mut scaled, mut unscaled) = (0.0, 0.0);
        for _ in 0..draws {
            let b = sample(&pairs, batch, true, &mut rng);
            let n: usize = b.iter().map(|p| p.tgt.len()).sum();
            // pair_loss's value for this batch: the mean over its target tokens.
            let mean = b.iter().map(|p| p.tgt.len().pow(2)).sum::<usize>() as f64 / n as f64;
            scaled += mean * grouped_loss_scale(&b, mean_len);
            unscaled += mean;
        }
        let (scaled, unscaled) = (scaled / draws as f64, unscaled / draws as f64);
        assert!(
            (scaled / per_token - 1.0).abs() < 0.01,
            "{scaled} vs {per_token}"
        );
        // Without the scale, short-word batches count as much as long-word ones: biased low.
        assert!(unscaled / per_token < 0.95, "{unscaled} vs {per_token}");
        // A uniform-looking batch of mean length is left as it is.
        let avg = Pair {
            src: vec![1],
            tgt: vec![1; 4],
        };
        assert!((grouped_loss_scale(&[&avg, &avg], 4.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn error_rates_take_the_closest_reference() {
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 3]), 1);
        assert_eq!(edit_distance::<u8>(&[], &[1, 2]), 2);
        assert_eq!(edit_distance("kitten".as_bytes(), "sitting".as_bytes()), 3);
        let out = vec![vec!["K", "AE1", "T"], vec!["D", "AO1", "G"]];
        let refs = vec![
            vec![vec!["K", "AH0", "T"], vec!["K", "AE1", "T"]],
            vec![vec!["D", "AA1", "G"]],
        ];
        let r = error_rates(&out, &refs);
        assert_eq!(r.n, 2);
        assert!((r.wer - 0.5).abs() < 1e-12);
        assert!((r.per - 1.0 / 6.0).abs() < 1e-12);
    }
}
