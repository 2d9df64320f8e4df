//! GGUF, llama.cpp's single-file format: metadata (architecture sizes, the tokenizer's
//! vocabulary and merges, the chat template) and tensors, most of them quantized. Read through
//! candle's GGUF parser. What the names mean is each model family's business (its
//! [`GgufSupport`]): this file reads metadata and tensors, mapped and transformed as the
//! family says, so a GGUF model is the same model as one loaded from a Hugging Face directory.
//!
//! [`GgufSupport`]: crate::models::family::GgufSupport

use crate::nn::{QuantWeights, QuantizedWeight};
use crate::{Error, Result};
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// An open GGUF file.
pub struct Gguf {
    pub path: PathBuf,
    pub content: Content,
    reader: BufReader<File>,
}

/// Special tokens named in the metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: whether a BOS starts every encoded text.
    pub add_bos: bool,
}

impl SpecialTokens {
    /// `bos_token_id`, `eos_token_id`, `pad_token_id` (those known), as `config.json` and
    /// `generation_config.json` write them.
    pub fn id_entries(&self) -> serde_json::Map<String, serde_json::Value> {
        [
            ("bos_token_id", self.bos),
            ("eos_token_id", self.eos),
            ("pad_token_id", self.pad),
        ]
        .into_iter()
        .filter_map(|(k, id)| id.map(|id| (k.to_string(), serde_json::json!(id))))
        .collect()
    }
}

/// How a tensor's data is kept after loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Everything dequantized to f32 (trainable, exact reference path).
    F32,
    /// Matrices stay in their quantized format (inference); 1-D tensors become f32.
    Quantized,
}

impl Gguf {
    /// Opens and parses the header; errors name the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader)
            .map_err(|e| Error::format(path, format!("not a readable GGUF file: {e}")))?;
        Ok(Gguf {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    /// An error about this file.
    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(&self.path, msg)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.err(format!("metadata {key} is not a string"))),
            None => Err(self.err(format!("metadata {key} is missing"))),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self
            .get(key)
            .ok_or_else(|| self.err(format!("metadata {key} is missing")))?;
        let n = match v {
            Value::U8(x) => *x as i64,
            Value::I8(x) => *x as i64,
            Value::U16(x) => *x as i64,
            Value::I16(x) => *x as i64,
            Value::U32(x) => *x as i64,
            Value::I32(x) => *x as i64,
            Value::U64(x) => *x as i64,
            Value::I64(x) => *x,
            _ => return Err(self.err(format!("metadata {key} is not an integer"))),
        };
        usize::try_from(n).map_err(|_| self.err(format!("metadata {key} is negative ({n})")))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.usize(key).map(Some),
        }
    }

    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        Ok(match self.get(key) {
            None => None,
            Some(Value::F32(x)) => Some(*x as f64),
            Some(Value::F64(x)) => Some(*x),
            Some(_) => return Err(self.err(format!("metadata {key} is not a float"))),
        })
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn str_array(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(self.err(format!("metadata {key} holds a non-string"))),
                })
                .collect(),
            Some(_) => Err(self.err(format!("metadata {key} is not an array"))),
            None => Err(self.err(format!("metadata {key} is missing"))),
        }
    }

    pub fn f32_array(&self, key: &str) -> Result<Vec<f32>> {
        match self.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::F32(x) => Ok(*x),
                    Value::F64(x) => Ok(*x as f32),
                    _ => Err(self.err(format!("metadata {key} holds a non-float"))),
                })
                .collect(),
            Some(_) => Err(self.err(format!("metadata {key} is not an array"))),
            None => Err(self.err(format!("metadata {key} is missing"))),
        }
    }

    pub fn int_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::I32(x) => Ok(*x as i64),
                    Value::U32(x) => Ok(*x as i64),
                    Value::I8(x) => Ok(*x as i64),
                    Value::U8(x) => Ok(*x as i64),
                    Value::I64(x) => Ok(*x),
                    _ => Err(self.err(format!("metadata {key} holds a non-integer"))),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(self.err(format!("metadata {key} is not an array"))),
            None => Ok(None),
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.str("general.architecture")
    }

    /// Whether the file holds tensor `name` (a llama.cpp name).
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Special token ids from `tokenizer.ggml.*_token_id`. A SentencePiece vocabulary
    /// (`tokenizer.ggml.model = "llama"`) defaults as llama.cpp does: bos 1, eos 2, unk 0, and a
    /// BOS put before every text unless `add_bos_token` says otherwise.
    pub fn special_tokens(&self) -> Result<SpecialTokens> {
        let spm = self.is_sentencepiece();
        let id = |name: &str, spm_default: u32| -> Result<Option<u32>> {
            Ok(self
                .opt_usize(&format!("tokenizer.ggml.{name}_token_id"))?
                .map(|v| v as u32)
                .or(spm.then_some(spm_default)))
        };
        Ok(SpecialTokens {
            bos: id("bos", 1)?,
            eos: id("eos", 2)?,
            pad: self
                .opt_usize("tokenizer.ggml.padding_token_id")?
                .map(|v| v as u32),
            unk: id("unknown", 0)?,
            add_bos: self.bool("tokenizer.ggml.add_bos_token").unwrap_or(spm),
        })
    }

    /// Whether the tokenizer is SentencePiece's (`tokenizer.ggml.model = "llama"`).
    fn is_sentencepiece(&self) -> bool {
        matches!(self.str("tokenizer.ggml.model"), Ok("llama"))
    }

    /// `tokenizer.chat_template`, when present.
    pub fn chat_template(&self) -> Option<String> {
        match self.get("tokenizer.chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// Reads tensor `name` (a llama.cpp name).
    pub fn qtensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        let path = self.path.clone();
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| Error::format(&path, format!("tensor {name}: {e}")))
    }

    /// The model's weights under Hugging Face keys (`hf_name` maps each llama.cpp name;
    /// `transform` undoes what the converter did to a tensor, by Hugging Face key): with
    /// [`Precision::F32`] all dequantized in the returned map; with [`Precision::Quantized`],
    /// 2-D matrices in `QuantWeights` (the embedding table also dequantized in the map, for
    /// lookups) and the rest in the map. `what` names the model in errors.
    pub fn weights(
        &mut self,
        what: &str,
        hf_name: &dyn Fn(&str) -> Option<String>,
        transform: &dyn Fn(&str, QTensor) -> Result<QTensor>,
        precision: Precision,
        device: &Device,
    ) -> Result<(BTreeMap<String, Tensor>, QuantWeights)> {
        let mut names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        names.sort();
        let mut dense = BTreeMap::new();
        let mut quant = QuantWeights::new();
        for name in names {
            let hf = hf_name(&name).ok_or_else(|| {
                self.err(format!(
                    "tensor {name} is not part of a llama.cpp {what} model"
                ))
            })?;
            let q = self.qtensor(&name, device)?;
            let q = transform(&hf, q).map_err(|e| self.err(format!("tensor {name}: {e}")))?;
            let keep_quantized = precision == Precision::Quantized
                && q.shape().rank() == 2
                && q.dtype() != GgmlDType::F32;
            if keep_quantized {
                // Repacked as it is read, so only one copy of the model is ever in memory.
                let w = QuantizedWeight::new(q)?;
                if hf == "model.embed_tokens.weight" && !matches!(w, QuantizedWeight::Cpu(_)) {
                    // Lookups need rows; only our repacked types dequantize by row.
                    let QuantizedWeight::Candle(QMatMul::QTensor(q)) = &w else {
                        unreachable!("QuantizedWeight::new keeps a QTensor")
                    };
                    let var = candle_core::Var::from_tensor(&q.dequantize(device)?)?;
                    dense.insert(hf.clone(), var.as_tensor().clone());
                }
                quant.insert(hf, w);
            } else {
                // Made a variable here, one tensor at a time, so the parameter store takes it
                // without a second copy of the whole model.
                let var = candle_core::Var::from_tensor(&q.dequantize(device)?)?;
                dense.insert(hf, var.as_tensor().clone());
            }
        }
        Ok((dense, quant))
    }
}

