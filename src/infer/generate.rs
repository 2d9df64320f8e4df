//! Text generation, one token at a time with the key/value cache: greedy, temperature, top-k
//! and top-p (nucleus) sampling, streamed as text.

use crate::models::CausalModel;
use crate::rng::Rng;
use crate::text::tokenizer::{Tokenizer, EOT};
use crate::{Error, Result};
use candle_core::Tensor;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    pub max_tokens: usize,
    /// 0 means greedy (always the most likely token).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`.
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(Error::Config("top-k must be at least 1".into()));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Config(format!("top-p must be in (0, 1], got {p}")));
            }
        }
        Ok(())
    }
}

/// Picks a token from one row of logits. Plain temperature sampling walks the vocabulary in
/// order; top-k and top-p need the most likely tokens in order of probability, found by
/// partial selection (a few dozen usually suffice) rather than sorting the whole vocabulary,
/// which at 50k tokens cost milliseconds per token.
pub fn pick(logits: &[f32], cfg: &SamplingConfig, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if cfg.temperature == 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / cfg.temperature).exp())
        .collect();
    let weight = |i: usize| weights[i];
    // Draws among `idx` with probabilities proportional to their weights.
    let draw = |idx: &mut dyn Iterator<Item = usize>, total: f64, rng: &mut Rng| {
        let mut u = rng.uniform() * total;
        let mut last = None;
        for i in idx {
            let w = weight(i);
            if u < w {
                return Some(i as u32);
            }
            u -= w;
            last = Some(i as u32);
        }
        last
    };
    let v = logits.len();
    if cfg.top_k.is_none() && cfg.top_p.is_none() {
        let total: f64 = weights.iter().sum();
        return draw(&mut (0..v), total, rng).unwrap_or_else(argmax);
    }
    let limit = cfg.top_k.unwrap_or(v).clamp(1, v);
    let desc = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..v).collect();
    let mut k = limit.min(64);
    loop {
        if k < v {
            idx.select_nth_unstable_by(k - 1, desc);
        }
        idx[..k].sort_unstable_by(desc);
        // Top-k renormalises over the k kept; top-p alone measures against the whole vocabulary.
        let total: f64 = if cfg.top_k.is_some() && k == limit {
            idx[..k].iter().map(|&i| weight(i)).sum()
        } else if cfg.top_k.is_some() {
            // The k-best set is not complete yet: widen it first.
            f64::NAN
        } else {
            weights.iter().sum()
        };
        if !total.is_nan() {
            let keep = match cfg.top_p {
                None => Some(k),
                Some(p) => {
                    let mut cum = 0.0;
                    idx[..k]
                        .iter()
                        .position(|&i| {
                            cum += weight(i) / total;
                            cum >= p
                        })
                        .map(|n| n + 1)
                }
            };
            // Top-p reached inside the candidates (or no more to add): draw among them.
            if let Some(n) = keep.or((k == limit).then_some(k)) {
                let kept: f64 = idx[..n].iter().map(|&i| weight(i)).sum();
                return draw(&mut idx[..n].iter().copied(), kept, rng).unwrap_or_else(argmax);
            }
        }
        k = (k * 4).min(limit);
    }
}

/// Logits of the last of `ids`, run through the cache (only that position is projected onto
/// the vocabulary).
fn last_logits(
    model: &CausalModel,
    ids: &[u32],
    caches: &mut [crate::nn::KvCache],
) -> Result<Vec<f32>> {
    let mut step = || {
        let x = Tensor::new(ids, model.device())?.unsqueeze(0)?;
        let h = model.hidden(&x, Some(caches), None)?;
        let last = h.narrow(1, ids.len() - 1, 1)?;
        Ok(model.logits(&last)?.flatten_all()?.to_vec1::<f32>()?)
    };
    // One new token is a decode step: small products, best on the spinning team. A prompt
    // is a few large ones, and its attention runs on rayon.
    if ids.len() == 1 {
        crate::nn::kernels::team::decode(step)
    } else {
        step()
    }
}

