//! Token shards: a corpus encoded once into a flat binary file of token ids (u16 when the
//! vocabulary fits, else u32, little-endian), memory-mapped for training so corpora larger than
//! RAM work, plus a JSON sidecar describing it.

use crate::data::corpus::for_each_chunk;
use crate::io::atomic::write_with;
use crate::io::{read_json, write_json_atomic};
use crate::rng::Rng;
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Description of a shard (`<name>.json` beside `<name>.bin`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardMeta {
    /// Bytes per token: 2 or 4.
    pub bytes_per_token: usize,
    pub tokens: usize,
    pub vocab_size: usize,
    /// sha256 of the tokenizer's JSON, so a shard is never reused with another tokenizer.
    pub tokenizer_sha256: String,
    /// The files encoded, in order, with their sizes in bytes and modification times (seconds
    /// since the epoch), to notice a changed corpus.
    pub files: Vec<(PathBuf, u64, u64)>,
    /// The token position where each file's text starts.
    #[serde(default)]
    pub file_starts: Vec<usize>,
}

/// A contiguous range of token positions used for one purpose (training or validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub start: usize,
    pub end: usize,
}

impl Split {
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// A memory-mapped token shard.
pub struct TokenShard {
    mmap: memmap2::Mmap,
    pub meta: ShardMeta,
    path: PathBuf,
}

const CHUNK: usize = 1 << 20;

fn file_stamps(files: &[PathBuf]) -> Result<Vec<(PathBuf, u64, u64)>> {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            Ok((f.clone(), m.len(), mtime))
        })
        .collect()
}

impl TokenShard {
    /// Encodes `files` (joined by newlines, in order) into `bin` and its sidecar, unless a shard
    /// of the same files already exists there. Streaming: memory use does not grow with the
    /// corpus.
    pub fn build_or_open(files: &[PathBuf], tokenizer: &Tokenizer, bin: &Path) -> Result<Self> {
        let meta_path = bin.with_extension("json");
        let stamps = file_stamps(files)?;
        let tokenizer_sha256 = tokenizer.fingerprint()?;
        if bin.exists() && meta_path.exists() {
            if let Ok(meta) = read_json::<ShardMeta>(&meta_path) {
                if meta.files == stamps
                    && meta.tokenizer_sha256 == tokenizer_sha256
                    && meta.file_starts.len() == files.len()
                {
                    return Self::open(bin);
                }
            }
        }
        let vocab_size = tokenizer.vocab_size();
        let bytes_per_token = if vocab_size <= u16::MAX as usize + 1 {
            2
        } else {
            4
        };
        let newline = tokenizer.encode("\n")?;
        let mut count = 0usize;
        let mut file_starts = Vec::with_capacity(files.len());
        let mut failure: Option<Error> = None;
        let written = write_with(bin, |w| {
            let put = |ids: &[u32], w: &mut dyn Write| -> std::io::Result<()> {
                for &id in ids {
                    if bytes_per_token == 2 {
                        w.write_all(&(id as u16).to_le_bytes())?;
                    } else {
                        w.write_all(&id.to_le_bytes())?;
                    }
                }
                Ok(())
            };
            for (i, f) in files.iter().enumerate() {
                if i > 0 {
                    put(&newline, w)?;
                    count += newline.len();
                }
                file_starts.push(count);
                let r = for_each_chunk(f, CHUNK, |text| {
                    let ids = tokenizer.encode(text)?;
                    count += ids.len();
                    put(&ids, w).map_err(|e| Error::io(bin, e))
                });
                if let Err(e) = r {
                    failure = Some(e);
                    return Err(std::io::Error::other("aborted"));
                }
            }
            Ok(())
        });
        if let Some(e) = failure {
            return Err(e);
        }
        written?;
        if count == 0 {
            let _ = std::fs::remove_file(bin);
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            return Err(Error::Data(format!(
                "the corpus is empty: {}",
                names.join(", ")
            )));
        }
        let meta = ShardMeta {
            bytes_per_token,
            tokens: count,
            vocab_size,
            tokenizer_sha256,
            files: stamps,
            file_starts,
        };
        write_json_atomic(&meta_path, &meta)?;
        Self::open(bin)
    }

