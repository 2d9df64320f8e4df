//! Every fused CPU kernel against the plain composition it replaces: values and gradients, on
//! odd shapes (1, 7, 129) and non-contiguous inputs. (The composition itself is tested against
//! PyTorch in gpt2_parity.rs, which also runs through these kernels.)

mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::assert_close;
use ferroformer::nn::kernels::glu::{glu, glu_plain, GluAct};
use ferroformer::nn::kernels::{cross_entropy, gelu, layer_norm, softmax};
use ferroformer::nn::LayerNorm;
use ferroformer::rng::Rng;

fn randn(dims: &[usize], scale: f64, seed: u64) -> Tensor {
    let mut r = Rng::new(seed);
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (r.normal() * scale) as f32).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// Value and input gradient of `f(x)` under a random linear read-out.
fn value_and_grad(x: &Tensor, f: &dyn Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
    let v = Var::from_tensor(x).unwrap();
    let y = f(v.as_tensor());
    let w = randn(y.dims(), 1.0, 99);
    let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    (
        y,
        g.get(v.as_tensor())
            .expect("gradient reaches the input")
            .clone(),
    )
}

fn check(
    what: &str,
    x: &Tensor,
    fused: &dyn Fn(&Tensor) -> Tensor,
    plain: &dyn Fn(&Tensor) -> Tensor,
    atol: f64,
) {
    let (yf, gf) = value_and_grad(x, fused);
    let (yp, gp) = value_and_grad(x, plain);
    assert_close(&format!("{what} value"), &yf, &yp, 1e-5, atol);
    assert_close(&format!("{what} gradient"), &gf, &gp, 1e-4, atol);
}

/// Parameter gradients of the fused and plain forwards under one random read-out must agree.
fn check_param_grads(
    what: &str,
    fused: &dyn Fn() -> Tensor,
    plain: &dyn Fn() -> Tensor,
    params: &[(&str, &Var)],
) {
    let grads = |f: &dyn Fn() -> Tensor| {
        let y = f();
        let g = (&y * randn(y.dims(), 1.0, 3))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        params
            .iter()
            .map(|(_, v)| g.get(v.as_tensor()).expect("parameter gradient").clone())
            .collect::<Vec<_>>()
    };
    let (gf, gp) = (grads(fused), grads(plain));
    for (((name, _), a), b) in params.iter().zip(&gf).zip(&gp) {
        assert_close(&format!("{what} d{name}"), a, b, 1e-4, 1e-5);
    }
}

const SHAPES: [&[usize]; 5] = [&[1, 1], &[7, 7], &[3, 129], &[129, 5], &[2, 3, 7, 64]];

#[test]
fn gelu_both_forms() {
    for (i, dims) in SHAPES.iter().enumerate() {
        let x = randn(dims, 2.0, i as u64);
        for exact in [false, true] {
            check(
                &format!("gelu exact={exact} {dims:?}"),
                &x,
                &|x| gelu::gelu(x, exact).unwrap(),
                &|x| gelu::gelu_plain(x, exact).unwrap(),
                // erf by a polynomial (abs. error < 5e-7) and tanh via exp (abs. error ~1e-7),
                // amplified up to ~10x in the derivative for |x| <= 6.
                5e-6,
            );
        }
    }
    // Non-contiguous input.
    let x = randn(&[9, 5], 1.5, 7).t().unwrap();
    check(
        "gelu transposed",
        &x,
        &|x| gelu::gelu(x, false).unwrap(),
        &|x| gelu::gelu_plain(x, false).unwrap(),
        5e-6,
    );
}

/// SwiGLU and both GeGLU forms: the value and the gradients of the gate and the up
/// projection, on odd shapes and a non-contiguous gate (a half of a fused gate_up output).
#[test]
fn gated_units_match_composition() {
    for act in [GluAct::Silu, GluAct::GeluTanh, GluAct::GeluErf] {
        for dims in SHAPES {
            let g = Var::from_tensor(&randn(dims, 2.0, 11)).unwrap();
            let u = Var::from_tensor(&randn(dims, 1.0, 12)).unwrap();
            check_param_grads(
                &format!("glu {act:?} {dims:?}"),
                &|| glu(g.as_tensor(), u.as_tensor(), act).unwrap(),
                &|| glu_plain(g.as_tensor(), u.as_tensor(), act).unwrap(),
                &[("g", &g), ("u", &u)],
            );
            assert_close(
                &format!("glu {act:?} {dims:?} value"),
                &glu(g.as_tensor(), u.as_tensor(), act).unwrap(),
                &glu_plain(g.as_tensor(), u.as_tensor(), act).unwrap(),
                1e-5,
                1e-6,
            );
        }
        let gu = Var::from_tensor(&randn(&[5, 2 * 33], 2.0, 13)).unwrap();
        let half = |i: usize| gu.as_tensor().narrow(1, 33 * i, 33).unwrap();
        check_param_grads(
            &format!("glu {act:?} of a fused gate_up"),
            &|| glu(&half(0), &half(1), act).unwrap(),
            &|| glu_plain(&half(0), &half(1), act).unwrap(),
            &[("gate_up", &gu)],
        );
    }
}

