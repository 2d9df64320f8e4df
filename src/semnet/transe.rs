//! TransE (Bordes et al., 2013, "Translating Embeddings for Modeling Multi-relational Data"):
//! entities and relations in one space, a triple scored by the distance ‖h + r − t‖ (L1 or
//! L2), trained with the margin ranking loss against corrupted triples (head or tail replaced
//! by a uniformly drawn entity). Entity vectors enter the score L2-normalised (the paper's
//! unit-norm constraint, kept differentiably instead of by projection). Link prediction:
//! filtered rank of the true entity among all entities, both directions (MRR, Hits@k).

use crate::io::atomic::write_atomic;
use crate::io::write_json_atomic;
use crate::nn::{Init, ParamStore};
use crate::rng::Rng;
use crate::semnet::kg::{KgSplit, Triple};
use crate::{Error, Result};
use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

/// Sizes and scoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransEConfig {
    pub model_type: String,
    pub n_entities: usize,
    pub n_relations: usize,
    pub dim: usize,
    /// 1 (L1, the paper's choice for WordNet) or 2.
    pub norm: u8,
    pub margin: f64,
}

pub struct TransE {
    pub config: TransEConfig,
    pub entities: Tensor,
    pub relations: Tensor,
}

pub const ENTITY_KEY: &str = "entity_embeddings.weight";
/// Embedding tables are exempt from weight decay.
pub const NO_DECAY: &[&str] = &["entity_embeddings", "relation_embeddings"];
pub const RELATION_KEY: &str = "relation_embeddings.weight";

/// The loss of a batch and how many positives scored closer than their negatives.
pub struct MarginLoss {
    pub loss: Tensor,
    pub correct: usize,
}

impl TransE {
    /// Builds (or reads from `store`) the embeddings: uniform on ±6/√dim as in the paper,
    /// fresh relation vectors then scaled to unit L2 norm (the paper's initialisation).
    pub fn new(config: &TransEConfig, store: &mut ParamStore) -> Result<Self> {
        if !matches!(config.norm, 1 | 2) {
            return Err(Error::Config(format!(
                "transe norm {} (expected 1 or 2)",
                config.norm
            )));
        }
        if config.dim == 0
            || config.n_entities < 2
            || config.n_relations == 0
            || config.margin <= 0.0
        {
            return Err(Error::Config(format!(
                "transe needs a positive dim and margin, two or more entities and a relation (got {config:?})"
            )));
        }
        let b = 6.0 / (config.dim as f64).sqrt();
        let fresh = !store.vars().contains_key(RELATION_KEY) && store.shapes().is_none();
        let entities = store.get(
            ENTITY_KEY,
            &[config.n_entities, config.dim],
            Init::Uniform(b),
        )?;
        let rel_dims = [config.n_relations, config.dim];
        let mut relations = store.get(RELATION_KEY, &rel_dims, Init::Uniform(b))?;
        if fresh {
            // The paper scales each relation vector to unit norm once, at initialisation.
            let n = relations.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
            store.insert(RELATION_KEY, relations.broadcast_div(&n)?)?;
            relations = store.get(RELATION_KEY, &rel_dims, Init::Zeros)?;
        }
        Ok(TransE {
            config: config.clone(),
            entities,
            relations,
        })
    }

    /// ‖normalize(h) + r − normalize(t)‖ for each triple (ids as u32 tensors of one length).
    pub fn distance(&self, h: &Tensor, r: &Tensor, t: &Tensor) -> Result<Tensor> {
        let unit = |x: Tensor| -> Result<Tensor> {
            let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
            Ok(x.broadcast_div(&n)?)
        };
        let eh = unit(self.entities.index_select(h, 0)?)?;
        let et = unit(self.entities.index_select(t, 0)?)?;
        let er = self.relations.index_select(r, 0)?;
        let diff = ((eh + er)? - et)?;
        Ok(match self.config.norm {
            1 => diff.abs()?.sum(D::Minus1)?,
            _ => diff.sqr()?.sum(D::Minus1)?.sqrt()?,
        })
    }

    fn ids(triples: &[Triple], k: usize, device: &Device) -> Result<Tensor> {
        let v: Vec<u32> = triples.iter().map(|t| t[k]).collect();
        Ok(Tensor::from_vec(v, triples.len(), device)?)
    }

    /// Mean of max(0, margin + d(positive) − d(negative)) over paired triples.
    pub fn margin_loss(&self, pos: &[Triple], neg: &[Triple]) -> Result<MarginLoss> {
        let dev = self.entities.device();
        let d = |s: &[Triple]| -> Result<Tensor> {
            self.distance(
                &Self::ids(s, 0, dev)?,
                &Self::ids(s, 1, dev)?,
                &Self::ids(s, 2, dev)?,
            )
        };
        let (dp, dn) = (d(pos)?, d(neg)?);
        let loss = ((dp.clone() - dn.clone())? + self.config.margin)?
            .relu()?
            .mean_all()?;
        let (p, n) = (dp.to_vec1::<f32>()?, dn.to_vec1::<f32>()?);
        let correct = p.iter().zip(&n).filter(|(a, b)| a < b).count();
        Ok(MarginLoss { loss, correct })
    }

