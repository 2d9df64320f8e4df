//! The command line end to end on a small text, and bad input: clear errors naming the file,
//! exit code 1, never a panic.

mod common;
use common::{fails_with, ff, fixture, small_corpus, stdout_of, tiny_recipe};
use std::path::Path;

fn last_json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.lines().last().expect("some output")).expect("last line is JSON")
}

#[test]
fn pretrain_generate_eval_params_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus.txt");
    std::fs::write(&corpus, small_corpus(600)).unwrap();
    let run = d.path().join("run");
    let recipe = d.path().join("r.toml");
    std::fs::write(&recipe, tiny_recipe(&corpus, &run, 40)).unwrap();

    let out = stdout_of(
        ff().args(["--quiet", "--json", "pretrain", "--recipe"])
            .arg(&recipe)
            .args(["--set", "train.lr=5e-3"]),
    );
    let evals: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(evals.len(), 11, "{out}"); // 10 evaluations and the summary
    let first = evals[0]["val_loss"].as_f64().unwrap();
    let last = evals[9]["val_loss"].as_f64().unwrap();
    assert!(
        last < first - 0.3,
        "validation loss did not fall: {first} -> {last}"
    );
    assert_eq!(evals[10]["step"], 40);
    let resolved = std::fs::read_to_string(run.join("recipe.toml")).unwrap();
    assert!(resolved.contains("lr = 0.005"), "{resolved}");

    // Generation is reproducible with a seed, and greedy decoding is deterministic.
    let gen = |seed: &str, temp: &str| {
        stdout_of(
            ff().args(["--quiet", "generate", "--model"])
                .arg(&run)
                .args([
                    "--prompt",
                    "the king",
                    "--max-tokens",
                    "30",
                    "--seed",
                    seed,
                    "--temperature",
                    temp,
                    "--top-k",
                    "10",
                    "--top-p",
                    "0.9",
                ]),
        )
    };
    let a = gen("1", "0.8");
    assert_eq!(a, gen("1", "0.8"));
    assert!(
        a.starts_with("the king") && a.trim_end().chars().count() > "the king".len(),
        "{a:?}"
    );
    assert_eq!(gen("1", "0"), gen("2", "0"));

    // Perplexity: the JSON contract, with the token count the window rule implies.
    let text = d.path().join("eval.txt");
    let eval_text = small_corpus(30);
    std::fs::write(&text, &eval_text).unwrap();
    let out = stdout_of(
        ff().args(["eval", "perplexity", "--json", "--context", "16", "--model"])
            .arg(&run)
            .arg("--text")
            .arg(&text),
    );
    let j = last_json(&out);
    let n = eval_text.chars().count(); // char-level: one token per character
    let windows = n.div_ceil(16);
    let last_len = n - 16 * (windows - 1);
    let expected = (windows - 1) * 15 + last_len.saturating_sub(1);
    assert_eq!(j["tokens"].as_u64().unwrap() as usize, expected);
    let nll = j["mean_nll"].as_f64().unwrap();
    assert!((j["perplexity"].as_f64().unwrap() - nll.exp()).abs() < 1e-9 * nll.exp());
    assert!(
        nll < (26f64).ln(),
        "model should beat uniform over letters: {nll}"
    );

    // Parameter accounting of the trained model.
    let j = last_json(&stdout_of(
        ff().args(["params", "--json", "--model"]).arg(&run),
    ));
    let vocab = small_corpus(600)
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        + 1;
    // wte + wpe + 2 blocks (12 C^2 + 13 C) + ln_f, C = 32, tied head
    let c = 32;
    let want = vocab * c + 16 * c + 2 * (12 * c * c + 13 * c) + 2 * c;
    assert_eq!(j["total"].as_u64().unwrap() as usize, want);
    assert_eq!(j["size"], "27K");
    let j = last_json(&stdout_of(
        ff().args(["params", "--json", "--config", "gpt2"]),
    ));
    assert_eq!(j["total"], 124_439_808u64);
    assert_eq!(j["size"], "124M");
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_continues_exactly() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus.txt");
    std::fs::write(&corpus, small_corpus(600)).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("ferroformer");
    // Long enough that the interrupt always lands mid-run, even on a fast machine.
    let steps = 1000;
    let reference = d.path().join("ref");
    let run = d.path().join("run");
    for (dir, name) in [(&reference, "ref.toml"), (&run, "run.toml")] {
        std::fs::write(
            d.path().join(name),
            tiny_recipe(&corpus, dir, steps).replace("decay_steps = 40", "decay_steps = 1000"),
        )
        .unwrap();
    }
    stdout_of(
        ff().args(["--quiet", "pretrain", "--recipe"])
            .arg(d.path().join("ref.toml")),
    );

    let child = std::process::Command::new(&bin)
        .args(["--threads", "2", "--quiet", "pretrain", "--recipe"])
        .arg(d.path().join("run.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once training is under way.
    let metrics = run.join("metrics.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&metrics)
        .map(|s| s.lines().count())
        .unwrap_or(0)
        < 5
    {
        assert!(start.elapsed().as_secs() < 60, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let ck = ferroformer::train::checkpoint::list_checkpoints(&run).unwrap();
    let stopped = ck.last().expect("a checkpoint was saved").0;
    assert!(
        stopped < steps,
        "interrupted run reached the end; make it longer"
    );
    assert!(err.contains("--resume"), "{err}");

    stdout_of(
        ff().args(["--quiet", "pretrain", "--resume", "--recipe"])
            .arg(d.path().join("run.toml")),
    );
    let losses = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                Some(format!("{} {}", v.get("step")?, v.get("loss")?))
            })
            .collect()
    };
    assert_eq!(losses(&reference).len(), steps);
    assert_eq!(losses(&reference), losses(&run));
}

#[test]
fn bad_input_gives_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let recipe = d.path().join("r.toml");
    let go = |corpus: &Path, extra: &[&str]| {
        std::fs::write(&recipe, tiny_recipe(corpus, &run, 4)).unwrap();
        let mut c = ff();
        c.args(["--quiet", "pretrain", "--recipe"])
            .arg(&recipe)
            .args(extra);
        c
    };
    // Missing corpus.
    let missing = d.path().join("nope.txt");
    fails_with(&mut go(&missing, &[]), &["nope.txt", "No such file"]);
    // Empty corpus.
    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails_with(&mut go(&empty, &[]), &["empty.txt", "empty"]);
    // Not UTF-8.
    let bad = d.path().join("latin1.txt");
    std::fs::write(&bad, b"caf\xe9 au lait\n".repeat(100)).unwrap();
    fails_with(&mut go(&bad, &[]), &["latin1.txt", "UTF-8", "offset 3"]);
    // Corpus shorter than one window.
    let short = d.path().join("short.txt");
    std::fs::write(&short, "tiny").unwrap();
    fails_with(&mut go(&short, &[]), &["split has", "context"]);
    // Unknown recipe key, from the file and from --set.
    let ok = d.path().join("ok.txt");
    std::fs::write(&ok, small_corpus(50)).unwrap();
    fails_with(
        &mut go(&ok, &["--set", "train.learnin_rate=1"]),
        &["r.toml", "learnin_rate"],
    );
    std::fs::write(&recipe, tiny_recipe(&ok, &run, 4) + "\n[extra]\nfoo = 1\n").unwrap();
    fails_with(
        ff().args(["pretrain", "--recipe"]).arg(&recipe),
        &["r.toml", "extra"],
    );
    // Out-of-range option.
    fails_with(&mut go(&ok, &["--set", "train.lr=-1"]), &["r.toml", "lr"]);
    // Missing recipe file.
    fails_with(
        ff().args(["pretrain", "--recipe", "/nonexistent/r.toml"]),
        &["/nonexistent/r.toml"],
    );

    // A model directory whose config does not match its weights.
    let model = d.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-tiny");
    std::fs::copy(
        fx.join("model.safetensors"),
        model.join("model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(fx.join("config.json"))
        .unwrap()
        .replace("\"n_layer\": 2", "\"n_layer\": 4");
    std::fs::write(model.join("config.json"), cfg).unwrap();
    fails_with(
        ff().args(["generate", "--prompt", "x", "--model"])
            .arg(&model),
        &[
            "model.safetensors",
            "missing parameter transformer.h.2",
            "config.json",
        ],
    );
    fails_with(
        ff().args(["params", "--model"])
            .arg(d.path().join("nothing")),
        &["nothing", "no such file or directory"],
    );
    // Bad sampling options are usage errors of the work, not panics.
    fails_with(
        ff().args(["generate", "--temperature=-1", "--model"])
            .arg(&fx),
        &["temperature"],
    );
    // Unknown flags are clap's usage errors: exit 2.
    let out = ff().args(["generate", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_verbs_print_their_json() {
    let cfg = r#"{"vocab_size":50,"n_positions":32,"n_embd":16,"n_layer":1,"n_head":2}"#;
    let j = last_json(&stdout_of(ff().args([
        "--json",
        "bench",
        "train",
        "--config",
        cfg,
        "--batch",
        "2",
        "--context",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
    ])));
    for k in [
        "tokens_per_s",
        "step_ms_median",
        "forward_tokens_per_s",
        "peak_rss_mb",
    ] {
        assert!(j[k].as_f64().unwrap() > 0.0, "{k} in {j}");
    }
    let j = last_json(&stdout_of(ff().args([
        "--json",
        "bench",
        "generate",
        "--config",
        cfg,
        "--prompt-tokens",
        "4",
        "--new-tokens",
        "8",
        "--repeats",
        "1",
    ])));
    for k in ["tokens_per_s", "prompt_tokens_per_s", "peak_rss_mb"] {
        assert!(j[k].as_f64().unwrap() > 0.0, "{k} in {j}");
    }
    fails_with(
        ff().args(["bench", "generate", "--config", cfg, "--new-tokens", "40"]),
        &["positions"],
    );

    // A pretrained model through the engine, with a LoRA adapter on PEFT's default targets
    // (q_proj, v_proj): 2 layers x r 8 x ((64 + 64) + (64 + 2 x 16)) trained parameters.
    let llama = fixture("llama-tiny");
    let llama = llama.to_str().unwrap();
    let tiny = [
        "--batch",
        "2",
        "--context",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
    ];
    let j = last_json(&stdout_of(
        ff().args([
            "--json", "bench", "train", "--model", llama, "--peft", "lora",
        ])
        .args(["--set", "peft.r=8"])
        .args(tiny),
    ));
    assert_eq!(j["trainable_params"], 3584, "{j}");
    assert!(j["tokens_per_s"].as_f64().unwrap() > 0.0, "{j}");
    assert_eq!(j["step_ms"].as_array().unwrap().len(), 3, "{j}");
    assert!(j.get("mfu").is_none(), "no MFU for an adapter: {j}");
    let j = last_json(&stdout_of(
        ff().args(["--json", "bench", "train", "--model", llama])
            .args(tiny),
    ));
    assert_eq!(j["trainable_params"], j["params"], "{j}");
    assert!(j["mfu"].as_f64().unwrap() > 0.0, "{j}");
    fails_with(
        ff().args(["bench", "train", "--config", cfg, "--peft", "lora"]),
        &["--peft", "--model"],
    );
    fails_with(
        ff().args(["bench", "train", "--model", llama, "--peft", "lora"])
            .args(["--set", "peft.rank=8"])
            .args(tiny),
        &["peft", "\"rank\""],
    );
    fails_with(
        ff().args(["bench", "train", "--model", llama, "--context", "4096"]),
        &["context", "128"],
    );
}

/// The pretrained-model verbs on the real SmolLM2 GGUF (asset `smollm2-135m-instruct`):
/// one greedy chat turn, the interactive chat, conversion to a Hugging Face directory and
/// perplexity on both formats and both precisions.
#[test]
fn gguf_chat_convert_and_eval() {
    let model = "smollm2-135m-instruct";
    let out = stdout_of(ff().args([
        "--quiet",
        "--json",
        "generate",
        "--model",
        model,
        "--chat",
        "--system",
        "You are a helpful assistant.",
        "--prompt",
        "What is the capital of France? Answer in one sentence.",
        "--max-tokens",
        "32",
        "--temperature",
        "0",
    ]));
    let j = last_json(&out);
    assert_eq!(j["text"], "The capital of France is Paris.");
    // Quantized matmuls: the same answer.
    let out = stdout_of(ff().args([
        "--quiet",
        "--json",
        "generate",
        "--model",
        model,
        "--quantized",
        "--chat",
        "--system",
        "You are a helpful assistant.",
        "--prompt",
        "What is the capital of France? Answer in one sentence.",
        "--max-tokens",
        "32",
        "--temperature",
        "0",
    ]));
    assert_eq!(last_json(&out)["text"], "The capital of France is Paris.");

    // The REPL: two turns (history kept), a reset, end of input. (Without this system
    // message the quantized model, like llama.cpp on the same file, answers the first
    // question with a French word list; the f32 model answers it.)
    let out = stdout_of(
        ff().args([
            "--quiet",
            "chat",
            "--model",
            model,
            "--quantized",
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--system",
            "You are a helpful assistant.",
        ])
        .write_stdin("What is the capital of France?\nAnd of Italy?\n/reset\n/exit\n"),
    );
    assert!(out.contains("Paris"), "{out}");
    assert!(out.contains("Rome"), "{out}");

    // Convert, then the directory scores a text exactly as the GGUF does.
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("smollm2-hf");
    stdout_of(
        ff().args(["--quiet", "convert", "--from", model, "--to"])
            .arg(&dir),
    );
    fails_with(
        ff().args(["convert", "--from", model, "--to"]).arg(&dir),
        &["already holds a model", "--force"],
    );
    let text = d.path().join("text.txt");
    std::fs::write(&text, small_corpus(40)).unwrap();
    let ppl = |m: &str, extra: &[&str]| -> f64 {
        let out = stdout_of(
            ff().args([
                "--quiet",
                "--json",
                "eval",
                "perplexity",
                "--model",
                m,
                "--context",
                "128",
            ])
            .args(extra)
            .arg("--text")
            .arg(&text),
        );
        last_json(&out)["perplexity"].as_f64().unwrap()
    };
    let gguf = ppl(model, &[]);
    let hf = ppl(dir.to_str().unwrap(), &[]);
    let quant = ppl(model, &["--quantized"]);
    assert!((gguf - hf).abs() < 1e-6 * gguf, "{gguf} vs {hf}");
    assert!(
        (gguf - quant).abs() < 0.05 * gguf,
        "{gguf} vs quantized {quant}"
    );
    assert!(gguf > 1.0 && gguf < 100.0, "{gguf}");

    // Bad input.
    fails_with(
        ff().args([
            "generate",
            "--model",
            "/no/such/model.gguf",
            "--prompt",
            "x",
        ]),
        &["/no/such/model.gguf"],
    );
    fails_with(
        ff().args(["generate", "--model", "gpt2", "--chat", "--prompt", "x"]),
        &["gpt2", "asset"],
    );
}

/// `embed` and `similar` on all-MiniLM-L6-v2 (asset): one JSON vector per line in order,
/// semantic ranking, and bad input (empty lines, over-long lines with --no-truncate).
#[test]
fn embed_and_similar() {
    let model = "all-minilm-l6-v2";
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.txt");
    std::fs::write(
        &input,
        "The cat sits on the mat.\nStock markets fell sharply today.\nA kitten is resting on a rug.\n",
    )
    .unwrap();
    let out = stdout_of(
        ff().args(["--quiet", "embed", "--model", model, "--input"])
            .arg(&input),
    );
    let vecs: Vec<Vec<f32>> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(vecs.len(), 3);
    assert!(vecs.iter().all(|v| v.len() == 384));
    let cos = ferroformer::infer::embed::cosine;
    assert!(cos(&vecs[0], &vecs[2]) > cos(&vecs[0], &vecs[1]) + 0.3);

    let out = stdout_of(
        ff().args([
            "--quiet", "--json", "similar", "--model", model, "--top-k", "1", "--query",
        ])
        .arg("a small cat lying on a carpet")
        .arg("--corpus")
        .arg(&input),
    );
    assert_eq!(last_json(&out)["line"], 3);

    std::fs::write(&input, "one\n\nthree\n").unwrap();
    fails_with(
        ff().args(["embed", "--model", model, "--input"])
            .arg(&input),
        &["in.txt", "line 2 is empty"],
    );
    std::fs::write(&input, "word ".repeat(400)).unwrap();
    fails_with(
        ff().args(["embed", "--no-truncate", "--model", model, "--input"])
            .arg(&input),
        &["in.txt", "line 1", "402 tokens", "256"],
    );
    // Truncation (the default) warns and still embeds.
    let out = ff()
        .args(["embed", "--model", model, "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated to 256 tokens"));
}

/// `fill-mask` prints transformers' fill-mask pipeline output (fixture bert-tiny-fillmask);
/// `tokenizer train --kind wordpiece` writes a BERT vocabulary; bad input fails clearly.
#[test]
fn fill_mask_and_wordpiece() {
    let dir = common::fixture("bert-tiny-fillmask");
    let model = dir.to_str().unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let case = &want["cases"][0];
    let out = stdout_of(ff().args([
        "--json",
        "fill-mask",
        "--model",
        model,
        case["text"].as_str().unwrap(),
    ]));
    let got = last_json(&out);
    let (g, w) = (got.as_array().unwrap(), case["result"].as_array().unwrap());
    assert_eq!(g.len(), w.len());
    for (g, w) in g.iter().zip(w) {
        assert_eq!(g["token"], w["token"]);
        assert_eq!(g["sequence"], w["sequence"]);
        let (a, b) = (g["score"].as_f64().unwrap(), w["score"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-5 * b, "{a} vs {b}");
    }
    // Two masks: a list per mask; plain output lists the candidates.
    let out = stdout_of(ff().args([
        "--json",
        "fill-mask",
        "--model",
        model,
        "[MASK] cat is [MASK].",
    ]));
    assert_eq!(last_json(&out).as_array().unwrap().len(), 2);
    let out = stdout_of(ff().args(["fill-mask", "--top-k", "2", "--model", model, "a [MASK]."]));
    assert_eq!(out.lines().count(), 2, "{out}");
    fails_with(
        ff().args(["fill-mask", "--model", model, "no mask here"]),
        &["[MASK]"],
    );
    fails_with(
        ff().args(["fill-mask", "--top-k", "0", "--model", model, "a [MASK]"]),
        &["top-k"],
    );
    let pooler = common::fixture("bert-tiny-pooler");
    fails_with(
        ff().args(["fill-mask", "--model", pooler.to_str().unwrap(), "a [MASK]"]),
        &["no masked-LM head"],
    );

    let d = tempfile::tempdir().unwrap();
    let out_tok = d.path().join("wp.json");
    let corpus = common::fixture("wordpiece/corpus.txt");
    let out = stdout_of(
        ff().args([
            "--json",
            "tokenizer",
            "train",
            "--kind",
            "wordpiece",
            "--vocab-size",
            "300",
            "--corpus",
        ])
        .arg(&corpus)
        .arg("--out")
        .arg(&out_tok),
    );
    assert_eq!(last_json(&out)["vocab_size"], 300);
    let tok = ferroformer::text::tokenizer::Tokenizer::load(&out_tok).unwrap();
    assert_eq!(tok.token_id("[MASK]"), Some(4));
    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails_with(
        ff().args(["tokenizer", "train", "--kind", "wordpiece", "--corpus"])
            .arg(&empty)
            .arg("--out")
            .arg(d.path().join("x.json")),
        &["empty.txt", "no text"],
    );
}

/// `pretrain` a tiny seq2seq recipe, then `translate` (greedy and beam, stdin to stdout, empty
/// lines kept, unknown characters an error or <unk> by flag, over-long input an error) and
/// `eval seq2seq --json`.
#[test]
fn seq2seq_pretrain_translate_eval() {
    let d = tempfile::tempdir().unwrap();
    let lex = d.path().join("lex");
    common::letter_sound_lexicon(&lex);
    let run = d.path().join("run");
    let recipe = d.path().join("r.toml");
    std::fs::write(&recipe, common::tiny_seq2seq_recipe(&lex, &run, 400)).unwrap();
    stdout_of(ff().args(["--quiet", "pretrain", "--recipe"]).arg(&recipe));
    let model = run.to_str().unwrap();
    for beam in ["1", "3"] {
        let out = stdout_of(
            ff().args(["--quiet", "translate", "--beam", beam, "--model", model])
                .write_stdin("cab\n\nhead\n"),
        );
        assert_eq!(out, "K AA1 B\n\nHH EH1 AA1 D\n", "beam {beam}");
    }
    fails_with(
        ff().args(["translate", "--model", model])
            .write_stdin("cab\nc4t\n"),
        &["line 2", "\"4\"", "not in the model's vocabulary"],
    );
    let out = stdout_of(
        ff().args(["--quiet", "translate", "--allow-unk", "--model", model])
            .write_stdin("c4t\n"),
    );
    assert_eq!(out.lines().count(), 1);
    fails_with(
        ff().args(["translate", "--model", model])
            .write_stdin("abcdefghabcdefghabcdefgh\n"),
        &["line 1", "at most 16"],
    );
    let out = stdout_of(ff().args([
        "--json", "--quiet", "eval", "seq2seq", "--model", model, "--split", "test",
    ]));
    let r = last_json(&out);
    // A tenth of the 800 words, less the few drawn twice (merged as one word).
    let n = r["n"].as_u64().unwrap();
    assert!((70..=80).contains(&n), "{r}");
    assert!(
        r["wer"].as_f64().unwrap() < 0.1 && r["per"].as_f64().unwrap() < 0.05,
        "{r}"
    );
    fails_with(
        ff().args(["eval", "seq2seq", "--model", model, "--split", "dev2"]),
        &["dev2"],
    );
    // The same recipe with one override, trained into a directory of its own.
    let variant = |set: &str, name: &str| {
        let out = d.path().join(name);
        stdout_of(
            ff().args(["--quiet", "pretrain", "--recipe"])
                .arg(&recipe)
                .args(["--set", set, "--set"])
                .arg(format!("train.out_dir={:?}", out.display().to_string())),
        );
        out
    };
    // data.stress = false: the target vocabulary and the references lose their stress digits.
    let plain = variant("data.stress=false", "plain");
    let vocab = std::fs::read_to_string(plain.join("target_tokenizer.json")).unwrap();
    assert!(
        vocab.contains("\"AA\"") && !vocab.contains("\"AA1\""),
        "{vocab}"
    );
    let r = last_json(&stdout_of(
        ff().args(["--json", "--quiet", "eval", "seq2seq", "--model"])
            .arg(&plain)
            .args(["--split", "test"]),
    ));
    assert_eq!(r["n"].as_u64().unwrap(), n, "the same split");
    // Scored against stress-free references: against the lexicon's own (stressed) ones no
    // output of this model could match.
    assert!(r["wer"].as_f64().unwrap() < 0.1, "{r}");
    assert_eq!(r["wer"], r["wer_no_stress"], "{r}");
    // data.reverse_target = true: the run learns right to left; its outputs come back left to
    // right, alone and beside the left-to-right run (bidirectional rescoring).
    let rev = variant("data.reverse_target=true", "rev");
    let rev = rev.to_str().unwrap();
    for models in [vec![rev], vec![model, rev]] {
        let mut args = vec!["--quiet", "translate", "--beam", "3"];
        for m in &models {
            args.extend(["--model", m]);
        }
        let out = stdout_of(ff().args(&args).write_stdin("cab\n\nhead\n"));
        assert_eq!(out, "K AA1 B\n\nHH EH1 AA1 D\n", "{models:?}");
        let mut args = vec!["--json", "--quiet", "eval", "seq2seq", "--split", "test"];
        for m in &models {
            args.extend(["--model", m]);
        }
        let r = last_json(&stdout_of(ff().args(&args)));
        assert_eq!(r["n"].as_u64().unwrap(), n, "the same split");
        assert!(r["wer"].as_f64().unwrap() < 0.1, "{models:?}: {r}");
    }
}

/// Instruction tuning end to end on the real SmolLM2: build the task mixture from the fetched
/// sources, a two-step LoRA run with packing, zero-shot multiple choice with the adapter, chat
/// generation through it; bad data and templates fail clearly.
#[test]
fn instruct_build_tune_evaluate_and_chat() {
    let d = tempfile::tempdir().unwrap();
    let mix = d.path().join("mix");
    let out = stdout_of(
        ff().args(["--quiet", "--json", "instruct", "build", "--out"])
            .arg(&mix)
            .args(["--train-per-family", "30", "--eval-per-family", "4"]),
    );
    let m = last_json(&out);
    assert_eq!(m["train_examples"], 90, "{m}");
    assert_eq!(m["eval_examples"], 20, "{m}");
    let run = d.path().join("run");
    let out = stdout_of(
        ff().args([
            "--quiet",
            "--json",
            "instruct",
            "--from",
            "smollm2-135m-instruct",
            "--data",
        ])
        .arg(&mix)
        .args([
            "--set",
            "train.steps=2",
            "--set",
            "train.batch_size=1",
            "--set",
            "train.context=128",
            "--set",
            "train.eval_interval=2",
            "--set",
            "train.eval_iters=1",
            "--set",
            "peft.r=4",
            "--set",
        ])
        .arg(format!("train.out_dir={:?}", run.display().to_string())),
    );
    assert_eq!(last_json(&out)["step"], 2, "{out}");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "recipe.toml",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let recipe = std::fs::read_to_string(run.join("recipe.toml")).unwrap();
    assert!(recipe.contains("objective = \"sft\""), "{recipe}");
    assert!(recipe.contains("packing = true"), "{recipe}");

    let out = stdout_of(
        ff().args(["--quiet", "--json", "eval", "choices", "--model"])
            .arg(&run)
            .arg("--data")
            .arg(&mix)
            .args(["--families", "sentiment,taxonomy"]),
    );
    let j = last_json(&out);
    assert_eq!(j["all"]["n"], 8, "{j}");
    assert_eq!(j["held_out"]["n"], 4, "{j}");
    let acc = j["families"]["taxonomy"]["acc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{j}");

    let out = stdout_of(
        ff().args(["--quiet", "--json", "generate", "--model"])
            .arg(&run)
            .args([
                "--chat",
                "--prompt",
                "Is a dog a kind of animal? Answer yes or no.",
                "--max-tokens",
                "4",
                "--temperature",
                "0",
            ]),
    );
    assert!(last_json(&out)["text"].is_string(), "{out}");

    // Bad input: nothing usable, an unknown template, a template that fails to render.
    let bad = d.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"instruction\": \"no output\"}\n{\"x\": 1}\n").unwrap();
    let tune = |data: &Path, extra: &[&str]| {
        let mut c = ff();
        c.args([
            "--quiet",
            "instruct",
            "--from",
            "smollm2-135m-instruct",
            "--data",
        ])
        .arg(data)
        .args(["--set", "train.steps=1"])
        .args(extra)
        .arg("--set")
        .arg(format!(
            "train.out_dir={:?}",
            d.path().join("bad-run").display().to_string()
        ));
        c
    };
    fails_with(
        &mut tune(&bad, &[]),
        &[
            "bad.jsonl",
            "no usable instruction records",
            "line 1: no \"output\"",
        ],
    );
    fails_with(
        &mut tune(&mix, &["--template", "nonesuch"]),
        &["nonesuch", "chatml, alpaca, llama-2"],
    );
    let jinja = d.path().join("t.jinja");
    std::fs::write(
        &jinja,
        "{% for m in messages %}\n{{ m['content'] }}\n{% if m['role'] == 'assistant' %}{{ raise_exception('no assistants here') }}{% endif %}\n{% endfor %}",
    )
    .unwrap();
    fails_with(
        &mut tune(&mix, &["--template", jinja.to_str().unwrap()]),
        &[
            "example 1: rendering the conversation: chat template, line 3",
            "no assistants here",
        ],
    );
}

#[test]
fn fewshot_and_prototypes_evaluate_and_reject_bad_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = "smollm2-135m-instruct";
    let (out, png) = (d.join("docs.jsonl"), d.join("acc.png"));
    let s = stdout_of(ff().args([
        "--quiet",
        "--json",
        "eval",
        "fewshot",
        "--model",
        model,
        "--task",
        "storycloze",
        "--shots",
        "0,2",
        "--limit",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]));
    let lines: Vec<serde_json::Value> = s
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let j = &lines[1];
    assert_eq!(
        (j["task"].as_str(), j["shots"].as_u64(), j["n"].as_u64()),
        (Some("storycloze"), Some(2), Some(3))
    );
    for key in ["acc", "acc_norm"] {
        let v = j[key].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&v) && (v * 3.0).fract() < 1e-9,
            "{key} {v}"
        );
    }
    let docs: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 6);
    assert_eq!(docs[3]["shots"], 2);
    assert_eq!(docs[3]["exemplars"], serde_json::json!([1593, 902]));
    assert_eq!(docs[3]["logliks"].as_array().unwrap().len(), 2);
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);

    // Embedding classifiers on the built-in polarity task.
    let s = stdout_of(ff().args([
        "--quiet",
        "--json",
        "eval",
        "prototypes",
        "--model",
        "all-minilm-l6-v2",
        "--task",
        "polarity",
        "--shots",
        "2,4",
        "--seeds",
        "3",
        "--neighbors",
        "3",
    ]));
    let j = last_json(&s);
    assert_eq!(
        (
            j["shots"].as_u64(),
            j["seeds"].as_u64(),
            j["queries"].as_u64()
        ),
        (Some(4), Some(3), Some(192))
    );
    assert_eq!(j["prototype"]["per_seed"].as_array().unwrap().len(), 3);
    assert!(j["knn"]["mean"].as_f64().unwrap() > 0.3);

    // Bad tasks: a template naming a missing field, k beyond the exemplar split, empty choices.
    std::fs::write(d.join("qa.jsonl"), "{\"question\": \"2+2?\", \"answer\": 0, \"options\": [\"4\", \"5\"]}\n{\"question\": \"3+3?\", \"answer\": 1, \"options\": [\"5\", \"6\"]}\n").unwrap();
    let task = |body: &str| -> String {
        let p = d.join("qa.toml");
        std::fs::write(
            &p,
            format!("{body}\ntest_split = \"all\"\n[splits]\nall = \"qa.jsonl\"\n"),
        )
        .unwrap();
        p.to_str().unwrap().to_string()
    };
    let run = |t: &str, shots: &str| {
        let mut c = ff();
        c.args([
            "--quiet", "eval", "fewshot", "--model", model, "--task", t, "--shots", shots,
        ]);
        c
    };
    let t = task("doc_to_text = \"Q: {{question}}\"\ndoc_to_choice = \"{{opts}}\"\ndoc_to_target = \"answer\"");
    fails_with(
        &mut run(&t, "0"),
        &[
            "qa.toml",
            "line 2",
            "doc_to_choice",
            "`opts`",
            "answer, options, question",
        ],
    );
    let t = task("doc_to_text = \"Q: {{question}}\"\ndoc_to_choice = \"{{options}}\"\ndoc_to_target = \"answer\"");
    fails_with(
        &mut run(&t, "2"),
        &[
            "--shots 2",
            "has 2 documents",
            "one is the document evaluated",
        ],
    );
    std::fs::write(
        d.join("qa.jsonl"),
        "{\"question\": \"2+2?\", \"answer\": 0, \"options\": []}\n",
    )
    .unwrap();
    fails_with(&mut run(&t, "0"), &["qa.toml", "no choices"]);
    fails_with(
        &mut run("no-such-task", "0"),
        &["no-such-task", "storycloze, polarity"],
    );
}

