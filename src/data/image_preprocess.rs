//! Images into model inputs: transformers' image preprocessing (`preprocessor_config.json`:
//! bilinear resize as PIL does it, rescale, normalise) and seeded training augmentation (random
//! crop with padding, horizontal flip).

use crate::rng::Rng;
use crate::{Error, Result};
use std::path::Path;

/// Random changes to each training image (seeded, so a resumed run sees the same ones).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Zero-pad by this many pixels and crop back at a random offset (0: off).
    #[serde(default)]
    pub crop_padding: usize,
    /// Probability of mirroring an image left-right.
    #[serde(default)]
    pub flip: f64,
}

/// Training augmentation: zero-pad by `pad` pixels and crop back to size at a random offset,
/// then mirror left-right with probability `flip`. `img` is one channel-major image.
pub fn augment(
    img: &[u8],
    (c, h, w): (usize, usize, usize),
    pad: usize,
    flip: f64,
    rng: &mut Rng,
) -> Vec<u8> {
    let dy = rng.below(2 * pad as u64 + 1) as isize - pad as isize;
    let dx = rng.below(2 * pad as u64 + 1) as isize - pad as isize;
    let mirror = flip > 0.0 && rng.uniform() < flip;
    let mut out = vec![0u8; c * h * w];
    for ch in 0..c {
        for y in 0..h {
            let sy = y as isize + dy;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..w {
                let xx = if mirror { w - 1 - x } else { x };
                let sx = xx as isize + dx;
                if sx < 0 || sx >= w as isize {
                    continue;
                }
                out[(ch * h + y) * w + x] = img[(ch * h + sy as usize) * w + sx as usize];
            }
        }
    }
    out
}