/// Generates up to `cfg.max_tokens` token ids after `prompt` (non-empty, inside the
/// vocabulary), calling `on_token` with each as it is chosen; stops early at any of `stop`
/// (which is not returned) or when `on_token` returns `false` (that token is returned).
pub fn generate_ids(
    model: &CausalModel,
    prompt: &[u32],
    cfg: &SamplingConfig,
    stop: &[u32],
    on_token: &mut dyn FnMut(u32) -> Result<bool>,
) -> Result<Vec<u32>> {
    cfg.validate()?;
    if prompt.is_empty() {
        return Err(Error::Config("the prompt is empty".into()));
    }
    if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= model.vocab_size()) {
        return Err(Error::Config(format!(
            "token id {bad} is outside the model's vocabulary"
        )));
    }
    let max_pos = model.max_positions();
    let mut context = prompt[prompt.len().saturating_sub(max_pos)..].to_vec();
    let mut rng = Rng::new(cfg.seed);
    let mut caches = model.new_caches();
    let mut logits = last_logits(model, &context, &mut caches)?;
    let mut out: Vec<u32> = vec![];
    for _ in 0..cfg.max_tokens {
        let next = pick(&logits, cfg, &mut rng);
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        context.push(next);
        if !on_token(next)? {
            break;
        }
        if caches[0].len() + 1 > max_pos {
            // Window full: restart the cache on the most recent half of the context.
            let keep = max_pos / 2;
            let tail: Vec<u32> = context[context.len() - keep..].to_vec();
            caches = model.new_caches();
            logits = last_logits(model, &tail, &mut caches)?;
        } else {
            logits = last_logits(model, &[next], &mut caches)?;
        }
    }
    Ok(out)
}

/// Generates up to `cfg.max_tokens` tokens after `prompt`, calling `on_text` with each new
/// piece of text as soon as it is complete UTF-8. Stops early at `<|endoftext|>`. Returns the
/// generated ids.
pub fn generate(
    model: &CausalModel,
    tokenizer: &Tokenizer,
    prompt: &str,
    cfg: &SamplingConfig,
    on_text: &mut dyn FnMut(&str),
) -> Result<Vec<u32>> {
    let eot = tokenizer.token_id(EOT);
    let mut context = tokenizer.encode(prompt)?;
    if context.is_empty() {
        context = vec![eot.ok_or_else(|| Error::Config("the prompt is empty".into()))?];
    }
    let stop: Vec<u32> = eot.into_iter().collect();
    generate_stream(model, tokenizer, &context, cfg, &stop, on_text)
}

/// Generates after the token ids `prompt`, streaming text to `on_text` and stopping at any of
/// `stop`. Returns the generated ids.
pub fn generate_stream(
    model: &CausalModel,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    cfg: &SamplingConfig,
    stop: &[u32],
    on_text: &mut dyn FnMut(&str),
) -> Result<Vec<u32>> {
    // The streaming decoder turns each token into the text it completes (a byte-level token
    // can end inside a multi-byte character: then it yields nothing until the rest arrives),
    // without re-decoding everything generated so far at every token.
    let mut stream = tokenizer.inner.decode_stream(false);
    generate_ids(model, prompt, cfg, stop, &mut |id| {
        let piece = stream
            .step(id)
            .map_err(|e| Error::Config(format!("tokenizer: {e}")))?;
        if let Some(piece) = piece {
            on_text(&piece);
        }
        Ok(true)
    })
}

/// Generated text checked against stop strings as it streams: text that may be the start of a
/// stop string is held back until the next pieces decide; at a stop string the text ends (the
/// stop string itself is not part of it).
#[derive(Debug, Clone, Default)]
pub struct StopText {
    stops: Vec<String>,
    pending: String,
}

