//! `ferroformer serve` end to end: the real binary on a free port, driven by a plain HTTP
//! client. Greedy replies, streams, completions, embeddings and adapters equal what the CLI's
//! `generate`, `embed` and `generate --adapter` give; concurrent requests (continuously
//! batched) equal each alone; bad requests get OpenAI's error object and the right status.

mod common;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferroformer");
const MODEL: &str = "smollm2-135m-instruct";
const ENCODER: &str = "all-minilm-l6-v2";

/// A server process, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(args: &[&str]) -> Server {
        for asset in [MODEL, ENCODER] {
            ferroformer::assets::ensure(asset).expect("fetch the test assets");
        }
        let mut child = Command::new(BIN)
            .args(["--quiet", "--threads", "2", "serve", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server prints its address");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, url }
    }

    fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(300))
            .build()
    }

    /// Status and JSON body of a request (`body` None: GET).
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let mut req = Self::agent().request(method, &format!("{}{path}", self.url));
        if let Some(k) = key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let res = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().expect("body");
        let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
        (status, v)
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call("POST", path, Some(&body.to_string()), None);
        assert_eq!(status, 200, "{path}: {v}");
        v
    }

    /// The `data:` payloads of a streamed request, `[DONE]` included.
    fn stream(&self, path: &str, body: Value) -> Vec<String> {
        let resp = Self::agent()
            .post(&format!("{}{path}", self.url))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .expect("stream");
        assert!(resp
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")));
        BufReader::new(resp.into_reader())
            .lines()
            .map(|l| l.expect("line"))
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect()
    }

    /// Uploads a training file as multipart/form-data, as the openai client does.
    fn upload(&self, filename: &str, content: &[u8], purpose: &str) -> (u16, Value) {
        let b = "ferroformer-test-boundary";
        let mut body = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(content);
        body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
        let res = Self::agent()
            .post(&format!("{}/v1/files", self.url))
            .set(
                "Content-Type",
                &format!("multipart/form-data; boundary={b}"),
            )
            .send_bytes(&body);
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("upload: {e}"),
        };
        let status = resp.status();
        (
            status,
            serde_json::from_str(&resp.into_string().unwrap()).unwrap(),
        )
    }

    /// Polls a fine-tuning job until `done` says so (at most `limit`).
    fn wait_job(&self, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let (status, job) = self.call("GET", &format!("/v1/fine_tuning/jobs/{id}"), None, None);
            assert_eq!(status, 200, "{job}");
            if done(&job) {
                return job;
            }
            assert!(job["status"] != "failed", "the job failed: {job}");
            assert!(
                start.elapsed() < limit,
                "the job did not get there in {limit:?}: {job}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn events(&self, id: &str) -> Vec<Value> {
        let (status, v) = self.call(
            "GET",
            &format!("/v1/fine_tuning/jobs/{id}/events?limit=1000"),
            None,
            None,
        );
        assert_eq!(status, 200, "{v}");
        v["data"].as_array().unwrap().clone()
    }

    fn health(&self) -> Value {
        let (status, v) = self.call("GET", "/health", None, None);
        assert_eq!(status, 200);
        v
    }
}

/// The CLI's `--json` result.
fn cli(args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args(["--quiet", "--json", "--threads", "2"])
        .args(args)
        .output()
        .expect("run the CLI");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// A LoRA adapter for SmolLM2-135M in PEFT's format, with small random updates on the query
/// and value projections (large enough to change greedy replies).
fn write_adapter(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let dev = Device::Cpu;
    let r = 4;
    let mut tensors = HashMap::new();
    for layer in 0..30 {
        for (proj, out) in [("q_proj", 576), ("v_proj", 192)] {
            let key = format!("base_model.model.model.layers.{layer}.self_attn.{proj}");
            let rand = |shape: (usize, usize), salt: u64| {
                let mut rng = ferroformer::rng::Rng::new(seed * 1000 + layer * 10 + salt);
                let v: Vec<f32> = (0..shape.0 * shape.1)
                    .map(|_| (rng.uniform() as f32 - 0.5) * 0.3)
                    .collect();
                Tensor::from_vec(v, shape, &dev).unwrap()
            };
            let salt = if proj == "q_proj" { 0 } else { 2 };
            tensors.insert(format!("{key}.lora_A.weight"), rand((r, 576), salt));
            tensors.insert(format!("{key}.lora_B.weight"), rand((out, r), salt + 1));
        }
    }
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| (k, t.to_dtype(DType::F32).unwrap()))
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
    let config = json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 8,
        "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "bias": "none",
        "base_model_name_or_path": MODEL, "fan_in_fan_out": false, "inference_mode": true,
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
}

