//! Classification in use: images with a ViT (batches of preprocessed images, predictions with
//! class probabilities, attention-rollout maps drawn over the image) and texts with a sequence
//! classifier; for both, accuracy, per-class precision / recall / F1, macro-F1 and the
//! confusion matrix (with its plot).

use crate::data::images::AugmentConfig;
use crate::data::images::{augment, read_image, ImageSet, Preprocessor};
use crate::models::sequence_classifier::SequenceClassifier;
use crate::models::vit::{attention_rollout, probabilities, Vit};
use crate::rng::Rng;
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::Path;

/// The model input `[n, c, H, W]` for images `idx` of `set`, each augmented first when `aug`
/// is given, and their labels.
pub fn batch(
    set: &ImageSet,
    idx: &[usize],
    pre: &Preprocessor,
    aug: Option<(&AugmentConfig, &mut Rng)>,
    device: &Device,
) -> Result<(Tensor, Vec<u32>)> {
    let shape = (set.channels, set.height, set.width);
    let (out_h, out_w) = if pre.do_resize {
        (pre.size.height, pre.size.width)
    } else {
        (set.height, set.width)
    };
    let mut data = Vec::with_capacity(idx.len() * set.channels * out_h * out_w);
    let mut aug = aug;
    for &i in idx {
        let img = set.image(i);
        match aug.as_mut() {
            Some((cfg, rng)) if cfg.crop_padding > 0 || cfg.flip > 0.0 => {
                let a = augment(img, shape, cfg.crop_padding, cfg.flip, rng);
                data.extend(pre.apply(&a, shape));
            }
            _ => data.extend(pre.apply(img, shape)),
        }
    }
    let labels = idx.iter().map(|&i| set.labels[i]).collect();
    Ok((
        Tensor::from_vec(data, (idx.len(), set.channels, out_h, out_w), device)?,
        labels,
    ))
}

/// Class logits of every image of `set`, `batch_size` at a time.
pub fn logits(
    model: &Vit,
    pre: &Preprocessor,
    set: &ImageSet,
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    let all: Vec<usize> = (0..set.len()).collect();
    let mut out = Vec::with_capacity(set.len());
    for chunk in all.chunks(batch_size.max(1)) {
        let (x, _) = batch(set, chunk, pre, None, model.device())?;
        let l = model.logits(&model.forward(&x, false, None)?)?;
        out.extend(l.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Index of the largest value (the first of ties).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0
}

/// `matrix[true][predicted]` counts.
pub fn confusion(predicted: &[usize], labels: &[u32], classes: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; classes]; classes];
    for (&p, &l) in predicted.iter().zip(labels) {
        m[l as usize][p] += 1;
    }
    m
}

/// How a classifier did on labelled examples.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scores {
    pub accuracy: f64,
    /// The unweighted mean of the per-class F1 scores (scikit-learn's `average="macro"`).
    pub macro_f1: f64,
    pub n: usize,
    /// Per class: of the examples predicted as the class, the fraction that are (0 when none is
    /// predicted), and of the examples of the class, the fraction found (0 when it has none).
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
    /// `[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    pub classes: Vec<String>,
}

/// Scores of predictions against labels over `classes` (scikit-learn's definitions, with
/// `zero_division=0`).
pub fn scores(predicted: &[usize], labels: &[u32], classes: Vec<String>) -> Scores {
    let k = classes.len();
    let m = confusion(predicted, labels, k);
    let right: usize = (0..k).map(|i| m[i][i]).sum();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision: Vec<f64> = (0..k)
        .map(|c| ratio(m[c][c], (0..k).map(|t| m[t][c]).sum()))
        .collect();
    let recall: Vec<f64> = (0..k).map(|c| ratio(m[c][c], m[c].iter().sum())).collect();
    let f1: Vec<f64> = (0..k)
        .map(|c| {
            let (p, r) = (precision[c], recall[c]);
            if p + r == 0.0 {
                0.0
            } else {
                2.0 * p * r / (p + r)
            }
        })
        .collect();
    Scores {
        accuracy: ratio(right, labels.len()),
        macro_f1: if k == 0 {
            0.0
        } else {
            f1.iter().sum::<f64>() / k as f64
        },
        n: labels.len(),
        precision,
        recall,
        f1,
        confusion: m,
        classes,
    }
}

