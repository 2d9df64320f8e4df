//! Few-shot evaluation against lm-evaluation-harness 0.4.13 itself (fixtures in
//! tests/fixtures/fewshot, made by make_fewshot_fixtures.py; see NOTES.md there): prompts,
//! exemplar draws, token splits, log-likelihoods and accuracies of SmolLM2-135M-Instruct (f32,
//! from the GGUF asset) on Story Cloze; prototype and k-NN predictions against numpy and
//! scikit-learn on MiniLM embeddings of the polarity sentences.

mod common;

use common::fixture;
use ferroformer::eval::few_shot::{self, encode_pair, FewshotConfig, Prompted};
use ferroformer::eval::prototypes::{knn_predict, prototype_predict};
use ferroformer::eval::task::Task;
use ferroformer::infer::pretrained::PretrainedCausalLm;
use ferroformer::rng::PyRandom;
use serde_json::Value;
use std::sync::OnceLock;

fn json(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

fn smollm2() -> &'static PretrainedCausalLm {
    static P: OnceLock<PretrainedCausalLm> = OnceLock::new();
    P.get_or_init(|| {
        let path = ferroformer::assets::ensure("smollm2-135m-instruct")
            .unwrap()
            .join("SmolLM2-135M-Instruct.Q4_1.gguf");
        PretrainedCausalLm::from_gguf(&path, &candle_core::Device::Cpu, false).unwrap()
    })
}

fn storycloze() -> &'static Task {
    static T: OnceLock<Task> = OnceLock::new();
    T.get_or_init(|| Task::load("storycloze").unwrap())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Zero-shot: the same contexts, token splits, log-likelihoods (within 1e-3) and per-document
/// acc/acc_norm as lm-eval on the first 50 test stories.
#[test]
fn zero_shot_storycloze_matches_lm_eval() {
    let f = json("fewshot/storycloze_0shot.json");
    let task = storycloze();
    let p = smollm2();
    let m = Prompted::new(p).unwrap();
    let cfg = FewshotConfig {
        shots: 0,
        seed: 1234,
        limit: Some(50),
    };
    let (report, docs) = few_shot::evaluate(&m, task, &cfg, &mut |_| {}).unwrap();
    let want = f["docs"].as_array().unwrap();
    assert_eq!(docs.len(), want.len());
    let mut worst = 0f64;
    for (got, w) in docs.iter().zip(want) {
        let i = got.doc;
        let context = task.context(i, &[]).unwrap();
        assert_eq!(context, w["context"].as_str().unwrap(), "doc {i} context");
        let choices = task.choices(&task.test_docs()[i]).unwrap();
        for (j, c) in choices.iter().enumerate() {
            assert_eq!(c, w["choices"][j].as_str().unwrap());
            let (ctx, cont) = encode_pair(&m, &context, &format!(" {c}")).unwrap();
            assert_eq!(ctx, ids(&w["context_ids"]), "doc {i} context ids");
            assert_eq!(
                cont,
                ids(&w["continuation_ids"][j]),
                "doc {i} choice {j} ids"
            );
        }
        assert_eq!(got.target, Some(w["target"].as_u64().unwrap() as usize));
        for (j, ll) in got.logliks.iter().enumerate() {
            let want_ll = w["loglikelihoods"][j].as_f64().unwrap();
            worst = worst.max((ll - want_ll).abs());
            assert!(
                (ll - want_ll).abs() < 1e-3,
                "doc {i} choice {j}: {ll} vs {want_ll}"
            );
            assert_eq!(got.is_greedy[j], w["is_greedy"][j].as_bool().unwrap());
        }
        assert_eq!(got.correct, w["acc"].as_f64().unwrap(), "doc {i} acc");
        assert_eq!(got.correct_norm, w["acc_norm"].as_f64(), "doc {i} acc_norm");
    }
    assert_eq!(report.acc, f["acc"].as_f64());
    assert_eq!(report.acc_norm, f["acc_norm"].as_f64());
    eprintln!("largest log-likelihood difference from lm-eval: {worst:.2e}");
}