    /// A corrupted copy of each triple: head or tail (even odds) replaced by a uniformly drawn
    /// other entity (Bordes et al.'s "unif" sampling; the corruption is not filtered).
    pub fn corrupt(triples: &[Triple], n_entities: usize, rng: &mut Rng) -> Vec<Triple> {
        triples
            .iter()
            .map(|&[h, r, t]| {
                let head = rng.below(2) == 0;
                let mut e = rng.below(n_entities as u64 - 1) as u32;
                let old = if head { h } else { t };
                if e >= old {
                    e += 1; // any entity but the true one
                }
                if head {
                    [e, r, t]
                } else {
                    [h, r, e]
                }
            })
            .collect()
    }

    /// Writes the model directory: `config.json`, `model.safetensors`, and the names of the
    /// entities and relations (`entities.txt`, `relations.txt`, one per line in id order).
    pub fn save_dir(&self, dir: &Path, store: &ParamStore, names: Option<&KgSplit>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        crate::io::safetensors::save(&dir.join("model.safetensors"), &store.tensors())?;
        write_json_atomic(&dir.join("config.json"), &self.config)?;
        if let Some(s) = names {
            write_atomic(
                &dir.join("entities.txt"),
                (s.entities.join("\n") + "\n").as_bytes(),
            )?;
            write_atomic(
                &dir.join("relations.txt"),
                (s.relations.join("\n") + "\n").as_bytes(),
            )?;
        }
        Ok(())
    }
}

/// Link-prediction scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ranking {
    pub queries: usize,
    pub mrr: f64,
    pub mean_rank: f64,
    pub hits1: f64,
    pub hits3: f64,
    pub hits10: f64,
}

/// Filtered ranking of `triples`: for each, the tail among all entities given (head,
/// relation), and the head given (relation, tail); every other entity that makes a known
/// triple is left out of the count. A tie counts half (the mean of the optimistic and
/// pessimistic ranks). Distances as [`TransE::distance`].
pub fn rank(model: &TransE, triples: &[Triple], known: &HashSet<Triple>) -> Result<Ranking> {
    let c = &model.config;
    let d = c.dim;
    // Normalised entity rows and relation rows, on the CPU.
    let e = model.entities.to_device(&Device::Cpu)?;
    let n = e.sqr()?.sum_keepdim(1)?.sqrt()?;
    let ents: Vec<f32> = e.broadcast_div(&n)?.flatten_all()?.to_vec1()?;
    let rels: Vec<f32> = model
        .relations
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    let dist = |q: &[f32], x: &[f32]| -> f32 {
        match c.norm {
            1 => q.iter().zip(x).map(|(a, b)| (a - b).abs()).sum(),
            _ => q
                .iter()
                .zip(x)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt(),
        }
    };
    // One query: distance of every candidate to `q`, the true one's rank among the unfiltered.
    let rank_one = |q: &[f32], truth: u32, is_known: &dyn Fn(u32) -> bool| -> f64 {
        let dt = dist(q, &ents[truth as usize * d..(truth as usize + 1) * d]);
        let (mut less, mut equal) = (0usize, 0usize);
        for k in 0..c.n_entities as u32 {
            if k == truth {
                continue;
            }
            let dk = dist(q, &ents[k as usize * d..(k as usize + 1) * d]);
            if dk <= dt && !is_known(k) {
                if dk < dt {
                    less += 1;
                } else {
                    equal += 1;
                }
            }
        }
        1.0 + less as f64 + equal as f64 / 2.0
    };
    use rayon::prelude::*;
    let ranks: Vec<f64> = triples
        .par_iter()
        .flat_map_iter(|&[h, r, t]| {
            let (eh, et) = (
                &ents[h as usize * d..(h as usize + 1) * d],
                &ents[t as usize * d..(t as usize + 1) * d],
            );
            let er = &rels[r as usize * d..(r as usize + 1) * d];
            // Tail: q = h + r, candidates t'. Head: ‖h' + r − t‖ = ‖h' − (t − r)‖.
            let qt: Vec<f32> = eh.iter().zip(er).map(|(a, b)| a + b).collect();
            let qh: Vec<f32> = et.iter().zip(er).map(|(a, b)| a - b).collect();
            let tail = rank_one(&qt, t, &|k| known.contains(&[h, r, k]));
            let head = rank_one(&qh, h, &|k| known.contains(&[k, r, t]));
            [tail, head]
        })
        .collect();
    if ranks.is_empty() {
        return Err(Error::Data("no triples to rank".into()));
    }
    let m = ranks.len() as f64;
    let hits = |k: f64| ranks.iter().filter(|&&x| x <= k).count() as f64 / m;
    Ok(Ranking {
        queries: ranks.len(),
        mrr: ranks.iter().map(|x| 1.0 / x).sum::<f64>() / m,
        mean_rank: ranks.iter().sum::<f64>() / m,
        hits1: hits(1.0),
        hits3: hits(3.0),
        hits10: hits(10.0),
    })
}