pub fn score(model: &Vit, pre: &Preprocessor, set: &ImageSet, batch_size: usize) -> Result<Scores> {
    if set.is_empty() {
        return Err(Error::Data("no images to score".into()));
    }
    let n_classes = model.config.labels()?.len();
    if set.classes.len() > n_classes {
        return Err(Error::Data(format!(
            "the data has {} classes, the model {n_classes}",
            set.classes.len()
        )));
    }
    let predicted: Vec<usize> = logits(model, pre, set, batch_size)?
        .iter()
        .map(|l| argmax(l))
        .collect();
    Ok(scores(&predicted, &set.labels, model.config.labels()?))
}

/// Mean cross-entropy (label-smoothed by `smoothing`) of a text classifier on token-id
/// sequences with their class indices, and how many it classifies right.
pub fn text_loss(
    model: &SequenceClassifier,
    seqs: &[&[u32]],
    labels: &[u32],
    smoothing: f64,
    dropout: Option<&mut Rng>,
) -> Result<(Tensor, usize)> {
    let (ids, mask) = model.pad(seqs)?;
    let logits = model.logits(&ids, &mask, dropout)?;
    let y = Tensor::new(labels, model.device())?;
    let loss = crate::objective::seq2seq::smoothed_cross_entropy(&logits, &y, smoothing)?;
    let predicted = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
    let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    Ok((loss, correct))
}

/// Class logits of token-id sequences, `batch_size` at a time.
pub fn text_logits(
    model: &SequenceClassifier,
    seqs: &[&[u32]],
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch_size.max(1)) {
        let (ids, mask) = model.pad(chunk)?;
        out.extend(model.logits(&ids, &mask, None)?.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Scores of a text classifier on encoded examples (token ids, class index).
pub fn score_texts(
    model: &SequenceClassifier,
    examples: &[(Vec<u32>, u32)],
    batch_size: usize,
) -> Result<Scores> {
    if examples.is_empty() {
        return Err(Error::Data("no texts to score".into()));
    }
    let seqs: Vec<&[u32]> = examples.iter().map(|(s, _)| s.as_slice()).collect();
    let labels: Vec<u32> = examples.iter().map(|(_, l)| *l).collect();
    let predicted: Vec<usize> = text_logits(model, &seqs, batch_size)?
        .iter()
        .map(|l| argmax(l))
        .collect();
    Ok(scores(&predicted, &labels, model.labels.clone()))
}

/// One text's prediction.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TextPrediction {
    pub text: String,
    pub logits: Vec<f32>,
    /// The `k` most probable classes, most probable first.
    pub top: Vec<TopClass>,
}

/// The `k` most probable classes of one row of logits.
fn top_classes(logits: &[f32], labels: &[String], k: usize) -> Vec<TopClass> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order
        .into_iter()
        .take(k)
        .map(|i| TopClass {
            label: labels[i].clone(),
            prob: exp[i] / sum,
        })
        .collect()
}

/// Classifies texts (each cut to `max_len` tokens), reporting the `top_k` classes of each.
pub fn classify_texts(
    model: &SequenceClassifier,
    tokenizer: &Tokenizer,
    texts: &[&str],
    max_len: usize,
    top_k: usize,
) -> Result<Vec<TextPrediction>> {
    let encoded: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| model.encode(tokenizer, t, max_len))
        .collect::<Result<_>>()?;
    let seqs: Vec<&[u32]> = encoded.iter().map(Vec::as_slice).collect();
    let logits = text_logits(model, &seqs, 32)?;
    Ok(texts
        .iter()
        .zip(logits)
        .map(|(t, l)| TextPrediction {
            text: t.to_string(),
            top: top_classes(&l, &model.labels, top_k),
            logits: l,
        })
        .collect())
}

/// One image's prediction.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    pub file: String,
    pub logits: Vec<f32>,
    /// The `k` most probable classes, most probable first.
    pub top: Vec<TopClass>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TopClass {
    pub label: String,
    pub prob: f32,
}