impl StopText {
    /// Empty stop strings are ignored.
    pub fn new(stops: Vec<String>) -> Self {
        StopText {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Adds a piece of generated text: returns the text now final, and whether a stop string
    /// ended it.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        let p = &self.pending;
        if let Some(at) = self.stops.iter().filter_map(|s| p.find(s.as_str())).min() {
            let out = p[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // The longest tail of the pending text that begins some stop string is held back.
        let hold = self
            .stops
            .iter()
            .filter_map(|s| {
                (1..s.len().min(p.len() + 1))
                    .rev()
                    .find(|&k| p.is_char_boundary(p.len() - k) && s.starts_with(&p[p.len() - k..]))
            })
            .max()
            .unwrap_or(0);
        let out: String = self.pending.drain(..self.pending.len() - hold).collect();
        (out, false)
    }

    /// The text held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Full-sequence logits of the last position without a cache (reference for cache tests).
pub fn logits_no_cache(model: &CausalModel, ids: &[u32]) -> Result<Vec<f32>> {
    let x = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    let logits = model.forward(&x, None, None)?;
    Ok(logits.squeeze(0)?.get(ids.len() - 1)?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_end_the_text_across_pieces() {
        let mut s = StopText::new(vec!["\n\nUser:".into(), "END".into(), "".into()]);
        assert_eq!(s.push("Hello"), ("Hello".into(), false));
        // "\n" may begin "\n\nUser:": held back.
        assert_eq!(s.push(" world\n"), (" world".into(), false));
        assert_eq!(s.push("x"), ("\nx".into(), false));
        assert_eq!(s.push(" E"), (" ".into(), false));
        assert_eq!(s.push("NDING"), ("".into(), true));
        let mut s = StopText::new(vec!["é!".into()]);
        assert_eq!(s.push("café"), ("caf".into(), false));
        assert_eq!(s.finish(), "é");
        let mut none = StopText::new(vec![]);
        assert_eq!(none.push("a\n"), ("a\n".into(), false));
    }

    /// Exact probabilities of each token under `cfg`, by sorting the whole vocabulary.
    fn reference(logits: &[f32], cfg: &SamplingConfig) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        idx.truncate(cfg.top_k.unwrap_or(idx.len()));
        let max = logits[idx[0]] as f64;
        let w: Vec<f64> = idx
            .iter()
            .map(|&i| ((logits[i] as f64 - max) / cfg.temperature).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let mut keep = idx.len();
        if let Some(p) = cfg.top_p {
            let mut cum = 0.0;
            keep = w
                .iter()
                .position(|x| {
                    cum += x / total;
                    cum >= p
                })
                .map_or(idx.len(), |n| n + 1);
        }
        let kept: f64 = w[..keep].iter().sum();
        let mut out = vec![0.0; logits.len()];
        for (n, &i) in idx[..keep].iter().enumerate() {
            out[i] = w[n] / kept;
        }
        out
    }

    #[test]
    fn sampling_follows_the_exact_distribution_on_a_large_vocabulary() {
        // 2000 tokens with a long tail, so top-p 0.9 needs hundreds of candidates.
        let logits: Vec<f32> = (0..2000)
            .map(|i| ((i * 7919) % 2000) as f32 / 400.0)
            .collect();
        let base = SamplingConfig {
            max_tokens: 1,
            temperature: 0.7,
            top_k: None,
            top_p: None,
            seed: 0,
        };
        for cfg in [
            base,
            SamplingConfig {
                top_p: Some(0.9),
                ..base
            },
            SamplingConfig {
                top_k: Some(300),
                ..base
            },
            SamplingConfig {
                top_k: Some(500),
                top_p: Some(0.6),
                ..base
            },
        ] {
            let want = reference(&logits, &cfg);
            let mut rng = Rng::new(5);
            let n = 20_000;
            let mut seen = vec![0usize; logits.len()];
            for _ in 0..n {
                seen[pick(&logits, &cfg, &mut rng) as usize] += 1;
            }
            for (i, (&c, &p)) in seen.iter().zip(&want).enumerate() {
                if p == 0.0 {
                    assert_eq!(c, 0, "{cfg:?}: token {i} is outside the kept set");
                }
            }
            // The 20 likeliest tokens: frequencies within 5 standard deviations.
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| want[b].total_cmp(&want[a]));
            for &i in &order[..20] {
                let f = seen[i] as f64 / n as f64;
                let sd = (want[i] * (1.0 - want[i]) / n as f64).sqrt();
                assert!(
                    (f - want[i]).abs() <= 5.0 * sd + 1e-9,
                    "{cfg:?}: token {i}: {f} vs {}",
                    want[i]
                );
            }
        }
    }

    #[test]
    fn greedy_topk_topp() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let mut rng = Rng::new(0);
        let greedy = SamplingConfig {
            max_tokens: 1,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        };
        assert_eq!(pick(&logits, &greedy, &mut rng), 1);
        let k1 = SamplingConfig {
            temperature: 1.0,
            top_k: Some(1),
            ..greedy
        };
        for _ in 0..20 {
            assert_eq!(pick(&logits, &k1, &mut rng), 1);
        }
        // p(1) = 0.665, p(2) = 0.245: top-p 0.8 keeps exactly tokens 1 and 2.
        let p = SamplingConfig {
            temperature: 1.0,
            top_p: Some(0.8),
            ..greedy
        };
        let mut seen = [0; 4];
        for _ in 0..2000 {
            seen[pick(&logits, &p, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[3], 0);
        let frac = seen[1] as f64 / 2000.0;
        assert!((frac - 0.665 / 0.91).abs() < 0.04, "{seen:?}");
    }
}
