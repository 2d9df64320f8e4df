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
//! Models trained to write their output right to left (`data.reverse_target`) decode alone with
//! their output turned back. Beside left-to-right models they rescore: each direction's
//! ensemble proposes its n-best outputs, and the candidate with the highest mean over all models
//! of its whole-sequence log-probability (each model reading it in its own direction) wins, as
//! in target-bidirectional G2P and NMT systems (Liu et al., 2016; Sennrich et al., 2016).

use crate::models::marian::{DecoderCache, Marian};
use crate::nn::kernels::cross_entropy::nll_rows;
use crate::objective::seq2seq::{pad_batch, target_logits, Pair, PairBatch};
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
fn log_softmax(row: &mut [f32]) {
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
fn combine(mut all: Vec<Vec<Vec<f32>>>, mean: EnsembleMean) -> Vec<Vec<f32>> {
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
fn log_mean_exp(vals: impl Iterator<Item = f32> + Clone, ln_n: f32) -> f32 {
    let max = vals.clone().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + vals.map(|v| (v - max).exp()).sum::<f32>().ln() - ln_n
}

/// Teacher-forced next-token log-probabilities `[b, t, v]` of one model or an ensemble (combined
/// by `mean`) for sources `src` `[b, s]` (`mask` `[b, s]` 0/1 for padded batches) and decoder
/// inputs `tgt` `[b, t]` (start token first).
pub fn log_probs(
    models: &[&Marian],
    src: &Tensor,
    mask: Option<&Tensor>,
    tgt: &Tensor,
    mean: EnsembleMean,
) -> Result<Tensor> {
    check_ensemble(models)?;
    let add_mask = mask.map(Marian::source_mask).transpose()?;
    let (b, t) = tgt.dims2()?;
    let mut all = Vec::with_capacity(models.len());
    for m in models {
        let enc = m.encode(src, add_mask.as_ref(), None)?;
        let h = m.decode(tgt, &enc, add_mask.as_ref(), None, None)?;
        let rows: Vec<Vec<f32>> = m.logits(&h)?.flatten_to(1)?.to_vec2()?;
        all.push(rows);
    }
    let mut rows = combine(all, mean);
    if models.len() == 1 {
        rows.iter_mut().for_each(|r| log_softmax(r));
    }
    let v = rows.first().map_or(0, Vec::len);
    Ok(Tensor::from_vec(
        rows.concat(),
        (b, t, v),
        models[0].device(),
    )?)
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

/// Source id sequences (each ending with end-of-sequence) and targets as one padded batch.
fn padded(models: &[&Marian], inputs: &[Vec<u32>], targets: &[Vec<u32>]) -> Result<PairBatch> {
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

/// Each target's log-probability under `model` (the sum over its tokens, end-of-sequence
/// included; teacher-forced) given its source; `inputs` and `targets` pair up.
pub fn sequence_log_probs(
    model: &Marian,
    inputs: &[Vec<u32>],
    targets: &[Vec<u32>],
) -> Result<Vec<f32>> {
    if inputs.len() != targets.len() || inputs.is_empty() {
        return Err(Error::Data(format!(
            "scoring needs one target per input and at least one ({} inputs, {} targets)",
            inputs.len(),
            targets.len()
        )));
    }
    // In chunks: the logits of every target position are rows x vocabulary floats.
    let mut out = Vec::with_capacity(inputs.len());
    for (srcs, tgts) in inputs.chunks(64).zip(targets.chunks(64)) {
        let batch = padded(&[model], srcs, tgts)?;
        let (logits, y, owners) = target_logits(model, &batch, None)?;
        let mut sums = vec![0f32; srcs.len()];
        for (o, x) in owners
            .into_iter()
            .zip(nll_rows(&logits, &y)?.to_vec1::<f32>()?)
        {
            sums[o] -= x;
        }
        out.extend(sums);
    }
    Ok(out)
}

/// Decodes with left-to-right models `forward` and right-to-left models `backward` (trained on
/// reversed targets) together: each direction's ensemble proposes its n-best (`opts.num_beams`;
/// the backward outputs turned around), and each input's candidate with the highest mean over
/// all models of its sequence log-probability (`opts.ensemble_mean`: of the log-probabilities,
/// or the log of the mean probability), divided by (tokens + 1)^`length_penalty` as beam search
/// ranks, wins. Candidates that ran to the models' length limit without ending are not scored
/// (if none is left, the forward ensemble's best stands). Returns the winners (left to right,
/// without end-of-sequence) and their scores. Either list may be empty (then it is plain
/// decoding, backward outputs turned around).
pub fn decode_ids_bidirectional(
    forward: &[&Marian],
    backward: &[&Marian],
    inputs: &[Vec<u32>],
    opts: &DecodeOptions,
) -> Result<Vec<Scored>> {
    let all: Vec<&Marian> = forward.iter().chain(backward).copied().collect();
    check_ensemble(&all)?;
    if backward.is_empty() {
        return decode_ids(forward, inputs, opts);
    }
    if forward.is_empty() {
        let mut out = decode_ids(backward, inputs, opts)?;
        out.iter_mut().for_each(|(t, _)| t.reverse());
        return Ok(out);
    }
    let eos = all[0].config.eos_token_id;
    // A candidate that ran to the length limit without ending cannot be scored with its end.
    let limit = all
        .iter()
        .map(|m| m.config.max_position_embeddings)
        .min()
        .unwrap_or(0);
    let firsts = decode_ids_nbest(forward, inputs, opts)?;
    let mut cands: Vec<Vec<Vec<u32>>> = firsts
        .iter()
        .map(|n| n.iter().map(|(t, _)| t.clone()).collect())
        .collect();
    for (c, n) in cands
        .iter_mut()
        .zip(decode_ids_nbest(backward, inputs, opts)?)
    {
        for (t, _) in n {
            let t: Vec<u32> = t.into_iter().rev().collect();
            if !c.contains(&t) {
                c.push(t);
            }
        }
        c.retain(|t| t.len() < limit);
    }
    // Every (input, candidate) pair, scored by every model in its own direction.
    let (mut srcs, mut fwd, mut bwd) = (vec![], vec![], vec![]);
    for (src, cs) in inputs.iter().zip(&cands) {
        for t in cs {
            srcs.push(src.clone());
            fwd.push(t.iter().copied().chain([eos]).collect::<Vec<u32>>());
            bwd.push(t.iter().rev().copied().chain([eos]).collect::<Vec<u32>>());
        }
    }
    let mut per_model: Vec<Vec<f32>> = vec![];
    if !srcs.is_empty() {
        for (models, targets) in [(forward, &fwd), (backward, &bwd)] {
            for m in models {
                per_model.push(sequence_log_probs(m, &srcs, targets)?);
            }
        }
    }
    let n_models = all.len() as f32;
    let mut scores = fwd.iter().enumerate().map(|(i, t)| {
        let lps = per_model.iter().map(|m| m[i]);
        let mean = match opts.ensemble_mean {
            EnsembleMean::Log => lps.sum::<f32>() / n_models,
            EnsembleMean::Probability => log_mean_exp(lps, n_models.ln()),
        };
        mean / (t.len() as f64).powf(opts.length_penalty) as f32
    });
    Ok(cands
        .into_iter()
        .zip(firsts)
        .map(|(cs, mut first)| {
            let mut best: Option<Scored> = None;
            for t in cs {
                let score = scores.next().unwrap_or(f32::NEG_INFINITY);
                // The first of equal scores: a forward candidate, the forward ensemble's best.
                if best.as_ref().is_none_or(|b| score > b.1) {
                    best = Some((t, score));
                }
            }
            // No candidate ended within the limit: the forward ensemble's best, as it scored.
            best.unwrap_or_else(|| first.swap_remove(0))
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

/// Trained sequence-to-sequence models with their source and target vocabularies (run
/// directories of a `seq2seq` recipe: `tokenizer.json` for the source, `target_tokenizer.json`
/// for the target; a shared vocabulary when the latter is absent). Several models decode as an
/// ensemble; right-to-left ones (runs trained with `data.reverse_target`) rescore beside
/// left-to-right ones ([`decode_ids_bidirectional`]).
pub struct Translator {
    /// The left-to-right models.
    pub models: Vec<Marian>,
    /// The right-to-left models.
    pub reversed: Vec<Marian>,
    pub source: crate::text::tokenizer::Tokenizer,
    pub target: crate::text::tokenizer::Tokenizer,
}

/// A run directory's model, its source and target tokenizers, and whether it writes right to
/// left (its `recipe.toml` sets `data.reverse_target`; directories without one write left to
/// right).
fn load_one(
    dir: &std::path::Path,
    device: &candle_core::Device,
) -> Result<(
    Marian,
    crate::text::tokenizer::Tokenizer,
    crate::text::tokenizer::Tokenizer,
    bool,
)> {
    let (model, _) = crate::models::marian::load_dir(dir, device)?;
    let source = crate::text::tokenizer::Tokenizer::load_dir(dir)?;
    let tgt_path = dir.join("target_tokenizer.json");
    let target = if tgt_path.exists() {
        crate::text::tokenizer::Tokenizer::load(&tgt_path)?
    } else {
        source.clone()
    };
    // A model property, in its config.json (a run trained with `data.reverse_target`).
    let reversed = model
        .config
        .extra
        .get(REVERSE_TARGET)
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    Ok((model, source, target, reversed))
}

/// The `config.json` key of a model that writes its targets right to left.
pub const REVERSE_TARGET: &str = "reverse_target";

impl Translator {
    pub fn load(dir: &std::path::Path, device: &candle_core::Device) -> Result<Self> {
        Self::load_ensemble(&[dir], device)
    }

    /// Loads several models to decode together; their source and target vocabularies must be
    /// identical (checked; an error names the directory that differs).
    pub fn load_ensemble<P: AsRef<std::path::Path>>(
        dirs: &[P],
        device: &candle_core::Device,
    ) -> Result<Self> {
        let first = dirs
            .first()
            .ok_or_else(|| Error::Config("translation needs at least one model".into()))?;
        let (model, source, target, rev) = load_one(first.as_ref(), device)?;
        let fp = (source.fingerprint()?, target.fingerprint()?);
        let mut loaded = vec![(model, rev)];
        for dir in &dirs[1..] {
            let dir = dir.as_ref();
            let (m, s, t, rev) = load_one(dir, device)?;
            if (s.fingerprint()?, t.fingerprint()?) != fp {
                return Err(Error::Config(format!(
                    "{}: its source or target vocabulary differs from {}'s; models decoded \
                     together must share them",
                    dir.display(),
                    first.as_ref().display()
                )));
            }
            loaded.push((m, rev));
        }
        let (reversed, models): (Vec<_>, Vec<_>) = loaded.into_iter().partition(|(_, r)| *r);
        let only = |v: Vec<(Marian, bool)>| v.into_iter().map(|(m, _)| m).collect();
        let t = Translator {
            models: only(models),
            reversed: only(reversed),
            source,
            target,
        };
        check_ensemble(&t.all())?;
        Ok(t)
    }

    /// Every model, left-to-right ones first.
    fn all(&self) -> Vec<&Marian> {
        self.models.iter().chain(&self.reversed).collect()
    }

    /// The first model's configuration (the special token ids all models share).
    pub fn config(&self) -> &crate::models::marian::MarianConfig {
        let first = self.models.first().or(self.reversed.first());
        &first.expect("a translator holds at least one model").config
    }

    /// The longest input or output every model takes (end-of-sequence included).
    fn max_positions(&self) -> usize {
        self.all()
            .iter()
            .map(|m| m.config.max_position_embeddings)
            .min()
            .unwrap_or(0)
    }

    /// Source ids of one input (characters, then end-of-sequence). Characters outside the
    /// vocabulary are an error naming them unless `allow_unk` (then `<unk>`); an input longer
    /// than the models' positions is an error.
    pub fn encode(&self, text: &str, allow_unk: bool) -> Result<Vec<u32>> {
        let ids = crate::objective::seq2seq::encode_source(&self.source, text, allow_unk)?;
        let max = self.max_positions();
        if ids.len() > max {
            return Err(Error::Data(format!(
                "{text:?} is {} tokens long (end of sequence included); the model takes at most {max}",
                ids.len()
            )));
        }
        Ok(ids)
    }

    /// Decodes already-encoded inputs in one batch, left to right; see [`decode_ids`] and, with
    /// right-to-left models, [`decode_ids_bidirectional`].
    pub fn translate_ids(&self, inputs: &[Vec<u32>], opts: &DecodeOptions) -> Result<Vec<Scored>> {
        decode_ids_bidirectional(
            &self.models.iter().collect::<Vec<_>>(),
            &self.reversed.iter().collect::<Vec<_>>(),
            inputs,
            opts,
        )
    }

    /// The text of target ids (symbols joined by spaces).
    pub fn target_text(&self, ids: &[u32]) -> Result<String> {
        self.target.decode_with(ids, true)
    }

    /// Decoding options from the models: at most as many tokens as they have positions, the pad
    /// token banned.
    pub fn options(&self, num_beams: usize, length_penalty: f64) -> DecodeOptions {
        DecodeOptions {
            max_new_tokens: self.max_positions(),
            num_beams,
            length_penalty,
            ..Default::default()
        }
    }
}
