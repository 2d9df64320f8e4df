//! Decoding with an encoder-decoder model: greedy and beam search, batched, with the decoder's
//! self-attention keys/values cached and the encoder output (and its cross-attention keys and
//! values) computed once. Both follow transformers' `generate` step for step (its logits
//! processors for banning the pad token, forcing end-of-sequence at the length limit and
//! renormalising; its beam search bookkeeping and length penalty), so checkpoints decode the
//! same here and there.
//!
//! Several models with the same vocabularies decode as an ensemble, each model keeping its own
//! encoder output and caches: each step's next-token distribution is the renormalised geometric
//! mean of the models' (the mean of their log-probabilities; [`EnsembleMean::Log`], the default)
//! or the arithmetic mean of their probabilities (fairseq's `EnsembleModel`;
//! [`EnsembleMean::Probability`]). One model decodes exactly as alone.
//!
//! Rescoring (whole-sequence log-probabilities, right-to-left models) is in [`super::rescore`].
//!
//! Length: greedy and beam search share the batched cache and logits-processor steps; splitting
//! them would spread one algorithm (transformers' `generate`) over files.

use crate::models::marian::{DecoderCache, Marian};
use crate::objective::seq2seq::{pad_batch, Pair, PairBatch};
use crate::{Error, Result};
use candle_core::{Device, Tensor};

/// How an ensemble's next-token distributions are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnsembleMean {
    /// The mean of the models' log-probabilities, renormalised (a product of experts: a token
    /// must be likely under every model). Fewer errors than [`EnsembleMean::Probability`] on
    /// the CMUdict validation words, greedy and beam (bench/RESULTS.md).
    #[default]
    Log,
    /// The mean of the models' probabilities (fairseq's `EnsembleModel`).
    Probability,
}

impl std::str::FromStr for EnsembleMean {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "log" => Ok(EnsembleMean::Log),
            "prob" | "probability" => Ok(EnsembleMean::Probability),
            _ => Err(Error::Config(format!(
                "ensemble mean {s:?}: expected \"log\" or \"prob\""
            ))),
        }
    }
}

/// How to decode.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOptions {
    /// Tokens generated at most (end-of-sequence included).
    pub max_new_tokens: usize,
    /// 1 for greedy decoding.
    pub num_beams: usize,
    /// A finished beam's score is its log-probability divided by (generated tokens)^this.
    pub length_penalty: f64,
    /// Beam search stops as soon as `num_beams` hypotheses are finished.
    pub early_stopping: bool,
    /// Never produce the pad token (Marian's `bad_words_ids [[pad]]`).
    pub ban_pad: bool,
    /// Force end-of-sequence as the last token allowed (`forced_eos_token_id`).
    pub forced_eos: bool,
    /// Renormalise the processed scores (`renormalize_logits`).
    pub renormalize: bool,
    /// How several models' distributions are combined (one model: unused).
    pub ensemble_mean: EnsembleMean,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_new_tokens: 64,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: false,
            ban_pad: true,
            forced_eos: false,
            renormalize: false,
            ensemble_mean: EnsembleMean::default(),
        }
    }
}

/// One decoded output.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// The generated tokens, end-of-sequence included when produced.
    pub tokens: Vec<u32>,
    /// Greedy: the sum of the token log-probabilities; beam search: that sum divided by the
    /// length penalty (transformers' `sequences_scores`).
    pub score: f32,
}

/// `log_softmax` of one row, in f32 as transformers computes it; `-inf` entries stay `-inf`.
pub(crate) fn log_softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter_mut().for_each(|x| *x -= lse);
}

impl DecodeOptions {
    /// Applies the enabled logits processors to one row of scores at decoder length `cur_len`
    /// (start token included).
    fn process(&self, row: &mut [f32], cur_len: usize, pad: u32, eos: u32) {
        if self.ban_pad {
            row[pad as usize] = f32::NEG_INFINITY;
        }
        if self.forced_eos && cur_len == self.max_new_tokens {
            row.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            row[eos as usize] = 0.0;
        }
        if self.renormalize {
            log_softmax(row);
        }
    }

    fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 || self.num_beams == 0 {
            return Err(Error::Config(
                "decoding needs max_new_tokens >= 1 and num_beams >= 1".into(),
            ));
        }
        Ok(())
    }
}

