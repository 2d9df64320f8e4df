//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::Tensor;
use std::path::PathBuf;

/// Path of a file under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Largest violation of `|a - b| <= rtol * |b| + atol` over all elements, as
/// `(max_abs_diff, worst_ratio)`; the check passes when `worst_ratio <= 1`.
pub fn compare(a: &Tensor, b: &Tensor, rtol: f64, atol: f64) -> (f64, f64) {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let mut max_abs = 0f64;
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(&b) {
        let d = (*x as f64 - *y as f64).abs();
        max_abs = max_abs.max(d);
        worst = worst.max(d / (rtol * (*y as f64).abs() + atol));
    }
    (max_abs, worst)
}

/// The largest absolute value of a tensor (the scale for absolute tolerances).
pub fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

/// Asserts `a` equals `b` within `rtol` relative (plus a tiny absolute floor for zeros).
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, rtol: f64, atol: f64) {
    let (max_abs, worst) = compare(a, b, rtol, atol);
    assert!(
        worst <= 1.0,
        "{what}: max |diff| {max_abs:e} exceeds rtol {rtol:e} / atol {atol:e} (worst ratio {worst:.3})"
    );
}

/// A deterministic small English-like corpus (`n` sentences) for training tests.
pub fn small_corpus(n: usize) -> String {
    let subjects = [
        "the king",
        "a fool",
        "my lord",
        "the queen",
        "sweet love",
        "this night",
        "our fate",
    ];
    let verbs = [
        "speaks of",
        "dreams of",
        "fears",
        "loves",
        "forgets",
        "remembers",
        "waits for",
    ];
    let objects = [
        "the crown",
        "a rose",
        "the sea",
        "his sword",
        "the stars",
        "her name",
        "the dawn",
    ];
    let mut s = String::new();
    let mut x: u64 = 12345;
    for i in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let a = (x >> 33) as usize;
        s.push_str(&format!(
            "{} {} {}{}",
            subjects[a % 7],
            verbs[(a / 7) % 7],
            objects[(a / 49) % 7],
            if i % 3 == 2 { ".\n" } else { ", " }
        ));
    }
    s
}

/// A recipe for a tiny GPT on `corpus`, writing to `out`.
pub fn tiny_recipe(corpus: &std::path::Path, out: &std::path::Path, steps: usize) -> String {
    format!(
        r#"name = "tiny"
[data]
corpus = [{corpus:?}]
tokenizer = "char"
val_fraction = 0.1
[model]
n_layer = 2
n_head = 2
n_embd = 32
dropout = 0.1
[train]
out_dir = {out:?}
steps = {steps}
batch_size = 4
context = 16
grad_accum = 2
lr = 3e-3
min_lr = 3e-4
warmup_steps = 2
decay_steps = 40
eval_interval = 4
eval_iters = 2
log_interval = 1
checkpoint_interval = 4
keep_checkpoints = 2
seed = 7
"#
    )
}

/// Writes `dir/cmudict.dict`: 800 random words over "abcdefgh" with a letter-to-sound rule
/// (a -> AA1, c -> K, ...), every tenth with a second pronunciation (`word(2)`).
pub fn letter_sound_lexicon(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let sounds = [
        ("a", "AA1"),
        ("b", "B"),
        ("c", "K"),
        ("d", "D"),
        ("e", "EH1"),
        ("f", "F"),
        ("g", "G"),
        ("h", "HH"),
    ];
    let mut text = String::new();
    let mut x: u64 = 99;
    for i in 0..800 {
        let mut word = String::new();
        let mut pron = vec![];
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = 3 + (x >> 60) as usize % 4;
        for k in 0..len {
            let (l, p) = sounds[((x >> (8 * k + 3)) % 8) as usize];
            word.push_str(l);
            pron.push(p);
        }
        text.push_str(&format!("{word} {}\n", pron.join(" ")));
        if i % 10 == 0 {
            text.push_str(&format!("{word}(2) {} S\n", pron.join(" ")));
        }
    }
    std::fs::write(dir.join("cmudict.dict"), text).unwrap();
}