#[test]
fn layer_norm_with_weight_and_bias() {
    for (i, dims) in SHAPES.iter().enumerate() {
        let c = *dims.last().unwrap();
        let x = (randn(dims, 3.0, i as u64) + 1.5).unwrap();
        let ln = LayerNorm {
            weight: randn(&[c], 1.0, 50),
            bias: Some(randn(&[c], 1.0, 51)),
            eps: 1e-5,
        };
        if c == 1 {
            continue; // variance of one element is 0: both give the bias, gradients degenerate.
        }
        check(
            &format!("layer norm {dims:?}"),
            &x,
            &|x| ln.forward(x).unwrap(),
            &|x| ln.forward_plain(x).unwrap(),
            1e-5,
        );
        // Weight and bias gradients too.
        let w = Var::from_tensor(&ln.weight).unwrap();
        let b = Var::from_tensor(ln.bias.as_ref().unwrap()).unwrap();
        let l = LayerNorm {
            weight: w.as_tensor().clone(),
            bias: Some(b.as_tensor().clone()),
            eps: 1e-5,
        };
        check_param_grads(
            &format!("layer norm {dims:?}"),
            &|| l.forward(&x).unwrap(),
            &|| l.forward_plain(&x).unwrap(),
            &[("w", &w), ("b", &b)],
        );
    }
    assert!(layer_norm::layer_norm(
        &randn(&[2, 4], 1.0, 0),
        &randn(&[4], 1.0, 1),
        &randn(&[4], 1.0, 2),
        1e-5
    )
    .unwrap()
    .is_some());
}