/// lm-eval's `_encode_pair` on awkward boundaries (trailing whitespace moved, a token spanning
/// the join, empty context, non-ASCII) and the log-likelihoods it then gets.
#[test]
fn token_splits_and_scores_match_lm_eval_cases() {
    let f = json("fewshot/storycloze_0shot.json");
    let m = Prompted::new(smollm2()).unwrap();
    for case in f["encode_pair_cases"].as_array().unwrap() {
        let (c, k) = (
            case["context"].as_str().unwrap(),
            case["continuation"].as_str().unwrap(),
        );
        let (ctx, cont) = encode_pair(&m, c, k).unwrap();
        if c == "Question: 2+2=\n\n" {
            // transformers' GGUF converter drops SmolLM2's digit pre-tokenizer
            // (`tokenizer.ggml.pre = "smollm"`, see tests/llama.rs), so its "\n\n" before a
            // digit splits in two; SmolLM2's own tokenizer.json and llama.cpp keep "\n\n" (1116),
            // as we do. The split rule itself is what lm-eval's is.
            assert_eq!(ids(&case["continuation_ids"]), [198, 198, 36]);
            assert_eq!(cont, [1116, 36]);
            continue;
        }
        assert_eq!(ctx, ids(&case["context_ids"]), "{c:?} + {k:?}");
        assert_eq!(cont, ids(&case["continuation_ids"]), "{c:?} + {k:?}");
        let (s, _) = few_shot::score_continuations(m.model, &ctx, &[cont]).unwrap();
        let want = case["loglikelihood"].as_f64().unwrap();
        assert!(
            (s[0].loglik - want).abs() < 1e-3,
            "{c:?}: {} vs {want}",
            s[0].loglik
        );
        assert_eq!(s[0].is_greedy, case["is_greedy"].as_bool().unwrap());
    }
    // A continuation that merges into the context's last token adds nothing: a clear error.
    let e = encode_pair(&m, "Hello wor", "ld").unwrap_err().to_string();
    assert!(e.contains("adds no tokens"), "{e}");
}

/// k-shot prompts: the exemplars lm-eval draws with its default seed (one random.Random(1234)
/// across documents in order) and the exact context strings, for 2 and 5 shots; and the
/// k+1-draw rule when exemplars come from the evaluated split.
#[test]
fn few_shot_prompts_match_lm_eval() {
    let f = json("fewshot/storycloze_fewshot_prompts.json");
    let task = storycloze();
    for run in f["runs"].as_array().unwrap() {
        let k = run["num_fewshot"].as_u64().unwrap() as usize;
        let mut rng = PyRandom::new(1234);
        for d in run["docs"].as_array().unwrap() {
            let i = d["doc_id"].as_u64().unwrap() as usize;
            let ex = task.exemplars(i, k, &mut rng).unwrap();
            assert_eq!(ex, usizes(&d["exemplar_val_indices"]), "{k}-shot doc {i}");
            assert_eq!(
                task.context(i, &ex).unwrap(),
                d["context"].as_str().unwrap(),
                "{k}-shot doc {i}"
            );
        }
    }
    // The pinned 2-shot prompt of the first test story, written out.
    let two = task.context(0, &[1593, 902]).unwrap();
    assert!(two.starts_with("Matt suspected his wife Ginny was having an affair. He began to sneakily read her emails. He found some emails that were from another man. Reading them, he saw that his suspicions were true. Matt was very angry.\n\nLilly made cranberry sauce for Thanksgiving."), "{two}");
    assert!(two.ends_with(" The cranberry sauce was very sour.\n\nMy friends all love to go to the club to dance. They think it's a lot of fun and always invite. I finally decided to tag along last Saturday. I danced terribly and broke a friend's toe."), "{two}");

    let same = &f["fewshot_split_equals_test_split"];
    let dir = tempfile::tempdir().unwrap();
    let toml = include_str!("../tasks/storycloze.toml")
        .replace("fewshot_split = \"validation\"", "fewshot_split = \"test\"");
    let t = Task::parse(&toml, &dir.path().join("same.toml"), dir.path()).unwrap();
    let mut rng = PyRandom::new(1234);
    for d in same["docs"].as_array().unwrap() {
        let i = d["doc_id"].as_u64().unwrap() as usize;
        let ex = t.exemplars(i, 2, &mut rng).unwrap();
        assert_eq!(ex, usizes(&d["exemplar_test_indices"]), "doc {i}");
        assert_eq!(t.context(i, &ex).unwrap(), d["context"].as_str().unwrap());
    }
}

/// Prototype predictions equal numpy's and k-NN predictions scikit-learn's
/// (KNeighborsClassifier, cosine, brute) on the fixture's MiniLM embeddings and support sets,
/// apart from the listed near ties (decision margins under 1e-4).
#[test]
fn prototypes_and_knn_match_numpy_and_sklearn() {
    let f = json("fewshot/polarity_prototypes.json");
    let t = safetensors::SafeTensors::deserialize(
        &std::fs::read(fixture("fewshot/polarity_embed.safetensors")).unwrap(),
    )
    .unwrap()
    .tensor("embeddings")
    .unwrap()
    .data()
    .chunks(4)
    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    .collect::<Vec<f32>>();
    let emb: Vec<Vec<f32>> = t.chunks(384).map(<[f32]>::to_vec).collect();
    let labels = usizes(&f["labels"]);
    assert_eq!((emb.len(), labels.len()), (200, 200));
    let mut compared = 0;
    for s in f["support_sets"].as_array().unwrap() {
        let support = usizes(&s["support"]);
        let query = usizes(&s["query"]);
        let check = |what: &str, got: Vec<usize>, want: &Value, ties: &Value| -> usize {
            let want = usizes(want);
            let ties = usizes(ties);
            let mut n = 0;
            for ((q, g), w) in query.iter().zip(&got).zip(&want) {
                if !ties.contains(q) {
                    assert_eq!(g, w, "{what}: query {q} (support {support:?})");
                    n += 1;
                }
            }
            n
        };
        let proto = &s["prototype"];
        compared += check(
            "prototype",
            prototype_predict(&emb, &labels, 2, &support, &query),
            &proto["pred"],
            &proto["near_tie_queries"],
        );
        for n in [1usize, 3] {
            let k = &s["knn"][n.to_string()];
            compared += check(
                &format!("{n}-NN"),
                knn_predict(&emb, &labels, 2, &support, &query, n),
                &k["pred"],
                &k["near_tie_queries"],
            );
        }
    }
    assert!(compared > 5000, "{compared}");
}

