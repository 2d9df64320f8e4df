//! Writing a causal LM as a llama.cpp GGUF file: the family's metadata and tensor names (its
//! [`GgufExport`]), the tokenizer's vocabulary, the chat template, and the weights in the
//! chosen type, with llama.cpp's type mix (`llama_tensor_get_type` in llama-quant.cpp: norms
//! and biases stay f32; in quantized files the output matrix, or the embedding table when it
//! doubles as one, is Q6_K, or Q8_0 when its rows are not whole 256-value blocks).
//!
//! [`GgufExport`]: crate::models::family::GgufExport

use super::pretrained::PretrainedCausalLm;
use crate::io::gguf_write::{write, TensorOut};
use crate::models::family::{Family, GgufExport};
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use std::path::Path;

/// The types a model can be written in (`--quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl GgufType {
    pub const NAMES: &'static [&'static str] = &["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"];

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => GgufType::F32,
            "f16" => GgufType::F16,
            "bf16" => GgufType::Bf16,
            "q8_0" => GgufType::Q8_0,
            "q4_0" => GgufType::Q4_0,
            "q4_1" => GgufType::Q4_1,
            other => {
                return Err(Error::Config(format!(
                    "quantization type {other:?} is not one llama.cpp files can be written in here (supported: {})",
                    Self::NAMES.join(", ")
                )))
            }
        })
    }

    /// The type of the matrices.
    fn matrices(self) -> GgmlDType {
        match self {
            GgufType::F32 => GgmlDType::F32,
            GgufType::F16 => GgmlDType::F16,
            GgufType::Bf16 => GgmlDType::BF16,
            GgufType::Q8_0 => GgmlDType::Q8_0,
            GgufType::Q4_0 => GgmlDType::Q4_0,
            GgufType::Q4_1 => GgmlDType::Q4_1,
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q4_0 => 2,
            GgufType::Q4_1 => 3,
            GgufType::Q8_0 => 7,
            GgufType::Bf16 => 32,
        }
    }

    fn quantized(self) -> bool {
        !matches!(self, GgufType::F32 | GgufType::F16 | GgufType::Bf16)
    }

    /// The type of tensor `name` (llama.cpp's name) of `dims`; `output` for the matrix that
    /// makes the logits (the embedding table when tied).
    fn of(self, dims: &[usize], output: bool) -> GgmlDType {
        if dims.len() < 2 {
            return GgmlDType::F32;
        }
        let cols = *dims.last().expect("rank 2");
        if self.quantized() && output && self != GgufType::Q8_0 {
            return if cols.is_multiple_of(256) {
                GgmlDType::Q6K
            } else {
                GgmlDType::Q8_0
            };
        }
        self.matrices()
    }
}

/// `t` (f32) as the bytes of a `dtype` tensor in a GGUF file (blocks as ggml's reference
/// quantizers make them; tested against llama.cpp's gguf-py).
pub fn encode(t: &Tensor, dtype: GgmlDType) -> Result<Vec<u8>> {
    Ok(match dtype {
        GgmlDType::F32 => t
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .flat_map(f32::to_le_bytes)
            .collect(),
        GgmlDType::F16 => t
            .to_dtype(DType::F16)?
            .flatten_all()?
            .to_vec1::<half::f16>()?
            .into_iter()
            .flat_map(half::f16::to_le_bytes)
            .collect(),
        GgmlDType::BF16 => t
            .to_dtype(DType::BF16)?
            .flatten_all()?
            .to_vec1::<half::bf16>()?
            .into_iter()
            .flat_map(half::bf16::to_le_bytes)
            .collect(),
        _ => QTensor::quantize(t, dtype)?.data()?.to_vec(),
    })
}

/// llama.cpp's order: the embedding table, the blocks by number, then the rest.
fn order(name: &str) -> (usize, usize, String) {
    if name.starts_with("token_embd") {
        return (0, 0, name.into());
    }
    match name
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(l, _)| l.parse().ok())
    {
        Some(layer) => (1, layer, name.into()),
        None => (2, 0, name.into()),
    }
}

/// How `family` is written as GGUF, or an error naming it.
fn gguf_export(family: &'static Family) -> Result<&'static GgufExport> {
    family
        .causal()?
        .gguf
        .as_ref()
        .and_then(|g| g.export.as_ref())
        .ok_or_else(|| {
            Error::Config(format!(
                "{} models cannot be written as GGUF yet (supported: llama)",
                family.name
            ))
        })
}

impl PretrainedCausalLm {
    /// Writes the model as a llama.cpp GGUF file of type `ty` at `path` (atomically).
    pub fn save_gguf(&self, path: &Path, ty: GgufType) -> Result<()> {
        if self.quantized {
            return Err(Error::Config(
                "a model loaded with quantized weights cannot be written again; load it without --quantized".into(),
            ));
        }
        let config = self.model.config();
        let family = self.model.family();
        let export = gguf_export(family)?;
        let name = self
            .source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| family.name.into());
        let mut metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String(export.architecture.into()),
            ),
            ("general.type".into(), Value::String("model".into())),
            ("general.name".into(), Value::String(name)),
            (
                "general.size_label".into(),
                Value::String(crate::models::params::size_name(self.store.numel())),
            ),
            ("general.file_type".into(), Value::U32(ty.file_type())),
            // llama.cpp's converter writes it whatever the type.
            ("general.quantization_version".into(), Value::U32(2)),
        ];
        metadata.extend((export.metadata)(&*config)?);
        metadata.extend(self.tokenizer.to_gguf(&self.special, config.vocab_size())?);
        if let Some(t) = &self.chat_template {
            metadata.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
        }
        let mut named = vec![];
        for (hf, t) in self.store.tensors() {
            let gguf = (export.tensor_name)(&hf).ok_or_else(|| {
                Error::Config(format!(
                    "tensor {hf} has no llama.cpp name in a {} model",
                    family.name
                ))
            })?;
            named.push((gguf, hf, t));
        }
        named.sort_by_key(|(g, _, _)| order(g));
        let tied = config.tie_word_embeddings();
        let config = &config;
        let tensors = named
            .into_iter()
            .map(|(gguf, hf, t)| {
                let output = gguf == "output.weight" || (tied && gguf == "token_embd.weight");
                let dtype = ty.of(t.dims(), output);
                TensorOut {
                    name: gguf.clone(),
                    dims: t.dims().to_vec(),
                    dtype,
                    data: Box::new(move || {
                        let t = (export.transform)(&**config, &hf, t.to_dtype(DType::F32)?)?;
                        encode(&t, dtype).map_err(|e| Error::Config(format!("tensor {gguf}: {e}")))
                    }),
                }
            })
            .collect();
        write(path, &metadata, tensors)
    }
}

