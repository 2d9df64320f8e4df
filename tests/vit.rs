//! The Vision Transformer against transformers' `ViTForImageClassification` (fixtures vit-tiny,
//! RGB 32x32 with 8x8 patches, and vit-tiny-gray, grey 28x28 with 7x7 patches, made by
//! tests/fixtures/make_vit_fixtures.py): preprocessing of real PNGs, patch embeddings,
//! every layer's states and attention, logits, interpolated positions; the patch embedding
//! against an explicit cut-and-project; save and reload.

mod common;
use candle_core::{Device, Tensor};
use common::{assert_close, fixture};
use ferroformer::data::images::Preprocessor;
use ferroformer::infer::classify::load_image;
use ferroformer::io::safetensors;
use ferroformer::models::vit::{self, Vit};
use std::collections::BTreeMap;

fn load(dir: &str) -> (Vit, Preprocessor, BTreeMap<String, Tensor>) {
    let dev = Device::Cpu;
    let (model, _) = vit::load_dir(&fixture(dir), &dev).unwrap();
    let pre = Preprocessor::load(
        &fixture(&format!("{dir}/preprocessor_config.json")),
        model.config.num_channels,
    )
    .unwrap();
    let e = safetensors::load(&fixture(&format!("{dir}/expected.safetensors")), &dev).unwrap();
    (model, pre, e)
}

/// Every intermediate of `name`'s forward pass from transformers' own pixel values.
fn check_forward(model: &Vit, e: &BTreeMap<String, Tensor>, name: &str) {
    let x = &e[&format!("{name}.pixel_values_fast")];
    let k = |s: &str| e[&format!("{name}.{s}")].clone();
    assert_close(
        "patch embeddings",
        &model.patch_embeddings(x).unwrap(),
        &k("patch_embeddings"),
        1e-4,
        1e-5,
    );
    let emb = model.embed(x, false, None).unwrap();
    assert_close("embeddings", &emb, &k("embeddings"), 1e-4, 1e-5);
    let mut h = emb;
    let attentions = model.attentions(x, false).unwrap();
    for (i, layer) in model.layers.iter().enumerate() {
        assert_close("hidden", &h, &k(&format!("hidden_states.{i}")), 1e-4, 1e-5);
        assert_close(
            "attention",
            &attentions[i],
            &k(&format!("attentions.{i}")),
            1e-4,
            1e-6,
        );
        h = layer.forward(&h, None, None).unwrap();
    }
    let n = model.layers.len();
    assert_close(
        "last layer",
        &h,
        &k(&format!("hidden_states.{n}")),
        1e-4,
        1e-5,
    );
    let last = model.forward(x, false, None).unwrap();
    assert_close(
        "last_hidden_state",
        &last,
        &k("last_hidden_state"),
        1e-4,
        1e-5,
    );
    let logits = model.logits(&last).unwrap();
    assert_close("logits", &logits, &k("logits"), 1e-4, 1e-5);
}

/// From the PNG file: our preprocessing equals the PIL processor's pixel values (PIL's
/// resize reproduced exactly), and the logits its.
fn check_png(model: &Vit, pre: &Preprocessor, e: &BTreeMap<String, Tensor>, dir: &str, name: &str) {
    let x = load_image(model, pre, &fixture(&format!("{dir}/{name}.png"))).unwrap();
    assert_close(
        "pixel values (PIL)",
        &x,
        &e[&format!("{name}.pixel_values_slow")],
        0.0,
        1e-6,
    );
    let logits = model
        .logits(&model.forward(&x, false, None).unwrap())
        .unwrap();
    assert_close(
        "logits from the PNG",
        &logits,
        &e[&format!("{name}.logits_slow")],
        1e-4,
        1e-5,
    );
}

#[test]
fn tiny_vit_matches_transformers() {
    let (model, pre, e) = load("vit-tiny");
    assert_eq!(model.config.labels().unwrap()[2], "bird");
    for plain in [false, true] {
        ferroformer::nn::kernels::set_plain(plain);
        check_forward(&model, &e, "rgb");
        check_forward(&model, &e, "gray");
    }
    ferroformer::nn::kernels::set_plain(false);
    // A 45x37 RGB PNG shrunk to 32x32 (antialiased), and a grey 20x24 PNG enlarged and
    // repeated into three channels (as PIL's convert("RGB")).
    check_png(&model, &pre, &e, "vit-tiny", "rgb");
    check_png(&model, &pre, &e, "vit-tiny", "gray");
}

#[test]
fn tiny_grey_vit_matches_transformers() {
    let (model, pre, e) = load("vit-tiny-gray");
    check_forward(&model, &e, "gray28");
    check_forward(&model, &e, "gray20");
    check_png(&model, &pre, &e, "vit-tiny-gray", "gray28");
    check_png(&model, &pre, &e, "vit-tiny-gray", "gray20");
}

