//! Decoding with an encoder-decoder model: greedy and beam search, batched, with the decoder's
//! self-attention keys/values cached and the encoder output (and its cross-attention keys and
//! values) computed once. Both follow transformers' `generate` step for step (its logits
//! processors for banning the pad token, forcing end-of-sequence at the length limit and
//! renormalising; its beam search bookkeeping and length penalty), so checkpoints decode the
//! same here and there.

use crate::models::seq2seq::Seq2Seq;
use crate::{Error, Result};
use candle_core::Tensor;

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

/// The last position's logits of `h` `[n, 1, d]` as rows of f32.
fn last_logits(model: &Seq2Seq, h: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(model.logits(&h.squeeze(1)?)?.to_vec2()?)
}

/// Decodes every source row of `src` `[b, s]` (u32; `mask` `[b, s]` 0/1 for padded batches):
/// greedy when `opts.num_beams == 1`, else beam search. One best hypothesis per row.
pub fn decode(
    model: &Seq2Seq,
    src: &Tensor,
    mask: Option<&Tensor>,
    opts: &DecodeOptions,
) -> Result<Vec<Hypothesis>> {
    decode_with(model, src, mask, opts, opts.num_beams > 1)
}

/// As [`decode`], with beam search even for one beam (which then normally equals greedy).
pub fn decode_beam(
    model: &Seq2Seq,
    src: &Tensor,
    mask: Option<&Tensor>,
    opts: &DecodeOptions,
) -> Result<Vec<Hypothesis>> {
    decode_with(model, src, mask, opts, true)
}

fn decode_with(
    model: &Seq2Seq,
    src: &Tensor,
    mask: Option<&Tensor>,
    opts: &DecodeOptions,
    beam: bool,
) -> Result<Vec<Hypothesis>> {
    opts.validate()?;
    let add_mask = mask.map(Seq2Seq::source_mask).transpose()?;
    let enc = model.encode(src, add_mask.as_ref(), None)?;
    if beam {
        beam_search(model, &enc, add_mask.as_ref(), opts)
    } else {
        greedy(model, &enc, add_mask.as_ref(), opts)
    }
}

fn greedy(
    model: &Seq2Seq,
    enc: &Tensor,
    mask: Option<&Tensor>,
    opts: &DecodeOptions,
) -> Result<Vec<Hypothesis>> {
    let c = &model.config;
    let b = enc.dim(0)?;
    let mut caches = model.new_caches();
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
        let input = Tensor::from_vec(next.clone(), (b, 1), model.device())?;
        let h = model.decode(&input, enc, mask, Some(&mut caches), None)?;
        let rows = last_logits(model, &h)?;
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
    model: &Seq2Seq,
    enc: &Tensor,
    mask: Option<&Tensor>,
    opts: &DecodeOptions,
) -> Result<Vec<Hypothesis>> {
    const NEG: f32 = -1.0e9;
    let c = &model.config;
    let (b, beams) = (enc.dim(0)?, opts.num_beams);
    let device = model.device();
    // Each source row repeated once per beam.
    let rep: Vec<u32> = (0..b as u32)
        .flat_map(|i| std::iter::repeat_n(i, beams))
        .collect();
    let rep = Tensor::new(rep.as_slice(), device)?;
    let enc = enc.index_select(&rep, 0)?;
    let mask = mask.map(|m| m.index_select(&rep, 0)).transpose()?;
    let mut caches = model.new_caches();
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
        let input = Tensor::from_vec(next.clone(), (b * beams, 1), device)?;
        let h = model.decode(&input, &enc, mask.as_ref(), Some(&mut caches), None)?;
        let rows = last_logits(model, &h)?;
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
        let idx = Tensor::new(src_beams.as_slice(), device)?;
        for cache in caches.iter_mut() {
            cache.self_kv.reorder(&idx)?;
        }
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
    Ok(slots
        .into_iter()
        .map(|s| {
            let best = &s[0];
            Hypothesis {
                tokens: best.tokens.clone(),
                score: best.score,
            }
        })
        .collect())
}