#[test]
fn semnet_commands_end_to_end() {
    let ex = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/semnet/toolkit.tsv");
    // The issue's example: WordNet (the asset), Wu-Palmer, prints the number.
    let out = stdout_of(ff().args([
        "--quiet",
        "semnet",
        "similarity",
        "--graph",
        "wordnet",
        "--measure",
        "wup",
        "dog.n.01",
        "cat.n.01",
    ]));
    assert_eq!(out.trim(), "0.8571428571428571");
    let out = stdout_of(ff().args([
        "--quiet",
        "--json",
        "semnet",
        "similarity",
        "--measure",
        "lch",
        "dog.n.01",
        "cat.n.01",
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["lowest_common_hypernyms"][0], "carnivore.n.01");
    assert!((v["similarity"].as_f64().unwrap() - 2.0281482472922856).abs() < 1e-12);
    // An unknown synset: exit 1, the word's senses suggested.
    let out = ff()
        .args(["--quiet", "semnet", "similarity", "dog.n.99", "cat.n.01"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown concept \"dog.n.99\"") && err.contains("dog.n.01"),
        "{err}"
    );
    // Import saves a compact file that the other verbs open.
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("toolkit.semnet");
    let out = stdout_of(
        ff().args(["--quiet", "--json", "semnet", "import", ex, "--out"])
            .arg(&saved),
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (
            v["concepts"].as_u64(),
            v["edges"].as_u64(),
            v["cycles"].as_u64()
        ),
        (Some(50), Some(52), Some(0))
    );
    let g = saved.to_str().unwrap();
    let out = stdout_of(ff().args(["--quiet", "semnet", "closure", "--graph", g, "GPT-2"]));
    assert_eq!(out, "1\tdecoder-only Transformer\n2\tTransformer\n");
    let out = stdout_of(ff().args([
        "--quiet",
        "semnet",
        "path",
        "--graph",
        g,
        "GPT-2",
        "BERT",
        "--relation",
        "is_a",
    ]));
    assert!(out.starts_with("GPT-2 -is_a-> decoder-only Transformer -is_a-> Transformer <-is_a- encoder-only Transformer <-is_a- BERT\n"), "{out}");
    let out = stdout_of(ff().args(["--quiet", "--json", "semnet", "query", "--graph", g, "LoRA"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["inherited"][0]["value"], "small to store");
    assert_eq!(
        v["hypernym_paths"][0],
        serde_json::json!(["fine-tuning", "PEFT method", "LoRA"])
    );
    let out = stdout_of(ff().args([
        "--quiet",
        "semnet",
        "verbalize",
        "--graph",
        g,
        "--concept",
        "ViT",
        "--relation",
        "is_a",
    ]));
    assert_eq!(out, "ViT is a kind of encoder-only Transformer.\n");
    let out = stdout_of(ff().args([
        "--quiet",
        "semnet",
        "facts",
        "--graph",
        g,
        "--prompt",
        "What is ViT used for?",
    ]));
    assert!(
        out.contains("- ViT is used for image classification.\n")
            && out.contains("Question: What is ViT used for?"),
        "{out}"
    );
    let png = dir.path().join("vit.png");
    stdout_of(
        ff().args([
            "--quiet",
            "semnet",
            "export",
            "--graph",
            g,
            "--around",
            "ViT",
            "--depth",
            "2",
            "--no-graphviz",
            "--out",
        ])
        .arg(&png),
    );
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
    // A cycle in an acyclic relation is reported at import, and the file still saves.
    let cyc = dir.path().join("cyc.tsv");
    std::fs::write(&cyc, "a\tis_a\tb\nb\tis_a\tc\nc\tis_a\ta\n").unwrap();
    let out = ff()
        .args(["--json", "semnet", "import"])
        .arg(&cyc)
        .arg("--out")
        .arg(dir.path().join("cyc.semnet"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relation is_a is declared acyclic but has a cycle: a -> b -> c -> a"),
        "{err}"
    );
    // Extraction against hand labels.
    let out = stdout_of(
        ff().args(["--quiet", "--json", "semnet", "extract", "--gold"])
            .arg(common::fixture("semnet/extract_gold.tsv"))
            .arg(common::fixture("semnet/extract_text.txt")),
    );
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["gold"], 38);
}

#[test]
fn semnet_embed_trains_transe_resumes_exactly_and_ranks() {
    // 30 cities and their countries under two relations, `in` and `capital_of`; a few
    // capital_of triples held out, so each is predictable from its `in` twin.
    let dir = tempfile::tempdir().unwrap();
    let split = dir.path().join("split");
    std::fs::create_dir_all(&split).unwrap();
    let (mut train, mut valid, mut test) = (String::new(), String::new(), String::new());
    for i in 0..30 {
        train.push_str(&format!("city{i}\tin\tcountry{i}\n"));
        let dest = match i % 10 {
            3 => &mut valid,
            7 => &mut test,
            _ => &mut train,
        };
        dest.push_str(&format!("city{i}\tcapital_of\tcountry{i}\n"));
    }
    std::fs::write(split.join("train.txt"), train).unwrap();
    std::fs::write(split.join("valid.txt"), valid).unwrap();
    std::fs::write(split.join("test.txt"), test).unwrap();
    let run = |out: &std::path::Path, steps: &str, resume: bool| {
        let mut c = ff();
        c.args(["--quiet", "--json", "semnet", "embed", "--split"])
            .arg(&split)
            .arg("--out")
            .arg(out);
        c.args([
            "--steps",
            steps,
            "--eval-every",
            "20",
            "--batch",
            "32",
            "--dim",
            "16",
            "--lr",
            "0.05",
            "--warmup",
            "10",
        ]);
        if resume {
            c.arg("--resume");
        }
        stdout_of(&mut c)
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let out = run(&a, "300", false);
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        (v["entities"].as_u64(), v["relations"].as_u64()),
        (Some(60), Some(2))
    );
    let mrr = v["test"]["mrr"].as_f64().unwrap();
    // Random ranking of 60 entities gives an MRR near 0.08; capital_of ~ in is learnable.
    assert!(mrr > 0.5, "test MRR {mrr}");
    for f in [
        "model.safetensors",
        "config.json",
        "entities.txt",
        "relations.txt",
        "metrics.jsonl",
        "loss.png",
        "link_prediction.json",
    ] {
        assert!(a.join(f).exists(), "{f}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (
            cfg["model_type"].as_str(),
            cfg["dim"].as_u64(),
            cfg["norm"].as_u64()
        ),
        (Some("transe"), Some(16), Some(1))
    );
    // 140 steps, then resumed to 300: the same embeddings as 300 straight.
    run(&b, "140", false);
    run(&b, "300", true);
    let same = std::fs::read(a.join("model.safetensors")).unwrap()
        == std::fs::read(b.join("model.safetensors")).unwrap();
    assert!(
        same,
        "a resumed run's embeddings differ from an uninterrupted run's"
    );
    // A split with a malformed line is refused, naming file and line.
    std::fs::write(split.join("valid.txt"), "e1\tnext\n").unwrap();
    let o = ff()
        .args(["--quiet", "semnet", "embed", "--split"])
        .arg(&split)
        .arg("--out")
        .arg(dir.path().join("c"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("valid.txt") && err.contains("line 1"), "{err}");
}