#[test]
fn attention_softmax_scaled_causal_and_cached() {
    // (t, s, offset): full causal square, cached decoding rows (offset > 0), one query.
    for (i, (t, s, off)) in [
        (1usize, 1usize, 0usize),
        (7, 7, 0),
        (5, 12, 7),
        (1, 129, 128),
        (33, 33, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let x = randn(&[2, 3, t, s], 2.0, i as u64);
        for causal in [Some(off), None] {
            check(
                &format!("softmax t={t} s={s} causal={causal:?}"),
                &x,
                &|x| softmax::attn_softmax(x, 0.37, causal).unwrap(),
                &|x| softmax::attn_softmax_plain(x, 0.37, causal).unwrap(),
                1e-6,
            );
        }
    }
}

#[test]
fn cross_entropy_rows() {
    for (i, (n, v)) in [(1usize, 1usize), (1, 7), (7, 129), (129, 3), (16, 8192)]
        .into_iter()
        .enumerate()
    {
        let x = randn(&[n, v], 3.0, i as u64);
        let mut r = Rng::new(i as u64);
        let t: Vec<u32> = (0..n).map(|_| r.below(v as u64) as u32).collect();
        let t = Tensor::from_vec(t, n, &Device::Cpu).unwrap();
        check(
            &format!("cross entropy {n}x{v}"),
            &x,
            &|x| cross_entropy::nll_rows(x, &t).unwrap(),
            &|x| cross_entropy::nll_rows_plain(x, &t).unwrap(),
            1e-6,
        );
    }
    // Out-of-range targets are an error, not a wrong answer.
    let x = randn(&[2, 5], 1.0, 0);
    let t = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap();
    let e = cross_entropy::nll_rows(&x, &t).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let _ = DType::F32;
}

#[test]
fn linear_both_orientations_with_all_gradients() {
    use ferroformer::nn::Linear;
    for (i, (n, d_in, d_out)) in [
        (1usize, 1usize, 1usize),
        (7, 7, 3),
        (129, 5, 33),
        (16, 64, 192),
    ]
    .into_iter()
    .enumerate()
    {
        for in_out in [true, false] {
            let x = randn(&[n, d_in], 1.0, i as u64);
            let wd: &[usize] = if in_out {
                &[d_in, d_out]
            } else {
                &[d_out, d_in]
            };
            let w = Var::from_tensor(&randn(wd, 0.5, 10 + i as u64)).unwrap();
            let b = Var::from_tensor(&randn(&[d_out], 0.5, 20 + i as u64)).unwrap();
            let lin = Linear::plain(w.as_tensor().clone(), Some(b.as_tensor().clone()), in_out);
            let what = format!("linear {n}x{d_in}->{d_out} in_out={in_out}");
            check(
                &what,
                &x,
                &|x| lin.forward(x).unwrap(),
                &|x| lin.forward_plain(x).unwrap(),
                1e-5,
            );
            check_param_grads(
                &what,
                &|| lin.forward(&x).unwrap(),
                &|| lin.forward_plain(&x).unwrap(),
                &[("W", &w), ("b", &b)],
            );
        }
    }
    // Without a bias (the tied output projection).
    for in_out in [true, false] {
        let x = randn(&[33, 24], 1.0, 8);
        let w = randn(if in_out { &[24, 100] } else { &[100, 24] }, 0.5, 9);
        let lin = Linear::plain(w, None, in_out);
        check(
            &format!("matmul in_out={in_out}"),
            &x,
            &|x| lin.forward(x).unwrap(),
            &|x| lin.forward_plain(x).unwrap(),
            1e-5,
        );
    }
    // 3-D input keeps its leading shape.
    let x = randn(&[2, 3, 4], 1.0, 1);
    let lin = Linear::plain(randn(&[4, 6], 1.0, 2), Some(randn(&[6], 1.0, 3)), true);
    assert_eq!(lin.forward(&x).unwrap().dims(), &[2, 3, 6]);
}

#[test]
fn blocked_causal_attention_matches_composition() {
    use ferroformer::nn::kernels::attention::causal_attention;
    use ferroformer::nn::{CausalSelfAttention, Dropout, Linear};
    let c = 48;
    let dummy =
        |d_in: usize, d_out: usize| Linear::plain(randn(&[d_in, d_out], 0.1, 1), None, true);
    for (i, (b, t, heads)) in [
        (1usize, 1usize, 1usize),
        (2, 7, 4),
        (1, 64, 3),
        (2, 150, 4),
        (1, 129, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let attn = CausalSelfAttention {
            qkv: dummy(c, 3 * c),
            proj: dummy(c, c),
            n_head: heads,
            attn_dropout: Dropout::new(0.0).unwrap(),
            resid_dropout: Dropout::new(0.0).unwrap(),
            prefix: None,
        };
        let qkv = randn(&[b, t, 3 * c], 1.5, i as u64);
        check(
            &format!("attention b={b} t={t} heads={heads}"),
            &qkv,
            &|x| causal_attention(x, heads, heads, None).unwrap().unwrap(),
            &|x| attn.attend(x, None, None, None).unwrap(),
            1e-5,
        );
        // Packed examples (lengths cycling 1, 5, 13, ..., the row's rest padding): the kernel's
        // per-query key ranges against the composed path's additive mask.
        let lens = [1usize, 5, 13, 70, 2];
        let rows: Vec<Vec<usize>> = (0..b)
            .map(|r| {
                let mut row = vec![];
                let mut used = 0;
                for k in 0.. {
                    let n = lens[(r + k) % lens.len()];
                    if used + n > t {
                        break;
                    }
                    row.push(n);
                    used += n;
                }
                row
            })
            .collect();
        let segs = ferroformer::nn::Segments::from_lengths(&rows, t).unwrap();
        check(
            &format!("packed attention b={b} t={t} heads={heads} {rows:?}"),
            &qkv,
            &|x| {
                causal_attention(x, heads, heads, Some(&segs))
                    .unwrap()
                    .unwrap()
            },
            &|x| attn.attend(x, None, Some(&segs), None).unwrap(),
            1e-5,
        );
    }
}

/// Grouped-query attention (query heads sharing key/value heads, read in place) against the
/// composition over separate q, k, v heads: values and the gradient of the packed input
/// (the key/value gradients summed over their query heads), whole rows and packed examples.
#[test]
fn grouped_query_causal_attention_matches_composition() {
    use ferroformer::nn::attention::causal_attention_in;
    use ferroformer::nn::kernels::attention::causal_attention;
    use ferroformer::nn::{Dropout, Segments};
    let d = 8;
    for (i, (b, t, h, kvh)) in [
        (1usize, 1usize, 2usize, 1usize),
        (2, 70, 6, 2),
        (1, 129, 9, 3),
        (2, 33, 4, 4),
    ]
    .into_iter()
    .enumerate()
    {
        let qkv = randn(&[b, t, (h + 2 * kvh) * d], 1.5, 40 + i as u64);
        let plain = |x: &Tensor, segs: Option<&Segments>| {
            let heads = |from: usize, n: usize| {
                x.narrow(2, from * d, n * d)
                    .unwrap()
                    .reshape((b, t, n, d))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let (q, k, v) = (heads(0, h), heads(h, kvh), heads(h + kvh, kvh));
            causal_attention_in(&q, &k, &v, 0, segs, &Dropout::default(), None)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, t, h * d))
                .unwrap()
        };
        check(
            &format!("grouped attention b={b} t={t} h={h} kvh={kvh}"),
            &qkv,
            &|x| causal_attention(x, h, kvh, None).unwrap().unwrap(),
            &|x| plain(x, None),
            1e-5,
        );
        let rows: Vec<Vec<usize>> = (0..b).map(|r| vec![(t / 3).max(1) + r, t / 2]).collect();
        let rows: Vec<Vec<usize>> = rows
            .into_iter()
            .map(|r| {
                let mut used = 0;
                r.into_iter()
                    .filter(|&n| {
                        used += n;
                        n > 0 && used <= t
                    })
                    .collect()
            })
            .collect();
        let segs = Segments::from_lengths(&rows, t).unwrap();
        check(
            &format!("packed grouped attention b={b} t={t} h={h} kvh={kvh} {rows:?}"),
            &qkv,
            &|x| causal_attention(x, h, kvh, Some(&segs)).unwrap().unwrap(),
            &|x| plain(x, Some(&segs)),
            1e-5,
        );
    }
}

#[test]
fn fused_head_cross_entropy_matches_matmul_then_loss() {
    use ferroformer::nn::kernels::cross_entropy::head_cross_entropy;
    // n spans several 256-row chunks and a partial one.
    for (i, (n, c, v)) in [(1usize, 4usize, 3usize), (7, 16, 129), (600, 24, 50)]
        .into_iter()
        .enumerate()
    {
        let h = Var::from_tensor(&randn(&[n, c], 1.0, i as u64)).unwrap();
        let w = Var::from_tensor(&randn(&[v, c], 0.5, 10 + i as u64)).unwrap();
        let mut r = Rng::new(i as u64);
        let t = Tensor::from_vec(
            (0..n).map(|_| r.below(v as u64) as u32).collect::<Vec<_>>(),
            n,
            &Device::Cpu,
        )
        .unwrap();
        let run = |fused: bool| {
            let loss = if fused {
                head_cross_entropy(h.as_tensor(), w.as_tensor(), &t)
                    .unwrap()
                    .unwrap()
            } else {
                let logits = h.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
                cross_entropy::nll_rows_plain(&logits, &t)
                    .unwrap()
                    .mean_all()
                    .unwrap()
            };
            // A non-unit upstream gradient, as gradient accumulation gives.
            let g = (&loss * 0.37).unwrap().backward().unwrap();
            (
                loss,
                g.get(h.as_tensor()).unwrap().clone(),
                g.get(w.as_tensor()).unwrap().clone(),
            )
        };
        let (lf, hf, wf) = run(true);
        let (lp, hp, wp) = run(false);
        let what = format!("head cross-entropy n={n} c={c} v={v}");
        assert_close(
            &format!("{what} loss"),
            &lf.reshape(1).unwrap(),
            &lp.reshape(1).unwrap(),
            1e-5,
            0.0,
        );
        assert_close(&format!("{what} dh"), &hf, &hp, 1e-4, 1e-7);
        assert_close(&format!("{what} dW"), &wf, &wp, 1e-4, 1e-7);
    }
}

#[test]
fn rms_norm_with_weight() {
    use ferroformer::nn::RmsNorm;
    for (i, dims) in SHAPES.iter().enumerate() {
        let c = *dims.last().unwrap();
        let x = randn(dims, 2.0, i as u64);
        let w = Var::from_tensor(&randn(&[c], 1.0, 60)).unwrap();
        let norm = RmsNorm {
            weight: w.as_tensor().clone(),
            eps: 1e-6,
            unit_offset: false,
        };
        check(
            &format!("rms norm {dims:?}"),
            &x,
            &|x| norm.forward(x).unwrap(),
            &|x| norm.forward_plain(x).unwrap(),
            1e-5,
        );
        check_param_grads(
            &format!("rms norm {dims:?}"),
            &|| norm.forward(&x).unwrap(),
            &|| norm.forward_plain(&x).unwrap(),
            &[("w", &w)],
        );
    }
}

#[test]
fn norms_match_pytorch_on_both_paths() {
    use ferroformer::nn::{LayerNorm, RmsNorm};
    let r = ferroformer::io::safetensors::load(&common::fixture("norms.safetensors"), &Device::Cpu)
        .unwrap();
    let x = Var::from_tensor(&r["x"]).unwrap();
    let rw = Var::from_tensor(&r["rms.weight"]).unwrap();
    let (lw, lb) = (
        Var::from_tensor(&r["ln.weight"]).unwrap(),
        Var::from_tensor(&r["ln.bias"]).unwrap(),
    );
    let rms = RmsNorm {
        weight: rw.as_tensor().clone(),
        eps: 1e-6,
        unit_offset: false,
    };
    let ln = LayerNorm {
        weight: lw.as_tensor().clone(),
        bias: Some(lb.as_tensor().clone()),
        eps: 1e-5,
    };
    // (name, forward on the chosen path, parameters and their fixture keys)
    type Forward<'a> = Box<dyn Fn(bool) -> Tensor + 'a>;
    type Case<'a> = (&'a str, Forward<'a>, Vec<(&'a Var, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "rms",
            Box::new(|fused| {
                if fused {
                    rms.forward(x.as_tensor())
                } else {
                    rms.forward_plain(x.as_tensor())
                }
                .unwrap()
            }),
            vec![(&rw, "dweight")],
        ),
        (
            "ln",
            Box::new(|fused| {
                if fused {
                    ln.forward(x.as_tensor())
                } else {
                    ln.forward_plain(x.as_tensor())
                }
                .unwrap()
            }),
            vec![(&lw, "dweight"), (&lb, "dbias")],
        ),
    ];
    for (name, forward, params) in &cases {
        for fused in [true, false] {
            let what = format!("{name} fused={fused}");
            let y = forward(fused);
            assert_close(
                &format!("{what} y"),
                &y,
                &r[&format!("{name}.y")],
                1e-5,
                1e-6,
            );
            let g = (&y * &r["up"])
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert_close(
                &format!("{what} dx"),
                g.get(x.as_tensor()).unwrap(),
                &r[&format!("{name}.dx")],
                1e-4,
                1e-5,
            );
            for (var, key) in params {
                let want = &r[&format!("{name}.{key}")];
                assert_close(
                    &format!("{what} {key}"),
                    g.get(var.as_tensor()).unwrap(),
                    want,
                    1e-4,
                    1e-5,
                );
            }
        }
    }
}