/// A recipe for a tiny encoder-decoder on a lexicon folder, writing to `out`.
pub fn tiny_seq2seq_recipe(lex: &std::path::Path, out: &std::path::Path, steps: usize) -> String {
    format!(
        r#"name = "tiny-g2p"
objective = "seq2seq"
[data]
corpus = [{lex:?}]
val_fraction = 0.1
test_fraction = 0.1
[model]
architecture = "marian"
n_layer = 2
n_head = 4
n_embd = 64
n_positions = 16
activation_function = "relu"
dropout = 0.0
[train]
out_dir = {out:?}
steps = {steps}
batch_size = 16
context = 16
lr = 2e-3
min_lr = 2e-4
warmup_steps = 30
decay_steps = 400
label_smoothing = 0.1
eval_interval = 100
eval_iters = 4
log_interval = 1
"#
    )
}

/// The binary, on 2 threads.
pub fn ff() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("ferroformer").unwrap();
    c.args(["--threads", "2"]);
    c
}

/// Runs a command that must succeed; its stdout.
pub fn stdout_of(c: &mut assert_cmd::Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with exit code 1 and a message containing every `needles`.
pub fn fails_with(c: &mut assert_cmd::Command, needles: &[&str]) {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1, got {:?}: {err}",
        out.status
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// llama-tiny (weights from the fixture) with a character tokenizer of [`small_corpus`] (its
/// vocabulary fits the model's 96 ids), as `dir/base`.
pub fn llama_tiny_base(dir: &std::path::Path) -> PathBuf {
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixture("llama-tiny").join(f), base.join(f)).unwrap();
    }
    let corpus = small_corpus(400);
    let tok = ferroformer::text::tokenizer::Tokenizer::train_char([corpus.as_str()]).unwrap();
    assert!(tok.vocab_size() <= 96);
    tok.save(&base.join("tokenizer.json")).unwrap();
    base
}

/// A recipe for a tiny BERT trained with whole-word masked LM on a WordPiece vocabulary of
/// `corpus` (dropout 0.1), writing to `out`.
pub fn tiny_bert_mlm_recipe(
    corpus: &std::path::Path,
    out: &std::path::Path,
    steps: usize,
) -> String {
    format!(
        r#"name = "tiny-bert"
objective = "mlm"
[data]
corpus = [{corpus:?}]
tokenizer = "wordpiece"
vocab_size = 120
val_fraction = 0.1
[model]
architecture = "bert"
n_layer = 2
n_head = 2
n_embd = 32
dropout = 0.1
[mlm]
whole_word = true
[train]
out_dir = {out:?}
steps = {steps}
batch_size = 8
context = 24
grad_accum = 2
lr = 3e-3
min_lr = 3e-4
warmup_steps = 5
decay_steps = 400
eval_interval = 100
eval_iters = 4
log_interval = 1
"#
    )
}

/// Class folders `bottom`, `left`, `top` under `dir`, 30 noisy 8x8 grey images each, bright in
/// that half.
pub fn grey_shapes(dir: &std::path::Path) {
    let mut rng = ferroformer::rng::Rng::new(5);
    for (c, name) in ["bottom", "left", "top"].iter().enumerate() {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        for i in 0..30 {
            let img = image::GrayImage::from_fn(8, 8, |x, y| {
                let lit = match c {
                    0 => y >= 4,
                    1 => x < 4,
                    _ => y < 4,
                };
                let base = if lit { 190.0 } else { 50.0 };
                image::Luma([(base + 60.0 * (rng.uniform() - 0.5)) as u8])
            });
            img.save(dir.join(format!("{name}/{i}.png"))).unwrap();
        }
    }
}

/// A recipe for a tiny ViT classifying the images of [`grey_shapes`] in `data`, writing to
/// `out`.
pub fn tiny_vit_recipe(data: &std::path::Path, out: &std::path::Path, steps: usize) -> String {
    format!(
        r#"
name = "vit-tiny"
objective = "classify"
[data]
corpus = ["{data}"]
val_fraction = 0.2
[augment]
crop_padding = 1
[model]
architecture = "vit"
patch_size = 4
n_layer = 2
n_head = 2
n_embd = 16
intermediate_size = 32
[train]
out_dir = "{out}"
steps = {steps}
decay_steps = 300
batch_size = 16
lr = 3e-3
min_lr = 1e-4
warmup_steps = 20
eval_interval = 150
log_interval = 1
seed = 3
"#,
        data = data.display(),
        out = out.display()
    )
}