/// Reorders the rows of a query or key projection from llama.cpp's interleaved rotary layout
/// back to transformers' "rotate half" layout. llama.cpp's converter applies, per head,
/// `w.reshape(heads, 2, d/2, in).swapaxes(1, 2)` (Llama-architecture files only); this is its
/// inverse. Rows are moved as whole byte ranges (`row_bytes` each), so it works on quantized
/// data too: every row of a GGUF matrix is quantized on its own.
pub fn unpermute_rotary_rows(data: &[u8], rows: usize, row_bytes: usize, heads: usize) -> Vec<u8> {
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..half {
                let dst = h * d + s * half + j;
                let src = h * d + 2 * j + s;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

/// llama.cpp's converter's rotary row order for a query or key matrix `[rows, cols]` in f32,
/// per head `w.reshape(heads, 2, d/2, in).swapaxes(1, 2)`: the inverse of
/// [`unpermute_rotary_rows`].
pub fn permute_rotary(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(Error::Config(format!(
            "{rows} rows do not split into {heads} heads of even size"
        )));
    }
    Ok(w.reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Restores the rotary row order of a query/key matrix (see [`unpermute_rotary_rows`]).
pub fn unpermute_qtensor(q: &QTensor, heads: usize) -> Result<QTensor> {
    let dims = q.shape().dims().to_vec();
    let (rows, cols) = match dims.as_slice() {
        [r, c] => (*r, *c),
        _ => {
            return Err(Error::Config(format!(
                "expected a matrix, got shape {dims:?}"
            )))
        }
    };
    let dtype = q.dtype();
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(Error::Config(format!(
            "{rows} rows do not split into {heads} heads of even size"
        )));
    }
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = q.data()?;
    let out = unpermute_rotary_rows(&data, rows, row_bytes, heads);
    Ok(qtensor_from_ggml(dtype, &out, dims, &q.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, d/2, in).swapaxes(1, 2).reshape(rows, in), rows of 1 byte.
        let (heads, d) = (2, 6);
        let hf: Vec<u8> = (0..(heads * d) as u8).collect();
        let mut gguf = vec![0u8; hf.len()];
        for h in 0..heads {
            for j in 0..d / 2 {
                for s in 0..2 {
                    gguf[h * d + j * 2 + s] = hf[h * d + s * (d / 2) + j];
                }
            }
        }
        assert_eq!(unpermute_rotary_rows(&gguf, heads * d, 1, heads), hf);
        let t = Tensor::from_vec(
            hf.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            (heads * d, 1),
            &Device::Cpu,
        )
        .unwrap();
        let permuted: Vec<u8> = permute_rotary(&t, heads)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|v| v as u8)
            .collect();
        assert_eq!(permuted, gguf);
    }
}