/// PIL's `Image.resize(..., BILINEAR)` of an 8-bit channel-major image: a separable triangle
/// filter whose support widens by the scale factor when shrinking (antialiasing), fixed-point
/// coefficients (22 fractional bits), the horizontal pass first, each pass rounded back to 8
/// bits, exactly as Pillow's `ImagingResample`. transformers' ViT image processors resize
/// this way.
pub fn resize_bilinear(
    img: &[u8],
    (c, h, w): (usize, usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<u8> {
    if (h, w) == (out_h, out_w) {
        return img.to_vec();
    }
    // Horizontal pass (skipped when the width stays), then vertical.
    let mut tmp = if w == out_w {
        img.to_vec()
    } else {
        let (bounds, coeffs, k) = resample_coeffs(w, out_w);
        let mut out = vec![0u8; c * h * out_w];
        for row in 0..c * h {
            let src = &img[row * w..(row + 1) * w];
            for x in 0..out_w {
                let (start, len) = bounds[x];
                let kk = &coeffs[x * k..x * k + len];
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (i, &cf) in kk.iter().enumerate() {
                    ss += src[start + i] as i64 * cf as i64;
                }
                out[row * out_w + x] = clip8(ss);
            }
        }
        out
    };
    if h != out_h {
        let (bounds, coeffs, k) = resample_coeffs(h, out_h);
        let mut out = vec![0u8; c * out_h * out_w];
        for ch in 0..c {
            let plane = &tmp[ch * h * out_w..(ch + 1) * h * out_w];
            for y in 0..out_h {
                let (start, len) = bounds[y];
                let kk = &coeffs[y * k..y * k + len];
                for x in 0..out_w {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &cf) in kk.iter().enumerate() {
                        ss += plane[(start + i) * out_w + x] as i64 * cf as i64;
                    }
                    out[(ch * out_h + y) * out_w + x] = clip8(ss);
                }
            }
        }
        tmp = out;
    }
    tmp
}

/// Pillow's `PRECISION_BITS` for 8-bit resampling: 32 - 8 - 2.
const PRECISION_BITS: u32 = 22;

fn clip8(ss: i64) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `precompute_coeffs` for the bilinear filter and `normalize_coeffs_8bpc`: per output
/// pixel the first input pixel and the count it reads, and `k` fixed-point weights each.
fn resample_coeffs(in_size: usize, out_size: usize) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support 1.0, widened when shrinking
    let k = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut coeffs = vec![0i32; out_size * k];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let w: Vec<f64> = (0..xmax)
            .map(|x| {
                let t = ((x + xmin) as f64 - center + 0.5) * ss;
                if t.abs() < 1.0 {
                    1.0 - t.abs()
                } else {
                    0.0
                }
            })
            .collect();
        let total: f64 = w.iter().sum();
        for (x, wx) in w.iter().enumerate() {
            let v = if total != 0.0 { wx / total } else { *wx };
            let f = v * (1u64 << PRECISION_BITS) as f64;
            coeffs[xx * k + x] = if f < 0.0 {
                (f - 0.5) as i32
            } else {
                (f + 0.5) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    (bounds, coeffs, k)
}

fn d_true() -> bool {
    true
}
fn d_resample() -> u32 {
    2
}
fn d_rescale() -> f64 {
    1.0 / 255.0
}
fn d_half() -> Vec<f64> {
    vec![0.5, 0.5, 0.5]
}

/// Target size of a resize (`{"height": H, "width": W}`; `shortest_edge` is not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageSize {
    pub height: usize,
    pub width: usize,
}

/// transformers' `preprocessor_config.json` of a ViT image processor: resize (bilinear, as
/// PIL), rescale to [0, 1], normalise per channel. Other keys are kept.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocessor {
    #[serde(default = "d_true")]
    pub do_resize: bool,
    pub size: ImageSize,
    /// PIL resampling filter: 2 = bilinear (the one supported).
    #[serde(default = "d_resample")]
    pub resample: u32,
    #[serde(default = "d_true")]
    pub do_rescale: bool,
    #[serde(default = "d_rescale")]
    pub rescale_factor: f64,
    #[serde(default = "d_true")]
    pub do_normalize: bool,
    #[serde(default = "d_half")]
    pub image_mean: Vec<f64>,
    #[serde(default = "d_half")]
    pub image_std: Vec<f64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Preprocessor {
    /// The processor of a model trained at `height x width` with these channel statistics.
    pub fn new(height: usize, width: usize, mean: Vec<f64>, std: Vec<f64>) -> Self {
        let mut extra = serde_json::Map::new();
        extra.insert("image_processor_type".into(), "ViTImageProcessor".into());
        Preprocessor {
            do_resize: true,
            size: ImageSize { height, width },
            resample: 2,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: mean,
            image_std: std,
            extra,
        }
    }

    fn validate(&self, channels: usize) -> Result<()> {
        if self.do_resize && self.resample != 2 {
            return Err(Error::Config(format!(
                "resample {} is not supported (2, bilinear, is)",
                self.resample
            )));
        }
        if self.do_resize && (self.size.height == 0 || self.size.width == 0) {
            return Err(Error::Config("size must be positive".into()));
        }
        if self.do_normalize {
            for (name, v) in [
                ("image_mean", &self.image_mean),
                ("image_std", &self.image_std),
            ] {
                if v.len() != channels && v.len() != 1 {
                    return Err(Error::Config(format!(
                        "{name} has {} values for {channels} channels",
                        v.len()
                    )));
                }
            }
            if self.image_std.iter().any(|&s| s <= 0.0) {
                return Err(Error::Config("image_std must be positive".into()));
            }
        }
        Ok(())
    }

    /// Reads `preprocessor_config.json` for a model taking `channels` channels.
    pub fn load(path: &Path, channels: usize) -> Result<Self> {
        let p: Preprocessor = crate::io::read_json(path)?;
        p.validate(channels)
            .map_err(|e| Error::format(path, e.to_string()))?;
        Ok(p)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::write_json_atomic(path, self)
    }

    /// The model input `[c, H, W]` (row-major f32) of an 8-bit channel-major image.
    pub fn apply(&self, img: &[u8], (c, h, w): (usize, usize, usize)) -> Vec<f32> {
        let (img, h, w) = if self.do_resize {
            let (oh, ow) = (self.size.height, self.size.width);
            (resize_bilinear(img, (c, h, w), (oh, ow)), oh, ow)
        } else {
            (img.to_vec(), h, w)
        };
        let plane = h * w;
        img.iter()
            .enumerate()
            .map(|(i, &v)| {
                let mut x = v as f64;
                if self.do_rescale {
                    x *= self.rescale_factor;
                }
                if self.do_normalize {
                    let ch = i / plane;
                    let at = |s: &[f64]| s[if s.len() == 1 { 0 } else { ch }];
                    x = (x - at(&self.image_mean)) / at(&self.image_std);
                }
                x as f32
            })
            .collect()
    }
}
