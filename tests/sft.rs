//! Instruction tuning: packed rows compute exactly what the examples do alone (loss and every
//! gradient, Llama with rotary positions and GPT-2 with learned ones, fused and plain paths),
//! and tokenisation with response-only labels against TRL's SFT pipeline.

mod common;
use candle_core::Device;
use common::{assert_close, fixture};
use ferroformer::models;
use ferroformer::objective::sft::{self, SftBatch, Tokenized};
use ferroformer::rng::Rng;

/// Random examples: ids below `vocab`, lengths 2..=max_len, about half the tokens trained.
fn examples(n: usize, vocab: u64, max_len: u64, seed: u64) -> Vec<Tokenized> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let len = 2 + rng.below(max_len - 1) as usize;
            let ids = (0..len).map(|_| rng.below(vocab) as u32).collect();
            let mut trained: Vec<bool> = (0..len).map(|_| rng.below(2) == 1).collect();
            trained[len - 1] = true;
            Tokenized { ids, trained }
        })
        .collect()
}

#[test]
fn packed_rows_equal_unpacked_examples() {
    let dev = Device::Cpu;
    for (dir, vocab, context) in [("llama-tiny", 96u64, 64usize), ("gpt2-tiny", 96, 32)] {
        let (model, store) = models::load_dir(&fixture(dir), &dev).unwrap();
        let exs = examples(9, vocab, context as u64 / 2, 7);
        let lengths: Vec<usize> = exs.iter().map(|e| e.ids.len()).collect();
        let bins = sft::pack_bfd(&lengths, context);
        assert!(
            bins.len() < exs.len(),
            "{dir}: something was packed together"
        );
        let packed_rows: Vec<Vec<&Tokenized>> = bins
            .iter()
            .map(|b| b.iter().map(|&i| &exs[i]).collect())
            .collect();
        let single_rows: Vec<Vec<&Tokenized>> = exs.iter().map(|e| vec![e]).collect();
        let packed = SftBatch::new(&packed_rows, true, context, 0, &dev).unwrap();
        let single = SftBatch::new(&single_rows, false, context, 0, &dev).unwrap();
        assert_eq!(packed.count(), single.count());
        for plain in [false, true] {
            ferroformer::nn::kernels::set_plain(plain);
            for train in [false, true] {
                let lp = sft::loss(&model, &packed, None, train).unwrap();
                let ls = sft::loss(&model, &single, None, train).unwrap();
                let (a, b) = (
                    lp.to_scalar::<f32>().unwrap(),
                    ls.to_scalar::<f32>().unwrap(),
                );
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs(),
                    "{dir} plain {plain} train {train}: packed {a} vs one per row {b}"
                );
                if !train {
                    continue;
                }
                let (gp, gs) = (lp.backward().unwrap(), ls.backward().unwrap());
                for (name, var) in store.vars() {
                    let want = gs.get(var.as_tensor()).unwrap();
                    assert_close(
                        &format!("{dir} plain {plain} grad {name}"),
                        gp.get(var.as_tensor()).unwrap(),
                        want,
                        1e-4,
                        1e-5 * common::max_abs(want),
                    );
                }
            }
        }
        ferroformer::nn::kernels::set_plain(false);
    }
}

