//! Every Llama-style family trains through the CLI as Llama does: `pretrain` a fresh model of
//! the family from a recipe (its run directory a Hugging Face directory of that
//! `model_type`), `finetune` it whole and with LoRA on PEFT's default targets for its
//! `model_type`, `instruct` it (LoRA on every linear layer, packed examples), and `generate`
//! from the tuned adapter.

mod common;
use common::{ff, small_corpus, stdout_of, tiny_recipe};
use std::path::Path;

fn last_json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.lines().last().expect("output")).expect("JSON")
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// `(architecture, model_type, LoRA's default targets)`.
const FAMILIES: &[(&str, &str, &[&str])] = &[
    ("qwen2", "qwen2", &["q_proj", "v_proj"]),
    ("qwen3", "qwen3", &["q_proj", "v_proj"]),
    ("mistral", "mistral", &["q_proj", "v_proj"]),
    ("gemma2", "gemma2", &["q_proj", "v_proj"]),
    ("gemma3", "gemma3_text", &["q_proj", "v_proj"]),
    ("phi3", "phi3", &["qkv_proj"]),
];

#[test]
fn every_family_pretrains_finetunes_and_instruction_tunes() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus.txt");
    std::fs::write(&corpus, small_corpus(300)).unwrap();
    let data = d.path().join("sft.jsonl");
    let records: Vec<String> = (0..24)
        .map(|i| {
            let object = ["the crown", "a rose", "the sea"][i % 3];
            let rest = [" and dreams of the dawn", " and fears the stars"][i % 2];
            serde_json::json!({
                "prompt": format!("the king speaks of {object}"),
                "completion": rest,
            })
            .to_string()
        })
        .collect();
    std::fs::write(&data, records.join("\n")).unwrap();
    for (arch, model_type, lora) in FAMILIES {
        let root = d.path().join(arch);
        let pre = root.join("pre");
        let recipe = root.join("r.toml");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(&recipe, tiny_recipe(&corpus, &pre, 4)).unwrap();
        let set = |k: &str, v: String| ["--set".to_string(), format!("{k}={v}")];
        let quoted = |p: &Path| format!("{:?}", p.display().to_string());
        let out = stdout_of(
            ff().args(["--quiet", "--json", "pretrain", "--recipe"])
                .arg(&recipe)
                .args(set("model.architecture", format!("{arch:?}")))
                .args(set("model.n_kv_head", "1".into()))
                .args(set("model.n_positions", "128".into())),
        );
        let j = last_json(&out);
        assert_eq!(j["step"], 4, "{arch}: {out}");
        let cfg = read_json(&pre.join("config.json"));
        assert_eq!(cfg["model_type"], *model_type, "{arch}");
        assert_eq!(cfg["num_key_value_heads"], 1, "{arch}");

        // LoRA with PEFT's default targets for the model_type.
        let lora_dir = root.join("lora");
        stdout_of(
            ff().args(["--quiet", "--json", "finetune", "--from"])
                .arg(&pre)
                .args(["--recipe"])
                .arg(&recipe)
                .args(["--peft", "lora"])
                .args(set("train.out_dir", quoted(&lora_dir)))
                .args(set("train.steps", "2".into())),
        );
        let ac = read_json(&lora_dir.join("adapter_config.json"));
        let mut targets: Vec<String> = ac["target_modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        targets.sort();
        assert_eq!(targets, lora.to_vec(), "{arch} LoRA targets");
        assert!(
            lora_dir.join("adapter_model.safetensors").is_file(),
            "{arch}"
        );

        // The whole model.
        let full = root.join("full");
        let out = stdout_of(
            ff().args(["--quiet", "--json", "finetune", "--from"])
                .arg(&pre)
                .args(["--recipe"])
                .arg(&recipe)
                .args(set("train.out_dir", quoted(&full)))
                .args(set("train.steps", "2".into())),
        );
        assert_eq!(last_json(&out)["step"], 2, "{arch}: {out}");
        assert_eq!(
            read_json(&full.join("config.json"))["model_type"],
            *model_type
        );

        // Instruction tuning (the built-in recipe: LoRA on every linear layer, packing).
        let sft = root.join("sft");
        let out = stdout_of(
            ff().args(["--quiet", "--json", "instruct", "--from"])
                .arg(&pre)
                .arg("--data")
                .arg(&data)
                .args(set("train.out_dir", quoted(&sft)))
                .args(set("train.steps", "2".into()))
                .args(set("train.context", "64".into()))
                .args(set("train.batch_size", "2".into()))
                .args(set("train.eval_interval", "2".into()))
                .args(set("train.eval_iters", "1".into())),
        );
        assert_eq!(last_json(&out)["step"], 2, "{arch}: {out}");
        let out = stdout_of(
            ff().args(["--quiet", "--json", "generate", "--model"])
                .arg(&sft)
                .args([
                    "--prompt",
                    "the king",
                    "--max-tokens",
                    "4",
                    "--temperature",
                    "0",
                ]),
        );
        assert!(
            last_json(&out)["tokens"].as_u64().unwrap() > 0,
            "{arch}: {out}"
        );
    }
}