impl PretrainedCausalLm {
    /// Writes the PEFT LoRA adapter in `dir` (trained on this model) as llama.cpp's LoRA
    /// adapter GGUF at `path` (atomically), as its `convert_lora_to_gguf.py` does:
    /// `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and for each
    /// adapted matrix `NAME.lora_a` `[r, in]` and `NAME.lora_b` `[out, r]` under the base
    /// tensor's llama.cpp name, B's rows in the base's rotary order. llama.cpp scales the
    /// update by `alpha / r`; where PEFT's scale is another (rsLoRA, per-module alphas) it is
    /// folded into B and alpha written as 0, which llama.cpp reads as a scale of 1. `ty` is
    /// f32, f16 or bf16. What llama.cpp cannot apply (another method, DoRA, fully trained
    /// modules, biases) is an error naming it.
    pub fn save_adapter_gguf(&self, dir: &Path, path: &Path, ty: GgufType) -> Result<()> {
        use crate::peft::adapter_io::{read_config, WEIGHTS_FILE};
        use crate::peft::config::{BiasMode, PeftType};
        use crate::peft::keys::PREFIX;
        if ty.quantized() {
            return Err(Error::Config(format!(
                "an adapter is written as f32, f16 or bf16 (llama.cpp's converter's types), not {ty:?}"
            )));
        }
        let cfg = read_config(dir)?;
        let refuse = |what: &str| {
            Err(Error::format(
                dir,
                format!("{what}: llama.cpp applies plain LoRA adapters only"),
            ))
        };
        if cfg.peft_type != PeftType::Lora {
            return refuse(&format!("a {:?} adapter", cfg.peft_type));
        }
        if cfg.use_dora {
            return refuse("a DoRA adapter (use_dora)");
        }
        if cfg.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return refuse("fully trained modules (modules_to_save)");
        }
        if cfg.bias != BiasMode::None {
            return refuse("trained biases (bias)");
        }
        let config = self.model.config();
        let family = self.model.family();
        let export = gguf_export(family)?;
        let weights = dir.join(WEIGHTS_FILE);
        let tensors = crate::io::safetensors::load(&weights, &candle_core::Device::Cpu)?;
        // PEFT's scale is llama.cpp's `alpha / r` unless rsLoRA or per-module alphas say else.
        let plain = !cfg.use_rslora && cfg.alpha_pattern.is_empty();
        let mut out = vec![];
        for (key, t) in &tensors {
            let bad = || Error::format(&weights, format!("tensor {key} is not a LoRA matrix"));
            let k = key.strip_prefix(PREFIX).ok_or_else(bad)?;
            let (module, part) = match (
                k.strip_suffix(".lora_A.weight"),
                k.strip_suffix(".lora_B.weight"),
            ) {
                (Some(m), _) => (m, "lora_a"),
                (_, Some(m)) => (m, "lora_b"),
                _ => return Err(bad()),
            };
            let base = format!("{module}.weight");
            let name = (export.tensor_name)(&base).ok_or_else(|| {
                Error::format(
                    &weights,
                    format!(
                        "{key}: llama.cpp has no tensor for {base} in a {} model",
                        family.name
                    ),
                )
            })?;
            let mut t = t.to_dtype(DType::F32)?;
            if part == "lora_b" {
                let (_, scaling) = cfg.rank_and_scaling(module);
                if !plain {
                    t = (t * scaling)?;
                }
                t = (export.transform)(&*config, &base, t)?;
            }
            out.push((format!("{name}.{part}"), t));
        }
        if out.is_empty() {
            return Err(Error::format(&weights, "holds no LoRA matrices"));
        }
        out.sort_by_key(|(n, _)| order(n));
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "adapter".into());
        let alpha = if plain { cfg.lora_alpha as f32 } else { 0.0 };
        let metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String(export.architecture.into()),
            ),
            ("general.type".into(), Value::String("adapter".into())),
            ("general.name".into(), Value::String(name)),
            ("general.file_type".into(), Value::U32(ty.file_type())),
            ("adapter.type".into(), Value::String("lora".into())),
            ("adapter.lora.alpha".into(), Value::F32(alpha)),
        ];
        let dtype = ty.matrices();
        let tensors = out
            .into_iter()
            .map(|(name, t)| TensorOut {
                name,
                dims: t.dims().to_vec(),
                dtype,
                data: Box::new(move || encode(&t, dtype)),
            })
            .collect();
        write(path, &metadata, tensors)
    }
}