/// A generation task of our own (JSON lines, 2 exemplars from the evaluated split): the
/// answer is greedy decoding cut at the first stop string, whitespace-trimmed, and matched
/// exactly; the generated text equals plain greedy generation from the same prompt.
#[test]
fn generate_until_cuts_at_the_stop_string_and_matches_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        ("France", "Paris"),
        ("Germany", "Berlin"),
        ("Italy", "Rome"),
        ("Spain", "Madrid"),
        ("Japan", "Tokyo"),
        ("Egypt", "Cairo"),
    ];
    let data: String = rows
        .iter()
        .map(|(c, k)| format!("{}\n", serde_json::json!({"country": c, "capital": k})))
        .collect();
    std::fs::write(dir.path().join("capitals.jsonl"), data).unwrap();
    let toml = r#"
output_type = "generate_until"
doc_to_text = "Q: What is the capital of {{country}}?\nA:"
doc_to_target = "{{capital}}"
test_split = "all"
[generation]
max_gen_toks = 12
[splits]
all = "capitals.jsonl"
"#;
    let path = dir.path().join("capitals.toml");
    std::fs::write(&path, toml).unwrap();
    let task = Task::load(path.to_str().unwrap()).unwrap();
    assert_eq!(task.name, "capitals");
    let p = smollm2();
    let m = Prompted::new(p).unwrap();
    let cfg = FewshotConfig {
        shots: 2,
        seed: 1234,
        limit: None,
    };
    let (report, docs) = few_shot::evaluate(&m, &task, &cfg, &mut |_| {}).unwrap();
    let mut rng = PyRandom::new(1234);
    for d in &docs {
        let ex = task.exemplars(d.doc, 2, &mut rng).unwrap();
        assert_eq!(d.exemplars, ex);
        let prompt = task.context(d.doc, &ex).unwrap();
        assert!(prompt.ends_with(&format!("capital of {}?\nA:", rows[d.doc].0)));
        let greedy = ferroformer::infer::generate::SamplingConfig {
            max_tokens: 12,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        };
        let ids = p.tokenizer.encode(&prompt).unwrap();
        let out = ferroformer::infer::generate::generate_ids(
            &p.model,
            &ids,
            &greedy,
            &m.stop_tokens,
            &mut |_| Ok(true),
        )
        .unwrap();
        let text = p.tokenizer.decode_with(&out, true).unwrap();
        let cut = text.split("\n\n").next().unwrap();
        assert_eq!(d.generated.as_deref(), Some(cut), "doc {}", d.doc);
        assert_eq!(d.correct, f64::from(u8::from(cut.trim() == rows[d.doc].1)));
    }
    let em = report.exact_match.unwrap();
    assert!(
        em >= 0.5,
        "SmolLM2 should name most of these capitals: {docs:?}"
    );
    assert!(report.acc.is_none());
}

/// `eval choices` runs a chat prompt once and shares its cache among the replies: the same
/// log-likelihoods as running every prompt + reply row whole.
#[test]
fn chat_choices_with_a_shared_prompt_equal_whole_rows() {
    use ferroformer::eval::choices::{choice_logliks, choice_rows, rows_logliks, ChoiceRecord};
    let p = smollm2();
    let template = p.chat().unwrap();
    let record: ChoiceRecord = serde_json::from_value(serde_json::json!({
        "messages": [{"role": "user", "content": "Is this review positive or negative? \"A tedious, joyless film.\""}],
        "choices": ["negative", "positive", "It is negative."],
        "answer": 0
    }))
    .unwrap();
    let shared = choice_logliks(&p.model, &p.tokenizer, &template, &record).unwrap();
    let rows = choice_rows(&p.tokenizer, &template, &record).unwrap();
    // The replies do share the prompt's tokens (so the shared path ran).
    let first =
        |r: &ferroformer::objective::sft::Tokenized| r.trained.iter().position(|&t| t).unwrap();
    let s = first(&rows[0]);
    assert!(rows
        .iter()
        .all(|r| first(r) == s && r.ids[..s] == rows[0].ids[..s]));
    let whole = rows_logliks(&p.model, &rows).unwrap();
    for (a, b) in shared.iter().zip(&whole) {
        assert!(
            (a - b).abs() < 1e-3 * b.abs().max(1.0),
            "{shared:?} vs {whole:?}"
        );
    }
}