/// LoRA's fused update (with and without dropout, whose mask it regenerates in backward)
/// equals the composition: value, input gradient, A, B and base-output gradients.
#[test]
fn fused_lora_matches_composition() {
    use ferroformer::nn::kernels::lora::{dropout_mask, lora_add};
    let (n, d_in, d_out, r) = (37, 48, 20, 4);
    for dropout in [None, Some((0.3, 11u64))] {
        let a = Var::from_tensor(&randn(&[r, d_in], 0.3, 1)).unwrap();
        let b = Var::from_tensor(&randn(&[d_out, r], 0.3, 2)).unwrap();
        let yb = Var::from_tensor(&randn(&[n, d_out], 1.0, 3)).unwrap();
        let x = randn(&[n, d_in], 1.0, 4);
        let s = 2.5;
        let fused = |x: &Tensor| {
            lora_add(yb.as_tensor(), x, a.as_tensor(), b.as_tensor(), s, dropout)
                .unwrap()
                .unwrap()
        };
        let plain = |x: &Tensor| {
            let xd = match dropout {
                Some((p, seed)) => {
                    let m = dropout_mask(p, seed, n * d_in);
                    (x * Tensor::from_vec(m, (n, d_in), &Device::Cpu).unwrap()).unwrap()
                }
                None => x.clone(),
            };
            let h = xd.matmul(&a.as_tensor().t().unwrap()).unwrap();
            let l = (h.matmul(&b.as_tensor().t().unwrap()).unwrap() * s).unwrap();
            (yb.as_tensor() + l).unwrap()
        };
        let what = format!("lora dropout={dropout:?}");
        check(&what, &x, &fused, &plain, 1e-5);
        check_param_grads(
            &what,
            &|| fused(&x),
            &|| plain(&x),
            &[("A", &a), ("B", &b), ("y_base", &yb)],
        );
    }
}