/// Other image sizes: the position table resized bicubically as transformers'
/// `interpolate_pos_encoding` does; without interpolation, a clear error.
#[test]
fn interpolated_positions_match_transformers() {
    for dir in ["vit-tiny", "vit-tiny-gray"] {
        let (model, _, e) = load(dir);
        let x = &e["interp.pixel_values"];
        let (_, _, h, w) = x.dims4().unwrap();
        let p = model.config.patch_size;
        let pos = model.positions(h / p, w / p, true).unwrap();
        assert_close("interpolated positions", &pos, &e["interp.pos"], 1e-5, 1e-6);
        let last = model.forward(x, true, None).unwrap();
        assert_close("hidden", &last, &e["interp.last_hidden_state"], 1e-4, 1e-5);
        let logits = model.logits(&last).unwrap();
        assert_close("logits", &logits, &e["interp.logits"], 1e-4, 1e-5);
        let err = model.forward(x, false, None).unwrap_err().to_string();
        assert!(err.contains("interpolate"), "{err}");
    }
}

/// The patch embedding (a reshape and one matmul) against the convolution written out:
/// `out[patch][d] = bias[d] + sum_{c,i,j} W[d,c,i,j] * x[c, gy*P + i, gx*P + j]`.
#[test]
fn patch_embedding_is_cut_into_patches_and_projected() {
    let (model, _, e) = load("vit-tiny");
    // Not a multiple of the patch size: the convolution drops the last rows and columns.
    let x = e["interp.pixel_values"].narrow(3, 0, 37).unwrap();
    let got = model.patch_embeddings(&x).unwrap();
    let (_, c, h, w) = x.dims4().unwrap();
    let p = model.config.patch_size;
    let d = model.config.hidden_size;
    let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let wv: Vec<f32> = model.patch_weight.flatten_all().unwrap().to_vec1().unwrap();
    let bv: Vec<f32> = model.patch_bias.to_vec1().unwrap();
    let (gh, gw) = (h / p, w / p);
    let mut want = vec![0f32; gh * gw * d];
    for gy in 0..gh {
        for gx in 0..gw {
            for o in 0..d {
                let mut s = bv[o] as f64;
                for ch in 0..c {
                    for i in 0..p {
                        for j in 0..p {
                            let wi = ((o * c + ch) * p + i) * p + j;
                            let xi = (ch * h + gy * p + i) * w + gx * p + j;
                            s += wv[wi] as f64 * xv[xi] as f64;
                        }
                    }
                }
                want[(gy * gw + gx) * d + o] = s as f32;
            }
        }
    }
    let want = Tensor::from_vec(want, (1, gh * gw, d), &Device::Cpu).unwrap();
    assert_close("patch embedding", &got, &want, 1e-5, 1e-6);
}

#[test]
fn saves_and_reloads_and_rejects_mismatches() {
    let (model, pre, e) = load("vit-tiny");
    let (_, store) = vit::load_dir(&fixture("vit-tiny"), &Device::Cpu).unwrap();
    let d = tempfile::tempdir().unwrap();
    vit::save_dir(d.path(), &model, &store).unwrap();
    pre.save(&d.path().join("preprocessor_config.json"))
        .unwrap();
    let (again, _) = vit::load_dir(d.path(), &Device::Cpu).unwrap();
    let x = &e["rgb.pixel_values_fast"];
    let a = model
        .logits(&model.forward(x, false, None).unwrap())
        .unwrap();
    let b = again
        .logits(&again.forward(x, false, None).unwrap())
        .unwrap();
    // Same weights; parallel reductions may split differently between runs (seen once under
    // load: 7e-7), so equal to f32 rounding rather than bit for bit.
    assert_close("reloaded", &a, &b, 1e-6, 1e-6);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architectures"][0], "ViTForImageClassification");
    assert_eq!(cfg["id2label"]["4"], "frog");

    // A config that does not match the weights names both files.
    let mut c = cfg.clone();
    c["intermediate_size"] = serde_json::json!(48);
    std::fs::write(d.path().join("config.json"), c.to_string()).unwrap();
    let err = vit::load_dir(d.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("intermediate"),
        "{err}"
    );
    // A preprocessor whose statistics do not fit the channels.
    std::fs::write(
        d.path().join("preprocessor_config.json"),
        r#"{"size": {"height": 32, "width": 32}, "image_mean": [0.5, 0.5], "image_std": [0.5, 0.5]}"#,
    )
    .unwrap();
    let err = Preprocessor::load(&d.path().join("preprocessor_config.json"), 3)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("preprocessor_config.json") && err.contains("image_mean"),
        "{err}"
    );
    // An image of the wrong kind.
    let png = d.path().join("bad.png");
    std::fs::write(&png, b"not a png").unwrap();
    let err = load_image(&model, &pre, &png).unwrap_err().to_string();
    assert!(err.contains("bad.png"), "{err}");
}