/// Reads an image file and returns the model input `[1, c, H, W]`.
pub fn load_image(model: &Vit, pre: &Preprocessor, path: &Path) -> Result<Tensor> {
    let c = model.config.num_channels;
    let (px, h, w) = read_image(path, c)?;
    let x = pre.apply(&px, (c, h, w));
    let (oh, ow) = if pre.do_resize {
        (pre.size.height, pre.size.width)
    } else {
        (h, w)
    };
    Ok(Tensor::from_vec(x, (1, c, oh, ow), model.device())?)
}

/// Classifies image files (PNG/JPEG), reporting the `top_k` classes of each.
pub fn classify_files(
    model: &Vit,
    pre: &Preprocessor,
    files: &[&Path],
    top_k: usize,
) -> Result<Vec<Prediction>> {
    let labels = model.config.labels()?;
    files
        .iter()
        .map(|f| {
            let x = load_image(model, pre, f)?;
            let l = model.logits(&model.forward(&x, true, None)?)?;
            let probs = probabilities(&l)?.remove(0);
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            Ok(Prediction {
                file: f.display().to_string(),
                logits: l.squeeze(0)?.to_vec1::<f32>()?,
                top: order
                    .into_iter()
                    .take(top_k)
                    .map(|i| TopClass {
                        label: labels[i].clone(),
                        prob: probs[i],
                    })
                    .collect(),
            })
        })
        .collect()
}

/// Writes the attention rollout of the image at `path` over the image itself (enlarged):
/// patches the class token draws on most glow red, those it ignores keep the image's colours.
pub fn attention_map(model: &Vit, pre: &Preprocessor, path: &Path, png: &Path) -> Result<()> {
    let c = model.config.num_channels;
    let (px, h, w) = read_image(path, c)?;
    let x = load_image(model, pre, path)?;
    let (_, _, ih, iw) = x.dims4()?;
    let p = model.config.patch_size;
    let (gh, gw) = (ih / p, iw / p);
    let roll = attention_rollout(&model.attentions(&x, true)?)?
        .squeeze(0)?
        .to_vec1::<f32>()?;
    // Stretch to the full colour range: rollout values sit close together (every patch keeps
    // its residual share), and the contrast between patches is what the map is for.
    let (lo, hi) = roll
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let roll: Vec<f32> = roll
        .iter()
        .map(|v| if hi > lo { (v - lo) / (hi - lo) } else { 0.0 })
        .collect();
    // Draw at least 256 pixels on the long side so small images stay visible.
    let scale = (256 / h.max(w)).max(1);
    let (oh, ow) = (h * scale, w * scale);
    let mut out = image::RgbImage::new(ow as u32, oh as u32);
    for y in 0..oh {
        for xx in 0..ow {
            let (sy, sx) = (y / scale, xx / scale);
            let grey = |ch: usize| px[(ch * h + sy) * w + sx] as f32;
            let rgb = if c == 1 {
                [grey(0); 3]
            } else {
                [grey(0), grey(1), grey(2)]
            };
            // The patch under this pixel, in the model's (possibly resized) input grid.
            let py = ((sy * ih) / h / p).min(gh - 1);
            let pxi = ((sx * iw) / w / p).min(gw - 1);
            let a = roll[py * gw + pxi].clamp(0.0, 1.0);
            let heat = [255.0 * a, 64.0 * a, 0.0];
            let pixel: Vec<u8> = (0..3)
                .map(|k| {
                    (rgb[k] * (1.0 - 0.6 * a) + heat[k] * 0.6)
                        .round()
                        .clamp(0.0, 255.0) as u8
                })
                .collect();
            out.put_pixel(
                xx as u32,
                y as u32,
                image::Rgb([pixel[0], pixel[1], pixel[2]]),
            );
        }
    }
    let tmp = png.with_extension("tmp.png");
    out.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| Error::format(png, format!("cannot write the image: {e}")))?;
    std::fs::rename(&tmp, png).map_err(|e| Error::io(png, e))
}