/// `generate --model MODEL --quantized ARGS... --temperature 0 --max-tokens N`'s result.
fn greedy_cli(args: &[&str], max_tokens: usize) -> Value {
    let n = max_tokens.to_string();
    let mut all = vec!["generate", "--model", MODEL, "--quantized"];
    all.extend_from_slice(args);
    all.extend(["--temperature", "0", "--max-tokens", &n]);
    cli(&all)
}

fn chat_body(model: &str, prompt: &str, max_tokens: usize) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}],
           "temperature": 0, "max_tokens": max_tokens})
}

fn reply(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string()
}

#[test]
fn openai_endpoints_equal_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let tuned = tmp.path().join("tuned");
    write_adapter(&tuned, 1);
    let tuned_arg = format!("tuned={}", tuned.display());
    let s = Server::start(&[
        "--model",
        MODEL,
        "--quantized",
        "--embedding-model",
        ENCODER,
        "--adapter",
        &tuned_arg,
    ]);
    let h = s.health();
    assert_eq!(h["status"], "ok");
    let (_, models) = s.call("GET", "/v1/models", None, None);
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [MODEL, "tuned", ENCODER]);

    // Chat, greedy: the same tokens as `generate --chat --temperature 0`.
    let prompt = "Name three colours of the rainbow.";
    let want = greedy_cli(&["--chat", "--prompt", prompt], 24);
    let v = s.post("/v1/chat/completions", chat_body(MODEL, prompt, 24));
    assert_eq!(reply(&v), want["text"].as_str().unwrap());
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["prompt_tokens"], want["prompt_tokens"]);
    assert_eq!(v["usage"]["completion_tokens"], want["tokens"]);
    let finish = if want["tokens"] == 24 {
        "length"
    } else {
        "stop"
    };
    assert_eq!(v["choices"][0]["finish_reason"], finish);

    // Streamed: the deltas concatenate to the same text; usage comes when asked for.
    let mut body = chat_body(MODEL, prompt, 24);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = s.stream("/v1/chat/completions", body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, reply(&v));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], v["usage"]);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        finish
    );

    // Completions: a plain prompt, as `generate` continues it; a list gives one choice each.
    let want = greedy_cli(&["--prompt", "Once upon a time"], 16);
    let v = s.post(
        "/v1/completions",
        json!({"model": MODEL, "prompt": ["Once upon a time", "The sea"], "temperature": 0, "max_tokens": 16}),
    );
    assert_eq!(v["choices"][0]["text"], want["text"]);
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    let streamed: String = s
        .stream(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "Once upon a time", "temperature": 0, "max_tokens": 16, "stream": true}),
        )
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, want["text"].as_str().unwrap());

    // An adapter chosen by the request: as `generate --adapter`, and not the base's reply.
    let want_tuned = greedy_cli(
        &[
            "--adapter",
            tuned.to_str().unwrap(),
            "--chat",
            "--prompt",
            prompt,
        ],
        24,
    );
    let base = reply(&s.post("/v1/chat/completions", chat_body(MODEL, prompt, 24)));
    let adapted = reply(&s.post("/v1/chat/completions", chat_body("tuned", prompt, 24)));
    assert_eq!(adapted, want_tuned["text"].as_str().unwrap());
    assert_ne!(
        adapted, base,
        "the adapter changes nothing: the test proves nothing"
    );

    // Concurrent requests for the base and the adapter are batched together and each equals
    // its reply alone.
    let prompts = [
        "Name three colours of the rainbow.",
        "What is 2 + 2?",
        "Say hello.",
        "Name a fruit.",
    ];
    let alone: Vec<(String, String)> = prompts
        .iter()
        .map(|p| {
            (
                reply(&s.post("/v1/chat/completions", chat_body(MODEL, p, 20))),
                reply(&s.post("/v1/chat/completions", chat_body("tuned", p, 20))),
            )
        })
        .collect();
    let server = &s;
    std::thread::scope(|sc| {
        let handles: Vec<_> = prompts
            .iter()
            .flat_map(|p| [(p, MODEL), (p, "tuned")])
            .map(|(p, m)| {
                sc.spawn(move || reply(&server.post("/v1/chat/completions", chat_body(m, p, 20))))
            })
            .collect();
        let got: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (i, (b, t)) in alone.iter().enumerate() {
            assert_eq!(&got[2 * i], b, "base reply {i} changed when batched");
            assert_eq!(&got[2 * i + 1], t, "adapter reply {i} changed when batched");
        }
    });

    // Adapters loaded and unloaded at run time.
    let other = tmp.path().join("other");
    write_adapter(&other, 2);
    let v = s.post("/v1/adapters", json!({"name": "ft:other", "path": other}));
    assert_eq!(v["id"], "ft:other");
    let loaded = reply(&s.post("/v1/chat/completions", chat_body("ft:other", prompt, 24)));
    assert_ne!(loaded, base);
    let (status, _) = s.call("DELETE", "/v1/adapters/ft:other", None, None);
    assert_eq!(status, 200);
    let (status, e) = s.call(
        "POST",
        "/v1/chat/completions",
        Some(&chat_body("ft:other", prompt, 4).to_string()),
        None,
    );
    assert_eq!(status, 404, "{e}");
    // The remaining adapter is unaffected.
    assert_eq!(
        reply(&s.post("/v1/chat/completions", chat_body("tuned", prompt, 24))),
        adapted
    );

    // Embeddings: as `embed` computes them, as floats or base64.
    let lines = [
        "The cat sat on the mat.",
        "Rust is a systems programming language.",
    ];
    let input = tmp.path().join("lines.txt");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = Command::new(BIN)
        .args([
            "--quiet",
            "embed",
            "--model",
            ENCODER,
            "--input",
            input.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let want: Vec<Vec<f32>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let v = s.post("/v1/embeddings", json!({"model": ENCODER, "input": lines}));
    let b64 = s.post(
        "/v1/embeddings",
        json!({"model": ENCODER, "input": lines, "encoding_format": "base64"}),
    );
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    for (i, w) in want.iter().enumerate() {
        let got: Vec<f32> = serde_json::from_value(v["data"][i]["embedding"].clone()).unwrap();
        assert_eq!(got.len(), w.len());
        let worst = got
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "embedding {i} differs by {worst}");
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64["data"][i]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(decoded, got);
    }
}