/// The models decoded together, each with its encoder output and decoder caches.
struct Decoders<'a> {
    models: &'a [&'a Marian],
    encs: Vec<Tensor>,
    caches: Vec<Vec<DecoderCache>>,
}

impl<'a> Decoders<'a> {
    /// Encodes `src` with every model. `models` must be non-empty and compatible (see
    /// [`check_ensemble`]).
    fn new(models: &'a [&'a Marian], src: &Tensor, mask: Option<&Tensor>) -> Result<Self> {
        let encs = models
            .iter()
            .map(|m| m.encode(src, mask, None))
            .collect::<Result<_>>()?;
        Ok(Decoders {
            models,
            encs,
            caches: models.iter().map(|m| m.new_caches()).collect(),
        })
    }

    fn device(&self) -> &Device {
        self.models[0].device()
    }

    /// Source rows of the encoder outputs selected (repeated) by `idx`.
    fn select_sources(&mut self, idx: &Tensor) -> Result<()> {
        for e in self.encs.iter_mut() {
            *e = e.index_select(idx, 0)?;
        }
        Ok(())
    }

    /// Decoder rows of the caches selected by `idx` (beams followed).
    fn reorder(&mut self, idx: &Tensor) -> Result<()> {
        for caches in self.caches.iter_mut() {
            for cache in caches.iter_mut() {
                cache.self_kv.reorder(idx)?;
            }
        }
        Ok(())
    }

    /// One decoder step for the tokens `next` (one per row): each row's next-token scores.
    /// One model: its logits. Several: their log-probabilities combined by `mean`.
    fn step(
        &mut self,
        next: &[u32],
        mask: Option<&Tensor>,
        mean: EnsembleMean,
    ) -> Result<Vec<Vec<f32>>> {
        let input = Tensor::from_vec(next.to_vec(), (next.len(), 1), self.device())?;
        let mut all = Vec::with_capacity(self.models.len());
        for ((m, enc), caches) in self.models.iter().zip(&self.encs).zip(&mut self.caches) {
            let h = m.decode(&input, enc, mask, Some(caches), None)?;
            all.push(m.logits(&h.squeeze(1)?)?.to_vec2::<f32>()?);
        }
        Ok(combine(all, mean))
    }
}

/// Per-model score rows (`[model][row][token]`) as one row set: one model's rows unchanged;
/// several models' as log-probabilities combined by `mean`.
pub(crate) fn combine(mut all: Vec<Vec<Vec<f32>>>, mean: EnsembleMean) -> Vec<Vec<f32>> {
    if all.len() == 1 {
        return all.pop().unwrap_or_default();
    }
    all.iter_mut().flatten().for_each(|row| log_softmax(row));
    let n = all.len() as f32;
    let ln_n = n.ln();
    let mut out = all.pop().unwrap_or_default();
    for (r, row) in out.iter_mut().enumerate() {
        if mean == EnsembleMean::Log {
            for (j, x) in row.iter_mut().enumerate() {
                *x = (all.iter().map(|m| m[r][j]).sum::<f32>() + *x) / n;
            }
            log_softmax(row);
            continue;
        }
        for (j, x) in row.iter_mut().enumerate() {
            *x = log_mean_exp(all.iter().map(|m| m[r][j]).chain([*x]), ln_n);
        }
    }
    out
}

/// `ln(mean(exp(v)))` of `n` values given `ln_n` (all `-inf`: `-inf`).
pub(crate) fn log_mean_exp(vals: impl Iterator<Item = f32> + Clone, ln_n: f32) -> f32 {
    let max = vals.clone().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + vals.map(|v| (v - max).exp()).sum::<f32>().ln() - ln_n
}

/// Checks that `models` can decode together: at least one, with the same vocabulary sizes and
/// special token ids (same vocabularies are the caller's to check: the models hold no
/// tokenizer).
pub fn check_ensemble(models: &[&Marian]) -> Result<()> {
    let first = models
        .first()
        .ok_or_else(|| Error::Config("decoding needs at least one model".into()))?;
    let key = |m: &Marian| {
        let c = &m.config;
        (
            c.vocab_size,
            c.decoder_vocab_size.unwrap_or(c.vocab_size),
            c.pad_token_id,
            c.eos_token_id,
            c.decoder_start_token_id,
        )
    };
    for (i, m) in models.iter().enumerate().skip(1) {
        if key(m) != key(first) {
            return Err(Error::Config(format!(
                "ensemble model {} has vocabulary sizes and pad/eos/start ids {:?}, model 1 {:?}: \
                 models decoded together must share their vocabularies",
                i + 1,
                key(m),
                key(first)
            )));
        }
    }
    Ok(())
}