    /// Opens an existing shard.
    pub fn open(bin: &Path) -> Result<Self> {
        let meta: ShardMeta = read_json(&bin.with_extension("json"))?;
        let file = std::fs::File::open(bin).map_err(|e| Error::io(bin, e))?;
        // SAFETY: read-only map of a file we wrote; see io::safetensors for the usual caveat.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(bin, e))?;
        if mmap.len() != meta.tokens * meta.bytes_per_token {
            return Err(Error::format(
                bin,
                format!(
                    "size {} bytes does not match {} tokens in its sidecar",
                    mmap.len(),
                    meta.tokens
                ),
            ));
        }
        Ok(TokenShard {
            mmap,
            meta,
            path: bin.to_path_buf(),
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.meta.tokens
    }

    pub fn is_empty(&self) -> bool {
        self.meta.tokens == 0
    }

    /// Token at position `i`.
    pub fn get(&self, i: usize) -> u32 {
        let b = self.meta.bytes_per_token;
        let s = &self.mmap[i * b..(i + 1) * b];
        if b == 2 {
            u16::from_le_bytes([s[0], s[1]]) as u32
        } else {
            u32::from_le_bytes([s[0], s[1], s[2], s[3]])
        }
    }

    /// Tokens `start .. start + len`.
    pub fn window(&self, start: usize, len: usize) -> Vec<u32> {
        (start..start + len).map(|i| self.get(i)).collect()
    }

    /// The first `1 - val_fraction` of the tokens for training, the rest for validation.
    pub fn split(&self, val_fraction: f64, context: usize) -> Result<(Split, Split)> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::Config(format!(
                "val_fraction must be in [0, 1), got {val_fraction}"
            )));
        }
        let n = self.len();
        let n_train = ((n as f64) * (1.0 - val_fraction)) as usize;
        let train = Split {
            start: 0,
            end: n_train,
        };
        let val = Split {
            start: n_train,
            end: n,
        };
        for (name, s) in [("training", train), ("validation", val)] {
            if (name == "training" || val_fraction > 0.0) && s.len() <= context {
                return Err(Error::Data(format!(
                    "{}: the {name} split has {} tokens, but a window needs context + 1 = {}",
                    self.path.display(),
                    s.len(),
                    context + 1
                )));
            }
        }
        Ok((train, val))
    }

    /// The tokens of the first `n_train` files for training, the rest (later files, held out
    /// whole) for validation.
    pub fn split_files(&self, n_train: usize, context: usize) -> Result<(Split, Split)> {
        let starts = &self.meta.file_starts;
        if n_train == 0 || n_train > starts.len() {
            return Err(Error::Config(format!(
                "cannot train on {n_train} of the shard's {} files",
                starts.len()
            )));
        }
        let boundary = starts.get(n_train).copied().unwrap_or(self.len());
        let train = Split {
            start: 0,
            end: boundary,
        };
        let val = Split {
            start: boundary,
            end: self.len(),
        };
        for (name, s) in [("training", train), ("held-out validation", val)] {
            if s.len() <= context && !(name != "training" && n_train == starts.len()) {
                return Err(Error::Data(format!(
                    "{}: the {name} files have {} tokens, but a window needs context + 1 = {}",
                    self.path.display(),
                    s.len(),
                    context + 1
                )));
            }
        }
        Ok((train, val))
    }

    /// A batch of `batch` random windows from `split`: inputs and the targets shifted by one,
    /// each `batch * context` ids, row-major.
    pub fn sample_batch(
        &self,
        split: Split,
        batch: usize,
        context: usize,
        rng: &mut Rng,
    ) -> (Vec<u32>, Vec<u32>) {
        let mut x = Vec::with_capacity(batch * context);
        let mut y = Vec::with_capacity(batch * context);
        for _ in 0..batch {
            let w = self.random_window(split, context + 1, rng);
            x.extend_from_slice(&w[..context]);
            y.extend_from_slice(&w[1..]);
        }
        (x, y)
    }

    /// `len` consecutive tokens of `split` from a uniformly chosen start (`split.len() >= len`).
    pub fn random_window(&self, split: Split, len: usize, rng: &mut Rng) -> Vec<u32> {
        let i = split.start + rng.below((split.len() + 1 - len) as u64) as usize;
        self.window(i, len)
    }
}