fn trl_fixture() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("sft/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn messages(v: &serde_json::Value) -> Vec<ferroformer::text::chat::Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            ferroformer::text::chat::Message::new(
                m["role"].as_str().unwrap(),
                m["content"].as_str().unwrap(),
            )
        })
        .collect()
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// Token ids and labels (-100 where not trained) against TRL 1.16's SFTTrainer on the real
/// SmolLM2 tokenizer and chat template (fixture sft/, make_sft_fixtures.py): a system turn, two
/// assistant turns, the template's inserted default system prompt, contents that start with
/// whitespace (tokens straddling the turn header), and a prompt-completion pair; with the loss
/// on responses only and on everything.
#[test]
fn tokens_and_labels_match_trl() {
    use ferroformer::data::instruct::Example;
    let want = trl_fixture();
    let path = ferroformer::assets::ensure("smollm2-135m-instruct")
        .unwrap()
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let p =
        ferroformer::infer::pretrained::PretrainedCausalLm::from_gguf(&path, &Device::Cpu, true)
            .unwrap();
    let template = p.chat().unwrap();
    assert_eq!(template.source, want["chat_template"].as_str().unwrap());
    assert_eq!(template.eos_token.as_deref(), want["eos_token"].as_str());
    let mut cases: Vec<(String, Example, &serde_json::Value)> = want["conversational"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), Example::Chat(messages(&v["messages"])), v))
        .collect();
    for (k, v) in want["prompt_completion"].as_object().unwrap() {
        let ex = Example::ChatCompletion {
            prompt: messages(&v["prompt"]),
            completion: messages(&v["completion"]),
        };
        cases.push((k.clone(), ex, v));
    }
    assert_eq!(cases.len(), 6);
    for (name, ex, v) in &cases {
        let (text, _) = sft::render_example(ex, Some(&template), false, None).unwrap();
        assert_eq!(text, v["text"].as_str().unwrap(), "{name}: rendered text");
        for (all, key) in [(false, "labels"), (true, "labels_full")] {
            let t = sft::tokenize(ex, Some(&template), &p.tokenizer, all, None).unwrap();
            let got_ids: Vec<i64> = t.ids.iter().map(|&i| i as i64).collect();
            assert_eq!(got_ids, ids(&v["input_ids"]), "{name}: ids");
            let labels: Vec<i64> = t
                .ids
                .iter()
                .zip(&t.trained)
                .map(|(&i, &tr)| if tr { i as i64 } else { -100 })
                .collect();
            assert_eq!(labels, ids(&v[key]), "{name}: {key}");
        }
    }
}

/// Best-fit-decreasing packing against TRL's `pack_dataset(strategy="bfd")`: which examples
/// share a row and in what order, with ties, over-long and empty sequences.
#[test]
fn packing_matches_trl_bfd() {
    let want = trl_fixture();
    for case in ["random_12", "ties_overflow_bfd", "equal_space_fifo"] {
        let c = &want["packing"][case];
        let lengths: Vec<usize> = ids(&c["input_lengths"])
            .iter()
            .map(|&n| n as usize)
            .collect();
        let cap = c["seq_length"].as_u64().unwrap() as usize;
        let got = sft::pack_bfd(&lengths, cap);
        let expected: Vec<Vec<usize>> = c["assignment_by_input_index"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| ids(b).iter().map(|&i| i as usize).collect())
            .collect();
        assert_eq!(got, expected, "{case}");
    }
}

/// Examples longer than the context: truncated (counted) or dropped (counted), and an example
/// left with nothing to train after truncation is dropped.
#[test]
fn overflow_policy_counts() {
    use ferroformer::data::instruct::Example;
    use ferroformer::text::chat::{ChatTemplate, Message};
    let tok =
        ferroformer::text::tokenizer::Tokenizer::train_char(["abcdefghijklmnopqrstuvwxyz<>|_ \n"])
            .unwrap();
    let t = ChatTemplate::new(sft::builtin_template("chatml").unwrap(), None, None).unwrap();
    let chat = |q: &str, a: &str| {
        Example::Chat(vec![Message::new("user", q), Message::new("assistant", a)])
    };
    let exs = vec![
        chat("ab", "cd"),
        chat(&"a".repeat(60), "b"),
        chat("a", &"b".repeat(60)),
    ];
    // Each renders to 61 template characters plus its text (one token per character).
    let ctx = 100;
    let (kept, r) =
        sft::tokenize_all(&exs, Some(&t), &tok, false, ctx, sft::Overflow::Truncate).unwrap();
    // The second loses its answer to truncation (dropped); the third is cut but keeps some.
    assert_eq!(
        (r.examples, r.truncated, r.dropped, kept.len()),
        (3, 2, 1, 2)
    );
    assert!(kept.iter().all(|k| k.ids.len() <= ctx));
    let (kept, r) =
        sft::tokenize_all(&exs, Some(&t), &tok, false, ctx, sft::Overflow::Drop).unwrap();
    assert_eq!((r.truncated, r.dropped, kept.len()), (0, 2, 1));
}