/// Decodes source id sequences (each ending with end-of-sequence) as one padded batch;
/// returns each output's token ids (without end-of-sequence) and its score.
pub fn decode_ids(
    model: &Seq2Seq,
    inputs: &[Vec<u32>],
    opts: &DecodeOptions,
) -> Result<Vec<(Vec<u32>, f32)>> {
    use crate::objective::seq2seq::{pad_batch, Pair};
    let c = &model.config;
    let pairs: Vec<Pair> = inputs
        .iter()
        .map(|s| Pair {
            src: s.clone(),
            tgt: vec![c.eos_token_id],
        })
        .collect();
    let refs: Vec<&Pair> = pairs.iter().collect();
    let batch = pad_batch(
        &refs,
        c.pad_token_id,
        c.decoder_start_token_id,
        model.device(),
    )?;
    let hyps = decode(model, &batch.src, Some(&batch.src_mask), opts)?;
    Ok(hyps
        .into_iter()
        .map(|h| (strip_eos(&h.tokens, c.eos_token_id).to_vec(), h.score))
        .collect())
}

/// The tokens of a hypothesis without the end-of-sequence token.
pub fn strip_eos(tokens: &[u32], eos: u32) -> &[u32] {
    match tokens.iter().position(|&t| t == eos) {
        Some(i) => &tokens[..i],
        None => tokens,
    }
}

/// A trained sequence-to-sequence model with its source and target vocabularies (a run
/// directory of a `seq2seq` recipe: `tokenizer.json` for the source, `target_tokenizer.json`
/// for the target; a shared vocabulary when the latter is absent).
pub struct Translator {
    pub model: Seq2Seq,
    pub source: crate::tokenizer::Tokenizer,
    pub target: crate::tokenizer::Tokenizer,
}

impl Translator {
    pub fn load(dir: &std::path::Path, device: &candle_core::Device) -> Result<Self> {
        let (model, _) = crate::models::seq2seq::load_dir(dir, device)?;
        let source = crate::tokenizer::Tokenizer::load_dir(dir)?;
        let tgt_path = dir.join("target_tokenizer.json");
        let target = if tgt_path.exists() {
            crate::tokenizer::Tokenizer::load(&tgt_path)?
        } else {
            source.clone()
        };
        Ok(Translator {
            model,
            source,
            target,
        })
    }

    /// Source ids of one input (characters, then end-of-sequence). Characters outside the
    /// vocabulary are an error naming them unless `allow_unk` (then `<unk>`); an input longer
    /// than the model's positions is an error.
    pub fn encode(&self, text: &str, allow_unk: bool) -> Result<Vec<u32>> {
        let ids = crate::objective::seq2seq::encode_source(&self.source, text, allow_unk)?;
        let max = self.model.config.max_position_embeddings;
        if ids.len() > max {
            return Err(Error::Data(format!(
                "{text:?} is {} tokens long (end of sequence included); the model takes at most {max}",
                ids.len()
            )));
        }
        Ok(ids)
    }

    /// Decodes already-encoded inputs in one batch; see [`decode_ids`].
    pub fn translate_ids(
        &self,
        inputs: &[Vec<u32>],
        opts: &DecodeOptions,
    ) -> Result<Vec<(Vec<u32>, f32)>> {
        decode_ids(&self.model, inputs, opts)
    }

    /// The text of target ids (symbols joined by spaces).
    pub fn target_text(&self, ids: &[u32]) -> Result<String> {
        self.target.decode_with(ids, true)
    }

    /// Decoding options from the model: at most as many tokens as it has positions, the pad
    /// token banned.
    pub fn options(&self, num_beams: usize, length_penalty: f64) -> DecodeOptions {
        DecodeOptions {
            max_new_tokens: self.model.config.max_position_embeddings,
            num_beams,
            length_penalty,
            ..Default::default()
        }
    }
}