/// Decodes every source row of `src` `[b, s]` (u32; `mask` `[b, s]` 0/1 for padded batches):
/// greedy when `opts.num_beams == 1`, else beam search. One best hypothesis per row.
pub fn decode(
    model: &Marian,
    src: &Tensor,
    mask: Option<&Tensor>,
    opts: &DecodeOptions,
) -> Result<Vec<Hypothesis>> {
    decode_with(&[model], src, mask, opts, opts.num_beams > 1)
}

/// As [`decode`], with several models as one ensemble (see the module documentation).
pub fn decode_ensemble(
    models: &[&Marian],
    src: &Tensor,
    mask: Option<&Tensor>,
    opts: &DecodeOptions,
) -> Result<Vec<Hypothesis>> {
    decode_with(models, src, mask, opts, opts.num_beams > 1)
}

/// As [`decode_ensemble`], with beam search even for one beam (which then normally equals
/// greedy).
pub fn decode_beam(
    models: &[&Marian],
    src: &Tensor,
    mask: Option<&Tensor>,
    opts: &DecodeOptions,
) -> Result<Vec<Hypothesis>> {
    decode_with(models, src, mask, opts, true)
}

fn decode_with(
    models: &[&Marian],
    src: &Tensor,
    mask: Option<&Tensor>,
    opts: &DecodeOptions,
    beam: bool,
) -> Result<Vec<Hypothesis>> {
    if beam {
        return Ok(decode_nbest(models, src, mask, opts)?
            .into_iter()
            .map(|mut n| n.swap_remove(0))
            .collect());
    }
    let (dec, add_mask) = start(models, src, mask, opts)?;
    greedy(dec, src.dim(0)?, add_mask.as_ref(), opts)
}

/// Checks the options and the models and encodes `src`: the decoders and the additive source
/// mask.
fn start<'a>(
    models: &'a [&'a Marian],
    src: &Tensor,
    mask: Option<&Tensor>,
    opts: &DecodeOptions,
) -> Result<(Decoders<'a>, Option<Tensor>)> {
    opts.validate()?;
    check_ensemble(models)?;
    let add_mask = mask.map(Marian::source_mask).transpose()?;
    let dec = Decoders::new(models, src, add_mask.as_ref())?;
    Ok((dec, add_mask))
}

/// Beam search as [`decode_beam`], keeping every source row's finished hypotheses (at most
/// `num_beams`, best first; at least one).
pub fn decode_nbest(
    models: &[&Marian],
    src: &Tensor,
    mask: Option<&Tensor>,
    opts: &DecodeOptions,
) -> Result<Vec<Vec<Hypothesis>>> {
    let (dec, add_mask) = start(models, src, mask, opts)?;
    beam_search(dec, src.dim(0)?, add_mask.as_ref(), opts)
}