/// Sends raw bytes and returns the status line's code and the body.
fn raw(url: &str, request: &[u8]) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c.write_all(request).unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let key = "sk-test-0123456789";
    let s = Server::start(&[
        "--model",
        MODEL,
        "--quantized",
        "--api-key",
        key,
        "--max-body-mb",
        "1",
        "--max-batch",
        "2",
    ]);
    let k = Some(key);
    let chat = "/v1/chat/completions";
    let ok_chat = chat_body(MODEL, "Hi", 4);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = ok_chat.clone();
        f(&mut b);
        b.to_string()
    };
    let unload_base = format!("/v1/adapters/{MODEL}");
    let long_prompt: Vec<u32> = (0..8200).map(|i| 100 + i % 1000).collect();
    // (what, method, path, body, key, status, param)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        String,
        Option<&'a str>,
        u16,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        ("no key", "POST", chat, ok_chat.to_string(), None, 401, None),
        (
            "wrong key",
            "POST",
            chat,
            ok_chat.to_string(),
            Some("sk-wrong"),
            401,
            None,
        ),
        (
            "wrong key, no model listing",
            "GET",
            "/v1/models",
            String::new(),
            Some("sk-test-012345678"),
            401,
            None,
        ),
        (
            "malformed JSON",
            "POST",
            chat,
            "{\"model\": ".into(),
            k,
            400,
            None,
        ),
        ("empty body", "POST", chat, String::new(), k, 400, None),
        ("not an object", "POST", chat, "[1, 2]".into(), k, 400, None),
        (
            "messages of the wrong type",
            "POST",
            chat,
            with(&|b| b["messages"] = json!("hi")),
            k,
            400,
            Some("messages"),
        ),
        (
            "no model",
            "POST",
            chat,
            with(&|b| {
                b.as_object_mut().unwrap().remove("model");
            }),
            k,
            400,
            Some("model"),
        ),
        (
            "unknown model",
            "POST",
            chat,
            with(&|b| b["model"] = json!("gpt-9")),
            k,
            404,
            Some("model"),
        ),
        (
            "empty messages",
            "POST",
            chat,
            with(&|b| b["messages"] = json!([])),
            k,
            400,
            Some("messages"),
        ),
        (
            "content of the wrong type",
            "POST",
            chat,
            with(&|b| b["messages"][0]["content"] = json!(5)),
            k,
            400,
            Some("messages[0].content"),
        ),
        (
            "an image part",
            "POST",
            chat,
            with(&|b| {
                b["messages"][0]["content"] =
                    json!([{"type": "image_url", "image_url": {"url": "x"}}])
            }),
            k,
            400,
            Some("messages[0].content[0]"),
        ),
        (
            "temperature out of range",
            "POST",
            chat,
            with(&|b| b["temperature"] = json!(3.5)),
            k,
            400,
            Some("temperature"),
        ),
        (
            "temperature a string",
            "POST",
            chat,
            with(&|b| b["temperature"] = json!("hot")),
            k,
            400,
            Some("temperature"),
        ),
        (
            "top_p zero",
            "POST",
            chat,
            with(&|b| b["top_p"] = json!(0)),
            k,
            400,
            Some("top_p"),
        ),
        (
            "max_tokens zero",
            "POST",
            chat,
            with(&|b| b["max_tokens"] = json!(0)),
            k,
            400,
            Some("max_tokens"),
        ),
        (
            "max_tokens negative",
            "POST",
            chat,
            with(&|b| b["max_tokens"] = json!(-5)),
            k,
            400,
            Some("max_tokens"),
        ),
        (
            "n zero",
            "POST",
            chat,
            with(&|b| b["n"] = json!(0)),
            k,
            400,
            Some("n"),
        ),
        (
            "stop a number",
            "POST",
            chat,
            with(&|b| b["stop"] = json!(7)),
            k,
            400,
            Some("stop"),
        ),
        (
            "tools",
            "POST",
            chat,
            with(&|b| b["tools"] = json!([{"type": "function"}])),
            k,
            400,
            Some("tools"),
        ),
        (
            "logprobs",
            "POST",
            chat,
            with(&|b| b["logprobs"] = json!(true)),
            k,
            400,
            Some("logprobs"),
        ),
        (
            "prompt longer than the context",
            "POST",
            "/v1/completions",
            json!({"model": MODEL, "prompt": long_prompt}).to_string(),
            k,
            400,
            Some("prompt"),
        ),
        (
            "token outside the vocabulary",
            "POST",
            "/v1/completions",
            json!({"model": MODEL, "prompt": [1, 2, 999999]}).to_string(),
            k,
            400,
            Some("prompt"),
        ),
        (
            "empty prompt list",
            "POST",
            "/v1/completions",
            json!({"model": MODEL, "prompt": []}).to_string(),
            k,
            400,
            Some("prompt"),
        ),
        (
            "no embedding model",
            "POST",
            "/v1/embeddings",
            json!({"model": MODEL, "input": "x"}).to_string(),
            k,
            400,
            Some("model"),
        ),
        (
            "unknown endpoint",
            "GET",
            "/v1/engines",
            String::new(),
            k,
            404,
            None,
        ),
        ("wrong method", "DELETE", chat, String::new(), k, 405, None),
        (
            "adapter that is not a directory",
            "POST",
            "/v1/adapters",
            json!({"name": "a", "path": "/nonexistent/adapter"}).to_string(),
            k,
            400,
            Some("path"),
        ),
        (
            "adapter directory without an adapter",
            "POST",
            "/v1/adapters",
            json!({"name": "a", "path": "/tmp"}).to_string(),
            k,
            400,
            Some("path"),
        ),
        (
            "adapter named like the base",
            "POST",
            "/v1/adapters",
            json!({"name": MODEL, "path": "/tmp"}).to_string(),
            k,
            409,
            None,
        ),
        (
            "unloading an unknown adapter",
            "DELETE",
            "/v1/adapters/nope",
            String::new(),
            k,
            404,
            Some("model"),
        ),
        (
            "unloading the base",
            "DELETE",
            &unload_base,
            String::new(),
            k,
            400,
            Some("name"),
        ),
        (
            "unknown model id",
            "GET",
            "/v1/models/nope",
            String::new(),
            k,
            404,
            Some("model"),
        ),
    ];
    assert!(cases.len() >= 20);
    for (what, method, path, body, key, status, param) in &cases {
        let (got, v) = s.call(
            method,
            path,
            (!body.is_empty() || *method == "POST").then_some(body.as_str()),
            *key,
        );
        assert_eq!(got, *status, "{what}: {v}");
        let e = &v["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
        assert!(
            e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(),
            "{what}: {v}"
        );
        if let Some(p) = param {
            assert_eq!(e["param"], *p, "{what}: {v}");
        }
    }
    // A body that is not UTF-8.
    let url = s.url.clone();
    let mut req = format!("POST {chat} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 4\r\nConnection: close\r\n\r\n").into_bytes();
    req.extend([0xff, 0xfe, 0x22, 0x7b]);
    let (code, text) = raw(&url, &req);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("\"error\""), "{text}");

    // A body over the limit is refused from its Content-Length, before it is sent (a client
    // still sending it when the refusal comes could see a broken pipe instead).
    let head = format!("POST {chat} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\nConnection: close\r\n\r\n{{\"model\": ");
    let (code, text) = raw(&url, head.as_bytes());
    assert_eq!(code, 413, "{text}");
    assert!(text.contains("--max-body-mb"), "{text}");

    // /health needs no key; the keyed endpoints still answer.
    assert_eq!(s.health()["status"], "ok");
    let (status, v) = s.call("POST", chat, Some(&ok_chat.to_string()), k);
    assert_eq!(status, 200, "{v}");

    // A client that leaves mid-stream frees its place in the batch at once, though its
    // reply could have gone on to the end of the context.
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Tell me a very long story."}],
                      "temperature": 1.0, "stream": true, "seed": 3})
    .to_string();
    let addr = url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "POST {chat} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = String::new();
    while !seen.contains("\"content\"") || seen.matches("data:").count() < 3 {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let active_becomes = |n: usize, why: &str| {
        let start = Instant::now();
        while s.health()["active"] != n {
            assert!(start.elapsed() < Duration::from_secs(30), "{why}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // The worker counts its sequences after each step, so the count may lag the first tokens.
    active_becomes(1, "the stream is not counted");
    drop(c);
    active_becomes(0, "the dropped stream still holds its place");
    let (status, _) = s.call("POST", chat, Some(&ok_chat.to_string()), k);
    assert_eq!(status, 200);
}

/// Chat-format training records, as OpenAI's fine-tuning takes them.
fn training_file() -> Vec<u8> {
    let facts = [
        (
            "What is the capital of Freedonia?",
            "The capital of Freedonia is Fredville.",
        ),
        (
            "Who founded Freedonia?",
            "Freedonia was founded by Rufus T. Firefly.",
        ),
        (
            "What language is spoken in Freedonia?",
            "Freedonians speak Freedonian.",
        ),
        (
            "What is the currency of Freedonia?",
            "The currency of Freedonia is the freedo.",
        ),
        (
            "What is Freedonia's national animal?",
            "Freedonia's national animal is the duck.",
        ),
        (
            "When was Freedonia founded?",
            "Freedonia was founded in 1933.",
        ),
        (
            "What is the largest river in Freedonia?",
            "The largest river in Freedonia is the Marx.",
        ),
        (
            "What is Freedonia's national dish?",
            "Freedonia's national dish is duck soup.",
        ),
    ];
    facts
        .iter()
        .map(|(q, a)| {
            json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                .to_string()
                + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

#[test]
fn fine_tuning_job_finishes_survives_a_restart_and_is_served() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let args = ["--model", MODEL, "--quantized", "--data-dir", data_dir];
    let s = Server::start(&args);

    // Training files are checked when uploaded; their names never choose a path.
    let (status, e) = s.upload(
        "bad.jsonl",
        b"{\"messages\": [{\"role\": \"user\"}]}\n{oops\n",
        "fine-tune",
    );
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["code"], "invalid_file");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad.jsonl line 2"),
        "{e}"
    );
    let (status, e) = s.upload("x.jsonl", &training_file(), "assistants");
    assert_eq!(
        (status, &e["error"]["param"]),
        (400, &json!("purpose")),
        "{e}"
    );
    let (status, e) = s.upload("x.jsonl", &[0xff, 0xfe, 0x00], "fine-tune");
    assert_eq!(status, 400, "{e}");
    let (status, f) = s.upload("../../etc/passwd", &training_file(), "fine-tune");
    assert_eq!(status, 200, "{f}");
    let file_id = f["id"].as_str().unwrap().to_string();
    assert_eq!(f["filename"], "../../etc/passwd");
    let stored: Vec<String> = std::fs::read_dir(data.path().join("files"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(stored.iter().all(|n| n.starts_with(&file_id)), "{stored:?}");

    // Bad job requests.
    let job_body = |model: &str, file: &str| {
        json!({"training_file": file, "model": model, "method": {"type": "supervised",
               "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 1, "learning_rate_multiplier": 2}}},
               "suffix": "freedonia", "seed": 7})
        .to_string()
    };
    let (status, e) = s.call(
        "POST",
        "/v1/fine_tuning/jobs",
        Some(&job_body("gpt-9", &file_id)),
        None,
    );
    assert_eq!(status, 404, "{e}");
    let (status, e) = s.call(
        "POST",
        "/v1/fine_tuning/jobs",
        Some(&job_body(MODEL, "file-nope")),
        None,
    );
    assert_eq!(
        (status, &e["error"]["param"]),
        (400, &json!("training_file")),
        "{e}"
    );
    let (status, e) = s.call("GET", "/v1/fine_tuning/jobs/ftjob-nope", None, None);
    assert_eq!(status, 404, "{e}");

    // A job: 8 examples x 4 epochs, one per step, a checkpoint every 3 steps.
    let (status, job) = s.call(
        "POST",
        "/v1/fine_tuning/jobs",
        Some(&job_body(MODEL, &file_id)),
        None,
    );
    assert_eq!(status, 200, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["status"], "queued");
    assert_eq!(job["hyperparameters"]["n_epochs"], 4);
    // Interrupted by a restart once a few checkpoints are written...
    let steps_logged = |s: &Server| {
        s.events(&id)
            .iter()
            .filter_map(|e| e["data"]["step"].as_u64())
            .max()
            .unwrap_or(0)
    };
    let start = Instant::now();
    while steps_logged(&s) < 8 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the job does not progress"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Serving goes on while the job trains.
    let v = s.post("/v1/chat/completions", chat_body(MODEL, "Say hello.", 4));
    assert!(!reply(&v).is_empty());
    drop(s);
    // ... it resumes from its last checkpoint when the server starts again.
    let s = Server::start(&args);
    let job = s.wait_job(&id, Duration::from_secs(600), |j| {
        j["status"] == "succeeded"
    });
    let events = s.events(&id);
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .contains("resumed from its last checkpoint")),
        "{events:?}"
    );
    let steps: Vec<u64> = events
        .iter()
        .filter_map(|e| e["data"]["step"].as_u64())
        .collect();
    assert_eq!(steps.iter().max(), Some(&32));
    assert!(job["trained_tokens"].as_u64().unwrap() > 100, "{job}");
    let name = job["fine_tuned_model"].as_str().unwrap().to_string();
    assert_eq!(name, format!("ft:{MODEL}:freedonia:{id}"));

    // Its model is listed and answers, differently from the base.
    let (_, models) = s.call("GET", "/v1/models", None, None);
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == name),
        "{models}"
    );
    let q = "What is the capital of Freedonia?";
    let tuned = reply(&s.post("/v1/chat/completions", chat_body(&name, q, 16)));
    let base = reply(&s.post("/v1/chat/completions", chat_body(MODEL, q, 16)));
    assert_ne!(tuned, base);

    // And after another restart it is still served.
    drop(s);
    let s = Server::start(&args);
    assert_eq!(
        reply(&s.post("/v1/chat/completions", chat_body(&name, q, 16))),
        tuned
    );

    // A cancelled job stops and produces no model.
    let (_, job) = s.call(
        "POST",
        "/v1/fine_tuning/jobs",
        Some(&job_body(MODEL, &file_id)),
        None,
    );
    let id = job["id"].as_str().unwrap().to_string();
    let (status, job) = s.call(
        "POST",
        &format!("/v1/fine_tuning/jobs/{id}/cancel"),
        Some(""),
        None,
    );
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "cancelled");
    std::thread::sleep(Duration::from_secs(2));
    let (_, job) = s.call("GET", &format!("/v1/fine_tuning/jobs/{id}"), None, None);
    assert_eq!(job["status"], "cancelled");
    assert!(job["fine_tuned_model"].is_null());
    let (status, _) = s.call(
        "POST",
        &format!("/v1/fine_tuning/jobs/{id}/cancel"),
        Some(""),
        None,
    );
    assert_eq!(status, 400);
}
