//! Translation with encoder-decoder models (one, an ensemble, or left-to-right and
//! right-to-left runs together): [`Translator`] loads the runs and their vocabularies and
//! decodes text; the decoding itself is [`super::decode`] and [`super::rescore`].

pub use super::decode::*;
pub use super::rescore::*;
use crate::models::marian::Marian;
use crate::{Error, Result};

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
