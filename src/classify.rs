//! Image classification with a ViT: batches of preprocessed images, predictions with class
//! probabilities, accuracy and the confusion matrix (with its plot), and attention-rollout
//! maps drawn over the image.

use crate::data::images::{augment, read_image, ImageSet, Preprocessor};
use crate::models::vit::{attention_rollout, probabilities, Vit};
use crate::rng::Rng;
use crate::train::recipe::AugmentConfig;
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

/// Accuracy, the confusion matrix and the count of a model's predictions on `set`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scores {
    pub accuracy: f64,
    pub n: usize,
    /// `[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    pub classes: Vec<String>,
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
    let right = predicted
        .iter()
        .zip(&set.labels)
        .filter(|(&p, &l)| p == l as usize)
        .count();
    Ok(Scores {
        accuracy: right as f64 / set.len() as f64,
        n: set.len(),
        confusion: confusion(&predicted, &set.labels, n_classes),
        classes: model.config.labels()?,
    })
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