fn greedy(
    mut dec: Decoders,
    b: usize,
    mask: Option<&Tensor>,
    opts: &DecodeOptions,
) -> Result<Vec<Hypothesis>> {
    let c = &dec.models[0].config;
    let mut out: Vec<Hypothesis> = vec![
        Hypothesis {
            tokens: vec![],
            score: 0.0
        };
        b
    ];
    let mut done = vec![false; b];
    let mut next = vec![c.decoder_start_token_id; b];
    for step in 0..opts.max_new_tokens {
        let rows = dec.step(&next, mask, opts.ensemble_mean)?;
        for (i, mut row) in rows.into_iter().enumerate() {
            if done[i] {
                next[i] = c.pad_token_id;
                continue;
            }
            opts.process(&mut row, step + 1, c.pad_token_id, c.eos_token_id);
            // The first maximum, as torch.argmax.
            let (best, _) = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |acc, (j, &x)| if x > acc.1 { (j, x) } else { acc },
                );
            let mut lp = row;
            if !opts.renormalize {
                log_softmax(&mut lp);
            }
            out[i].score += lp[best];
            out[i].tokens.push(best as u32);
            next[i] = best as u32;
            done[i] = best as u32 == c.eos_token_id;
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(out)
}

/// A finished hypothesis slot of one source row.
#[derive(Clone)]
struct Slot {
    score: f32,
    tokens: Vec<u32>,
    filled: bool,
}

fn beam_search(
    mut dec: Decoders,
    b: usize,
    mask: Option<&Tensor>,
    opts: &DecodeOptions,
) -> Result<Vec<Vec<Hypothesis>>> {
    const NEG: f32 = -1.0e9;
    let c = &dec.models[0].config;
    let beams = opts.num_beams;
    let device = dec.device().clone();
    // Each source row repeated once per beam.
    let rep: Vec<u32> = (0..b as u32)
        .flat_map(|i| std::iter::repeat_n(i, beams))
        .collect();
    let rep = Tensor::new(rep.as_slice(), &device)?;
    dec.select_sources(&rep)?;
    let mask = mask.map(|m| m.index_select(&rep, 0)).transpose()?;
    let lp_pow = |n: usize| (n as f64).powf(opts.length_penalty) as f32;
    let mut run_scores: Vec<f32> = (0..b * beams)
        .map(|i| if i % beams == 0 { 0.0 } else { NEG })
        .collect();
    let mut run_tokens: Vec<Vec<u32>> = vec![vec![]; b * beams];
    let mut slots: Vec<Vec<Slot>> = vec![
        vec![
            Slot {
                score: NEG,
                tokens: vec![],
                filled: false
            };
            beams
        ];
        b
    ];
    let mut improvable = vec![true; b];
    let mut next = vec![c.decoder_start_token_id; b * beams];
    let max_length = opts.max_new_tokens + 1;
    let mut cur_len = 1;
    while cur_len < max_length {
        let rows = dec.step(&next, mask.as_ref(), opts.ensemble_mean)?;
        let v = rows[0].len();
        let k = 2 * beams;
        let mut src_beams = Vec::with_capacity(b * beams);
        let mut new_scores = Vec::with_capacity(b * beams);
        let mut new_tokens = Vec::with_capacity(b * beams);
        for r in 0..b {
            // Scores of every (beam, token) of this row, flattened beam-major.
            let mut flat: Vec<f32> = Vec::with_capacity(beams * v);
            for j in 0..beams {
                let mut row = rows[r * beams + j].clone();
                log_softmax(&mut row);
                opts.process(&mut row, cur_len, c.pad_token_id, c.eos_token_id);
                let base = run_scores[r * beams + j];
                flat.extend(row.iter().map(|x| x + base));
            }
            // The top k only: a full sort of beams x vocabulary per step would dominate with
            // real vocabularies (Marian's 58k).
            let by_score = |a: &usize, b2: &usize| flat[*b2].total_cmp(&flat[*a]).then(a.cmp(b2));
            let mut order: Vec<usize> = (0..flat.len()).collect();
            let k = k.min(order.len());
            order.select_nth_unstable_by(k - 1, by_score);
            order.truncate(k);
            order.sort_by(by_score);
            let stops: Vec<bool> = order
                .iter()
                .map(|&i| (i % v) as u32 == c.eos_token_id || cur_len + 1 >= max_length)
                .collect();
            // Running beams: the best `beams` candidates, those that stopped pushed down.
            let mut ranked: Vec<(f32, usize)> = order
                .iter()
                .zip(&stops)
                .map(|(&i, &s)| (flat[i] + if s { NEG } else { 0.0 }, i))
                .collect();
            ranked.sort_by(|a, b2| b2.0.total_cmp(&a.0));
            for &(score, i) in ranked.iter().take(beams) {
                src_beams.push((r * beams + i / v) as u32);
                new_scores.push(score);
                new_tokens.push((i % v) as u32);
            }
            // Finished: stopping candidates among the first `beams`.
            let full = slots[r].iter().all(|s| s.filled);
            let mut cands: Vec<Slot> = slots[r].clone();
            for (&i, &s) in order.iter().zip(&stops).take(beams) {
                if !s {
                    continue;
                }
                let mut score = flat[i] / lp_pow(cur_len);
                if (opts.early_stopping && full) || !improvable[r] {
                    score += NEG;
                }
                let mut tokens = run_tokens[r * beams + i / v].clone();
                tokens.push((i % v) as u32);
                cands.push(Slot {
                    score,
                    tokens,
                    filled: true,
                });
            }
            cands.sort_by(|a, b2| b2.score.total_cmp(&a.score));
            cands.truncate(beams);
            slots[r] = cands;
        }
        // Follow the kept beams.
        dec.reorder(&Tensor::new(src_beams.as_slice(), &device)?)?;
        run_tokens = src_beams
            .iter()
            .zip(&new_tokens)
            .map(|(&s, &t)| {
                let mut v = run_tokens[s as usize].clone();
                v.push(t);
                v
            })
            .collect();
        run_scores = new_scores;
        next = new_tokens;
        cur_len += 1;
        for r in 0..b {
            if slots[r].iter().all(|s| s.filled) {
                let best = run_scores[r * beams..(r + 1) * beams]
                    .iter()
                    .copied()
                    .fold(f32::NEG_INFINITY, f32::max);
                let worst = slots[r]
                    .iter()
                    .map(|s| s.score)
                    .fold(f32::INFINITY, f32::min);
                if best / lp_pow(cur_len - 1) <= worst {
                    improvable[r] = false;
                }
            }
        }
        let all_full = slots.iter().all(|s| s.iter().all(|x| x.filled));
        if improvable.iter().all(|&i| !i) || (opts.early_stopping && all_full) {
            break;
        }
    }
    // The best slot even if unfilled (as transformers); the others only when filled.
    Ok(slots
        .into_iter()
        .map(|s| {
            s.into_iter()
                .enumerate()
                .filter(|(i, slot)| *i == 0 || slot.filled)
                .map(|(_, slot)| Hypothesis {
                    tokens: slot.tokens,
                    score: slot.score,
                })
                .collect()
        })
        .collect())
}

/// An output's token ids (without end-of-sequence) and its score.
pub type Scored = (Vec<u32>, f32);

/// Decodes source id sequences (each ending with end-of-sequence) as one padded batch with one
/// model or an ensemble; returns each output's token ids (without end-of-sequence) and its
/// score.
pub fn decode_ids(
    models: &[&Marian],
    inputs: &[Vec<u32>],
    opts: &DecodeOptions,
) -> Result<Vec<Scored>> {
    Ok(decode_ids_nbest(models, inputs, opts)?
        .into_iter()
        .map(|mut n| n.swap_remove(0))
        .collect())
}

/// As [`decode_ids`], with every input's n-best outputs (beam search; greedy gives one).
pub fn decode_ids_nbest(
    models: &[&Marian],
    inputs: &[Vec<u32>],
    opts: &DecodeOptions,
) -> Result<Vec<Vec<Scored>>> {
    check_ensemble(models)?;
    let eos = models[0].config.eos_token_id;
    let batch = padded(models, inputs, &vec![vec![eos]; inputs.len()])?;
    let nbest = if opts.num_beams > 1 {
        decode_nbest(models, &batch.src, Some(&batch.src_mask), opts)?
    } else {
        decode_ensemble(models, &batch.src, Some(&batch.src_mask), opts)?
            .into_iter()
            .map(|h| vec![h])
            .collect()
    };
    Ok(nbest
        .into_iter()
        .map(|n| {
            n.into_iter()
                .map(|h| (strip_eos(&h.tokens, eos).to_vec(), h.score))
                .collect()
        })
        .collect())
}

/// The tokens of a hypothesis without the end-of-sequence token.
pub fn strip_eos(tokens: &[u32], eos: u32) -> &[u32] {
    match tokens.iter().position(|&t| t == eos) {
        Some(i) => &tokens[..i],
        None => tokens,
    }
}

/// Source id sequences (each ending with end-of-sequence) and targets as one padded batch.
pub(crate) fn padded(
    models: &[&Marian],
    inputs: &[Vec<u32>],
    targets: &[Vec<u32>],
) -> Result<PairBatch> {
    check_ensemble(models)?;
    let c = &models[0].config;
    let pairs: Vec<Pair> = inputs
        .iter()
        .zip(targets)
        .map(|(s, t)| Pair {
            src: s.clone(),
            tgt: t.clone(),
        })
        .collect();
    let refs: Vec<&Pair> = pairs.iter().collect();
    pad_batch(
        &refs,
        c.pad_token_id,
        c.decoder_start_token_id,
        models[0].device(),
    )
}
