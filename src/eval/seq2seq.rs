//! Scoring sequence-to-sequence runs (grapheme to phoneme) on a part of the lexicon they were
//! trained on: word and phoneme error rates of their outputs (an output is right if it equals
//! any of the word's pronunciations), with stress digits and without (AH0 = AH1, as published
//! CMUdict results score).

use crate::data::lexicon::{unstressed, LexEntry, Lexicon, Part};
use crate::infer::translate::{strip_eos, DecodeOptions, Translator};
use crate::objective::seq2seq::{encode_target, error_rates};
use crate::train::recipe::DataConfig;
use crate::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;

/// Error rates on a lexicon part.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LexiconScores {
    pub wer: f64,
    pub per: f64,
    pub n: usize,
    pub wer_no_stress: f64,
    pub per_no_stress: f64,
}

/// The lexicon the runs in `dirs` were trained on (from their `recipe.toml`; `data` replaces
/// its file), read as they read it but left to right. The runs must share their `[data]`
/// section: a word one run trained on would be scored as unseen by the ensemble.
pub fn run_lexicon(dirs: &[PathBuf], data: Option<&str>) -> Result<(Lexicon, DataConfig)> {
    let datas: Vec<DataConfig> = dirs
        .iter()
        .map(|d| {
            crate::train::Recipe::load(&d.join("recipe.toml"), &[]).map(|r| DataConfig {
                // Outputs come back left to right from every model, so the references are
                // read so too.
                reverse_target: false,
                ..r.data
            })
        })
        .collect::<Result<_>>()?;
    if let Some(i) = datas.iter().position(|d| *d != datas[0]) {
        return Err(Error::Config(format!(
            "{} was trained with a different [data] section (split, stress or corpus) than {}; an ensemble is scored on one split",
            dirs[i].display(),
            dirs[0].display()
        )));
    }
    let d = datas
        .into_iter()
        .next()
        .ok_or_else(|| Error::Config("no model to score".into()))?;
    let file = match data {
        Some(f) => f.to_string(),
        None => d
            .corpus
            .first()
            .cloned()
            .ok_or_else(|| Error::Config("the recipe names no corpus; pass --data".into()))?,
    };
    // Scored as trained: without stress digits in the references too when the run was.
    let lex = d.lexicon(&crate::assets::resolve(&file)?)?;
    Ok((lex, d))
}

/// The entries of `part` of `lex` under the split `d` describes.
pub fn part<'a>(lex: &'a Lexicon, d: &DataConfig, part: Part) -> Vec<&'a LexEntry> {
    lex.split(d.split_seed, d.split_fractions(), part)
}

/// Decodes `words` in batches of `batch` (`progress` gets the words done) and scores the
/// outputs against every pronunciation of each word.
pub fn score(
    t: &Translator,
    words: &[&LexEntry],
    opts: &DecodeOptions,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<LexiconScores> {
    if words.is_empty() {
        return Err(Error::Data("no words to score".into()));
    }
    let eos = t.config().eos_token_id;
    let (mut outputs, mut refs) = (vec![], vec![]);
    for chunk in words.chunks(batch.max(1)) {
        let ids: Vec<Vec<u32>> = chunk
            .iter()
            .map(|e| t.encode(&e.word, true))
            .collect::<Result<_>>()?;
        for (toks, _) in t.translate_ids(&ids, opts)? {
            outputs.push(toks);
        }
        for e in chunk {
            let r: Vec<Vec<u32>> = e
                .prons
                .iter()
                .map(|p| {
                    let v = encode_target(&t.target, &p.join(" ")).unwrap_or_else(|_| {
                        // A phoneme the model never saw: it cannot be produced, so any id
                        // that is not an output token keeps the reference unmatched.
                        p.iter().map(|_| u32::MAX).chain([eos]).collect()
                    });
                    strip_eos(&v, eos).to_vec()
                })
                .collect();
            refs.push(r);
        }
        progress(outputs.len());
    }
    let r = error_rates(&outputs, &refs);
    let plain = |ids: &Vec<u32>| -> Vec<String> {
        ids.iter()
            .map(|&i| match t.target.id_token(i) {
                Some(p) => unstressed(&p).to_string(),
                None => format!("#{i}"),
            })
            .collect()
    };
    let ns = error_rates(
        &outputs.iter().map(plain).collect::<Vec<_>>(),
        &refs
            .iter()
            .map(|rs| rs.iter().map(plain).collect())
            .collect::<Vec<_>>(),
    );
    Ok(LexiconScores {
        wer: r.wer,
        per: r.per,
        n: r.n,
        wer_no_stress: ns.wer,
        per_no_stress: ns.per,
    })
}