/// One query per row over its own cache (strided views, different lengths), with grouped
/// heads, a soft cap and a sliding window, against the plain composition; head sizes of 24
/// (the portable loops) and 80 (AVX-512 where the CPU has it: 64 values, then 16).
#[test]
fn decode_attention_reads_caches_in_place_like_the_composition() {
    use ferroformer::nn::kernels::decode_attention::DecodeAttention;
    use ferroformer::nn::KvCache;
    let (h, kvh) = (6, 2);
    let lens = [1usize, 7, 70];
    for (softcap, window, d) in [
        (None, None, 24),
        (Some(5.0f32), Some(5usize), 24),
        (None, None, 80),
        (Some(5.0f32), Some(5usize), 80),
    ] {
        let mut kv = Vec::new();
        let q = randn(&[lens.len(), h, 1, d], 1.0, 1);
        for (r, &n) in lens.iter().enumerate() {
            let mut cache = KvCache::default();
            // Appended in two steps, so the views are strided within a larger buffer.
            let k = randn(&[1, kvh, n, d], 1.0, 10 + r as u64);
            let v = randn(&[1, kvh, n, d], 1.0, 20 + r as u64);
            let cut = n / 2;
            if cut > 0 {
                cache
                    .append(
                        &k.narrow(2, 0, cut).unwrap().contiguous().unwrap(),
                        &v.narrow(2, 0, cut).unwrap().contiguous().unwrap(),
                    )
                    .unwrap();
            }
            let views = cache
                .append(
                    &k.narrow(2, cut, n - cut).unwrap().contiguous().unwrap(),
                    &v.narrow(2, cut, n - cut).unwrap().contiguous().unwrap(),
                )
                .unwrap();
            assert!(!views.0.is_contiguous() || n == 0);
            kv.push((views, (k, v)));
        }
        let scale = 0.3f32;
        let op = DecodeAttention {
            kv: kv.iter().map(|(views, _)| views.clone()).collect(),
            n_head: h,
            scale,
            softcap,
            window,
        };
        let fused = q.apply_op1(op.clone()).unwrap();
        // A row alone (too few tasks to share out by key/value head: one per query head)
        // gives its row of the batch to the bit.
        let last = lens.len() - 1;
        let alone = DecodeAttention {
            kv: vec![op.kv[last].clone()],
            ..op
        };
        let want = fused.narrow(0, last, 1).unwrap().flatten_all().unwrap();
        let got = q.narrow(0, last, 1).unwrap().apply_op1(alone).unwrap();
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.to_vec1::<f32>().unwrap()
        );
        for (r, (_, (k, v))) in kv.iter().enumerate() {
            let n = lens[r];
            let first = window.map_or(0, |w| n.saturating_sub(w));
            let (k, v) = (
                k.narrow(2, first, n - first).unwrap(),
                v.narrow(2, first, n - first).unwrap(),
            );
            let qr = q
                .narrow(0, r, 1)
                .unwrap()
                .reshape((kvh, h / kvh, d))
                .unwrap();
            let k = k.squeeze(0).unwrap();
            let mut s = (qr.matmul(&k.t().unwrap()).unwrap() * scale as f64).unwrap();
            if let Some(c) = softcap {
                s = ((s / c as f64).unwrap().tanh().unwrap() * c as f64).unwrap();
            }
            let p = candle_nn::ops::softmax(&s, 2).unwrap();
            let want = p
                .matmul(&v.squeeze(0).unwrap())
                .unwrap()
                .reshape((1, h, 1, d))
                .unwrap();
            assert_close(
                &format!("row {r} (cap {softcap:?}, window {window:?}, head size {d})"),
                &fused.narrow(0, r, 1).unwrap(),
                &want,
                1e-5,
                1e-6,
            );
        }
    }
}
