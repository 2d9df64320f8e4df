//! Few-shot classifiers on sentence embeddings: from k labelled examples per class (the
//! support set), a query takes the class
//! - of the nearest prototype: the mean of the class's support embeddings, by cosine
//!   similarity (prototypical networks, Snell et al., 2017, with cosine);
//! - voted by its n nearest support examples by cosine distance (k-NN; a tied vote goes to
//!   the lowest class index, as scikit-learn's).
//!
//! Accuracy depends heavily on which k examples are drawn, so it is reported as the mean and
//! sample standard deviation over several seeded draws.

use crate::rng::Rng;
use crate::{Error, Result};
use serde::Serialize;

fn dot(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn to_f64(a: &[f32]) -> Vec<f64> {
    a.iter().map(|&x| x as f64).collect()
}

/// Cosine similarity (0 when either vector is zero).
fn cos(a: &[f32], b: &[f64]) -> f64 {
    let n = norm(&to_f64(a)) * norm(b);
    if n == 0.0 {
        0.0
    } else {
        dot(a, b) / n
    }
}

/// Prototype classifier: the class whose support mean is most cosine-similar to each query
/// (first class on a tie).
pub fn prototype_predict(
    emb: &[Vec<f32>],
    labels: &[usize],
    classes: usize,
    support: &[usize],
    queries: &[usize],
) -> Vec<usize> {
    let dim = emb.first().map_or(0, Vec::len);
    let mut means = vec![vec![0f64; dim]; classes];
    let mut counts = vec![0usize; classes];
    for &s in support {
        counts[labels[s]] += 1;
        for (m, &x) in means[labels[s]].iter_mut().zip(&emb[s]) {
            *m += x as f64;
        }
    }
    for (m, &c) in means.iter_mut().zip(&counts) {
        m.iter_mut().for_each(|x| *x /= c.max(1) as f64);
    }
    queries
        .iter()
        .map(|&q| {
            let sims: Vec<f64> = (0..classes)
                .map(|c| {
                    if counts[c] == 0 {
                        f64::NEG_INFINITY
                    } else {
                        cos(&emb[q], &means[c])
                    }
                })
                .collect();
            crate::eval::few_shot::argmax(&sims)
        })
        .collect()
}

/// k-NN classifier: a majority vote of the `neighbors` support examples nearest each query by
/// cosine distance (equal distances in support order; a tied vote to the lowest class).
pub fn knn_predict(
    emb: &[Vec<f32>],
    labels: &[usize],
    classes: usize,
    support: &[usize],
    queries: &[usize],
    neighbors: usize,
) -> Vec<usize> {
    let sup: Vec<Vec<f64>> = support.iter().map(|&s| to_f64(&emb[s])).collect();
    queries
        .iter()
        .map(|&q| {
            let mut d: Vec<(f64, usize)> = sup
                .iter()
                .zip(support)
                .map(|(v, &s)| (1.0 - cos(&emb[q], v), labels[s]))
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut votes = vec![0usize; classes];
            for &(_, l) in d.iter().take(neighbors) {
                votes[l] += 1;
            }
            let best = votes.iter().copied().max().unwrap_or(0);
            votes.iter().position(|&v| v == best).unwrap_or(0)
        })
        .collect()
}

/// `k` examples of each class drawn from `pool` (indices into `labels`), seeded: each class's
/// members are shuffled by a stream of `seed` and the first `k` taken.
pub fn draw_support(
    labels: &[usize],
    classes: usize,
    pool: &[usize],
    k: usize,
    seed: u64,
) -> Result<Vec<usize>> {
    let rng = Rng::new(seed);
    let mut out = vec![];
    for c in 0..classes {
        let mut members: Vec<usize> = pool.iter().copied().filter(|&i| labels[i] == c).collect();
        if members.len() < k {
            return Err(Error::Config(format!(
                "{k} examples per class, but class {c} has {} in the exemplar split",
                members.len()
            )));
        }
        rng.fork(c as u64).shuffle(&mut members);
        out.extend_from_slice(&members[..k]);
    }
    Ok(out)
}

/// Accuracy over seeds: mean, sample standard deviation, and each seed's.
#[derive(Debug, Clone, Serialize)]
pub struct SeedAccuracy {
    pub mean: f64,
    pub sd: f64,
    pub per_seed: Vec<f64>,
}

impl SeedAccuracy {
    fn of(per_seed: Vec<f64>) -> Self {
        let n = per_seed.len() as f64;
        let mean = per_seed.iter().sum::<f64>() / n;
        let sd = if per_seed.len() > 1 {
            (per_seed.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        SeedAccuracy { mean, sd, per_seed }
    }
}

/// Results for one k.
#[derive(Debug, Clone, Serialize)]
pub struct ShotsReport {
    pub shots: usize,
    pub seeds: usize,
    /// Queries per seed.
    pub queries: usize,
    pub prototype: SeedAccuracy,
    pub knn: SeedAccuracy,
    pub neighbors: usize,
}

/// Labelled embeddings split into the examples support is drawn from and those classified.
pub struct FewShotSet<'a> {
    pub emb: &'a [Vec<f32>],
    pub labels: &'a [usize],
    pub classes: usize,
    /// Indices support sets are drawn from.
    pub pool: &'a [usize],
    /// Indices classified; any drawn into the support set are left out of that draw's queries.
    pub queries: &'a [usize],
}

/// Prototype and k-NN accuracy with `k` examples per class over `seeds` draws (seeds
/// `0..seeds`); k-NN votes among `min(neighbors, support size)` neighbours.
pub fn evaluate(set: &FewShotSet, k: usize, seeds: usize, neighbors: usize) -> Result<ShotsReport> {
    if k == 0 || seeds == 0 || neighbors == 0 {
        return Err(Error::Config(
            "shots, seeds and neighbours must be at least 1".into(),
        ));
    }
    let mut proto = vec![];
    let mut knn = vec![];
    let mut queries = 0;
    let acc = |pred: &[usize], q: &[usize]| {
        pred.iter()
            .zip(q)
            .filter(|(p, &i)| **p == set.labels[i])
            .count() as f64
            / q.len() as f64
    };
    for seed in 0..seeds as u64 {
        let support = draw_support(set.labels, set.classes, set.pool, k, seed)?;
        let q: Vec<usize> = set
            .queries
            .iter()
            .copied()
            .filter(|i| !support.contains(i))
            .collect();
        if q.is_empty() {
            return Err(Error::Config(format!(
                "{k} examples per class leave nothing to classify"
            )));
        }
        queries = q.len();
        let p = prototype_predict(set.emb, set.labels, set.classes, &support, &q);
        proto.push(acc(&p, &q));
        let n = neighbors.min(support.len());
        let p = knn_predict(set.emb, set.labels, set.classes, &support, &q, n);
        knn.push(acc(&p, &q));
    }
    Ok(ShotsReport {
        shots: k,
        seeds,
        queries,
        prototype: SeedAccuracy::of(proto),
        knn: SeedAccuracy::of(knn),
        neighbors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_is_balanced_seeded_and_from_the_pool() {
        let labels = [0, 1, 0, 1, 0, 1, 0, 1];
        let pool = [0, 1, 2, 3, 4, 5];
        let s = draw_support(&labels, 2, &pool, 2, 3).unwrap();
        assert_eq!(s.len(), 4);
        assert!(s.iter().all(|i| pool.contains(i)));
        assert_eq!(s.iter().filter(|&&i| labels[i] == 0).count(), 2);
        assert_eq!(s, draw_support(&labels, 2, &pool, 2, 3).unwrap());
        let e = draw_support(&labels, 2, &pool, 4, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("class 0 has 3"), "{e}");
    }

    #[test]
    fn knn_vote_tie_goes_to_lowest_class() {
        let emb = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]];
        let labels = [1, 0, 0];
        // Query 2 is equally far from both support examples: one vote each.
        assert_eq!(knn_predict(&emb, &labels, 2, &[0, 1], &[2], 2), [0]);
        assert_eq!(knn_predict(&emb, &labels, 2, &[0, 1], &[2], 1), [1]);
    }
}
