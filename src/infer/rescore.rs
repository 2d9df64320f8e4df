//! Whole-sequence scores of an encoder-decoder model or an ensemble: teacher-forced
//! log-probabilities, and bidirectional rescoring. Models trained to write their output right
//! to left (`data.reverse_target`) rescore beside left-to-right ones: each direction's ensemble
//! proposes its n-best outputs, and the candidate with the highest mean over all models of its
//! whole-sequence log-probability (each model reading it in its own direction) wins, as in
//! target-bidirectional G2P and NMT systems (Liu et al., 2016; Sennrich et al., 2016).

use super::decode::*;
use crate::models::marian::Marian;
use crate::nn::kernels::cross_entropy::nll_rows;
use crate::objective::seq2seq::target_logits;
use crate::{Error, Result};
use candle_core::Tensor;

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
