//! `ferroformer convert`: write any loadable model (a GGUF file, a Hugging Face directory, an
//! asset) as a Hugging Face directory (config.json, model.safetensors (f32), tokenizer.json,
//! tokenizer_config.json (special tokens, chat template), generation_config.json), or as a
//! llama.cpp GGUF file (`--to OUT.gguf`, in the type `--quantize` names).

use super::{load_model, Common};
use anyhow::{bail, Result};
use clap::Args;
use ferroformer::infer::gguf_export::GgufType;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The model to convert: a llama.cpp .gguf file (dequantized to f32), a Hugging Face
    /// directory, or an asset name such as smollm2-135m-instruct [default with
    /// --merge-adapter: the adapter's base_model_name_or_path]. A PEFT LoRA adapter directory
    /// with a .gguf --to is written as llama.cpp's LoRA adapter file (f32 unless --quantize
    /// says f16 or bf16), for llama.cpp's --lora on the base model's GGUF.
    #[arg(long)]
    pub from: Option<String>,
    /// Fold this PEFT adapter directory into the weights (PEFT's merge_and_unload) and write
    /// the merged model (repeatable: all are merged).
    #[arg(long, value_name = "DIR")]
    pub merge_adapter: Vec<PathBuf>,
    /// Output: a directory (created; must not already hold a model unless --force), or a
    /// file ending in .gguf, written for llama.cpp (Ollama, LM Studio) in the --quantize type.
    #[arg(long)]
    pub to: PathBuf,
    /// The type of a .gguf output's matrices: f32, f16, bf16, q8_0, q4_0 or q4_1 (norms stay
    /// f32; in quantized files the output matrix is q6_k, or q8_0 when its rows are not whole
    /// 256-value blocks, as llama-quantize does) [default: f16, as llama.cpp's converter].
    #[arg(long, value_name = "TYPE")]
    pub quantize: Option<String>,
    /// Overwrite the model files in an existing --to directory, or an existing .gguf file.
    #[arg(long, default_value_t = false)]
    pub force: bool,
}

pub fn run(a: ConvertArgs, c: &Common) -> Result<()> {
    let gguf =
        a.to.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let ty = match (&a.quantize, gguf) {
        (Some(q), true) => GgufType::parse(q)?,
        (None, true) => GgufType::F16,
        (Some(_), false) => bail!(
            "--quantize applies to GGUF output; give --to a file name ending in .gguf (a directory gets f32 safetensors)"
        ),
        (None, false) => GgufType::F32,
    };
    if gguf && a.to.exists() && !a.force {
        bail!(
            "{}: already exists; pass --force to overwrite",
            a.to.display()
        );
    }
    if !gguf && a.to.join("config.json").exists() && !a.force {
        bail!(
            "{}: already holds a model (config.json); pass --force to overwrite",
            a.to.display()
        );
    }
    let from = match (&a.from, a.merge_adapter.first()) {
        (Some(f), _) => f.clone(),
        (None, Some(dir)) => ferroformer::peft::adapter_io::read_config(dir)?
            .base_model_name_or_path
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: the adapter names no base_model_name_or_path; pass --from BASE",
                    dir.display()
                )
            })?,
        (None, None) => bail!("nothing to convert: pass --from MODEL (and/or --merge-adapter DIR)"),
    };
    let adapter_dir = std::path::Path::new(&from);
    if gguf
        && a.merge_adapter.is_empty()
        && ferroformer::peft::adapter_io::is_adapter_dir(adapter_dir)
    {
        // An adapter alone: llama.cpp's LoRA adapter file, applied with `--lora` on the base.
        let base = ferroformer::peft::adapter_io::read_config(adapter_dir)?
            .base_model_name_or_path
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: the adapter names no base_model_name_or_path (needed for its sizes and tensor names)",
                    adapter_dir.display()
                )
            })?;
        let p = load_model(&base, c, false)?;
        let ty = if a.quantize.is_some() {
            ty
        } else {
            GgufType::F32
        };
        p.save_adapter_gguf(adapter_dir, &a.to, ty)?;
        if c.json {
            println!(
                "{}",
                serde_json::json!({"adapter": adapter_dir, "base": p.source, "to": a.to})
            );
        } else if !c.quiet {
            eprintln!(
                "wrote {} (LoRA adapter for {})",
                a.to.display(),
                p.source.display()
            );
        }
        return Ok(());
    }
    let mut p = load_model(&from, c, false)?;
    if !a.merge_adapter.is_empty() {
        let specs: Vec<String> = a
            .merge_adapter
            .iter()
            .enumerate()
            .map(|(i, d)| format!("adapter{i}={}", d.display()))
            .collect();
        p = p.with_adapters(&super::adapter_specs(&specs)?)?;
        let names: Vec<String> = (0..specs.len()).map(|i| format!("adapter{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        p.store.peft().set_active(&names)?;
        p.store.merge_and_unload()?;
        p.model = ferroformer::models::CausalModel::new(&p.model.config(), &mut p.store)?;
    }
    if gguf {
        p.save_gguf(&a.to, ty)?;
    } else {
        p.save_dir(&a.to)?;
    }
    if c.json {
        println!(
            "{}",
            serde_json::json!({"from": p.source, "to": a.to, "model_type": p.model.config().model_type(), "parameters": p.store.numel()})
        );
    } else if !c.quiet {
        eprintln!("wrote {}", a.to.display());
    }
    Ok(())
}
