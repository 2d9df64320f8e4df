//! Generation endpoints: `/v1/chat/completions` and `/v1/completions`, streamed as
//! server-sent events or answered whole; the request's sampling fields checked and turned into
//! sequences for the generation worker.

use super::api::{self, ApiError, ChatRequest, CompletionRequest, Content, Inputs, Sampling};
use super::routes::body;
use super::worker::{Command, Event, Finish, Generation};
use super::AppState;
use crate::infer::generate::SamplingConfig;
use crate::text::chat::Message;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

type S = State<Arc<AppState>>;

/// Sequences one request may start (prompts times `n`).
const MAX_SEQUENCES: usize = 256;

/// The model a generation request names: its id, and the adapter (`None`: the base).
struct Target {
    model: String,
    adapter: Option<String>,
}

fn resolve(s: &AppState, model: &Option<String>) -> Result<Target, ApiError> {
    let Some(model) = model else {
        return Err(ApiError::invalid(
            "model",
            "you must provide a model parameter",
        ));
    };
    let names = s.names.read().expect("names");
    if *model == names.base {
        return Ok(Target {
            model: model.clone(),
            adapter: None,
        });
    }
    match names.adapters.get(model) {
        Some(a) => Ok(Target {
            model: model.clone(),
            adapter: a.adapter.clone(),
        }),
        None if names.embedding.as_deref() == Some(model.as_str()) => Err(ApiError::invalid(
            "model",
            format!("`{model}` is an embedding model: use /v1/embeddings"),
        )),
        None => Err(ApiError::unknown_model(model, &names.all())),
    }
}

/// Checks what we do not do is not asked for, and turns the sampling fields into the
/// configuration of each of `n` sequences (their seeds follow on from the first).
fn sampling(
    s: &Sampling,
    prompt_len: usize,
    context: usize,
) -> Result<(SamplingConfig, usize), ApiError> {
    let unsupported = |param: &str, what: &str| {
        Err(ApiError::invalid(
            param,
            format!("`{param}` {what} is not supported by this server"),
        ))
    };
    for (param, v) in [
        ("frequency_penalty", s.frequency_penalty),
        ("presence_penalty", s.presence_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return unsupported(param, "other than 0");
        }
    }
    if s.logprobs
        .as_ref()
        .is_some_and(|v| !v.is_null() && *v != json!(false))
    {
        return unsupported("logprobs", "");
    }
    if s.logit_bias.as_ref().is_some_and(|v| !v.is_null()) {
        return unsupported("logit_bias", "");
    }
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    if let Some(p) = s.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {p}"),
            ));
        }
    }
    if s.top_k == Some(0) {
        return Err(ApiError::invalid("top_k", "top_k must be at least 1"));
    }
    let n = s.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::invalid(
            "n",
            format!("n must be between 1 and 16, got {n}"),
        ));
    }
    if prompt_len >= context {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "This model's maximum context length is {context} tokens; the prompt has {prompt_len}, leaving no room to generate."
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let room = context - prompt_len;
    let (param, asked) = match (s.max_completion_tokens, s.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    if asked == Some(0) {
        return Err(ApiError::invalid(
            param,
            format!("{param} must be at least 1"),
        ));
    }
    // Capped by the context: a reply never runs past it.
    let max_tokens = asked.unwrap_or(room).min(room);
    let seed = match s.seed {
        Some(v) => v as u64,
        None => {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            super::now() ^ NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        }
    };
    Ok((
        SamplingConfig {
            max_tokens,
            temperature,
            top_k: s.top_k,
            top_p: s.top_p.filter(|&p| p < 1.0),
            seed,
        },
        n,
    ))
}

/// A request's sequences, started on the worker.
struct Run {
    rx: UnboundedReceiver<(usize, Event)>,
    n: usize,
    prompt_tokens: usize,
    id: String,
    created: u64,
    model: String,
}

fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let k = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{prefix}-{:016x}{k:04x}", nanos.rotate_left(17) ^ k)
}

/// Sends `prompts` (each `n` times) to the worker.
fn launch(
    s: &AppState,
    prompts: Vec<Vec<u32>>,
    n: usize,
    cfg: SamplingConfig,
    stop_text: Vec<String>,
    target: Target,
    id_prefix: &str,
) -> Result<Run, ApiError> {
    let (tx, rx) = unbounded_channel();
    let prompt_tokens = prompts.iter().map(Vec::len).sum();
    let total = prompts.len() * n;
    if total > MAX_SEQUENCES {
        return Err(ApiError::invalid(
            "prompt",
            format!("{total} sequences asked for (prompts times n); at most {MAX_SEQUENCES} per request"),
        ));
    }
    for (p, prompt) in prompts.into_iter().enumerate() {
        for k in 0..n {
            let index = p * n + k;
            let g = Generation {
                prompt: prompt.clone(),
                adapter: target.adapter.clone(),
                sampling: SamplingConfig {
                    seed: cfg.seed.wrapping_add(k as u64),
                    ..cfg
                },
                stop_ids: s.info.stop_ids.clone(),
                stop_text: stop_text.clone(),
                index,
                events: tx.clone(),
            };
            s.generation
                .send(Command::Generate(g))
                .map_err(|_| ApiError::unavailable("the generation thread has stopped"))?;
        }
    }
    Ok(Run {
        rx,
        n: total,
        prompt_tokens,
        id: new_id(id_prefix),
        created: super::now(),
        model: target.model,
    })
}

/// One choice's result.
#[derive(Default)]
struct Choice {
    text: String,
    finish: Option<Finish>,
    tokens: usize,
}

impl Run {
    /// Waits for every sequence to end.
    async fn collect(mut self) -> Result<(Vec<Choice>, Value), ApiError> {
        let mut choices: Vec<Choice> = (0..self.n).map(|_| Choice::default()).collect();
        let mut left = self.n;
        while left > 0 {
            let Some((i, e)) = self.rx.recv().await else {
                return Err(ApiError::internal("the generation thread stopped"));
            };
            match e {
                Event::Text(t) => choices[i].text.push_str(&t),
                Event::Done { finish, tokens } => {
                    choices[i].finish = Some(finish);
                    choices[i].tokens = tokens;
                    left -= 1;
                }
                Event::Failed(m) => return Err(ApiError::internal(m)),
            }
        }
        let usage = self.usage(choices.iter().map(|c| c.tokens).sum());
        Ok((choices, usage))
    }

    /// The whole answer: every choice (made by `choice`) and the usage, once all have ended.
    async fn answer(
        self,
        object: &'static str,
        choice: fn(usize, Choice) -> Value,
    ) -> Result<Response, ApiError> {
        let (id, created, model) = (self.id.clone(), self.created, self.model.clone());
        let (choices, usage) = self.collect().await?;
        let choices: Vec<Value> = choices
            .into_iter()
            .enumerate()
            .map(|(i, c)| choice(i, c))
            .collect();
        Ok(Json(
            json!({"id": id, "object": object, "created": created, "model": model,
                       "system_fingerprint": null, "choices": choices, "usage": usage}),
        )
        .into_response())
    }

    fn usage(&self, completion: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    /// Server-sent events: `first` chunks, then one chunk per event (`chunk(index, text,
    /// finish)` makes its choice), the usage with `include_usage`, then `[DONE]`.
    fn stream(
        self,
        object: &'static str,
        first: Vec<Value>,
        include_usage: bool,
        chunk: fn(usize, Option<&str>, Option<Finish>) -> Value,
    ) -> Response {
        struct St {
            run: Run,
            queue: VecDeque<String>,
            left: usize,
            tokens: usize,
            ended: bool,
        }
        let envelope = move |run: &Run, choices: Vec<Value>| -> String {
            json!({"id": run.id, "object": object, "created": run.created, "model": run.model,
                   "system_fingerprint": null, "choices": choices})
            .to_string()
        };
        let queue: VecDeque<String> = first
            .into_iter()
            .map(|c| envelope(&self, vec![c]))
            .collect();
        let left = self.n;
        let st = St {
            run: self,
            queue,
            left,
            tokens: 0,
            ended: false,
        };
        let events = futures_util::stream::unfold(st, move |mut st| async move {
            loop {
                if let Some(data) = st.queue.pop_front() {
                    return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), st));
                }
                if st.ended {
                    return None;
                }
                if st.left == 0 {
                    if include_usage {
                        let mut c = json!({"id": st.run.id, "object": object, "created": st.run.created,
                            "model": st.run.model, "choices": []});
                        c["usage"] = st.run.usage(st.tokens);
                        st.queue.push_back(c.to_string());
                    }
                    st.queue.push_back("[DONE]".into());
                    st.ended = true;
                    continue;
                }
                match st.run.rx.recv().await {
                    None => {
                        let e = ApiError::internal("the generation thread stopped");
                        st.queue.push_back(e.body().to_string());
                        st.left = 0;
                    }
                    Some((i, Event::Text(t))) => {
                        let c = chunk(i, Some(&t), None);
                        st.queue.push_back(envelope(&st.run, vec![c]));
                    }
                    Some((i, Event::Done { finish, tokens })) => {
                        st.tokens += tokens;
                        st.left -= 1;
                        let mut c: Value = serde_json::from_str(&envelope(
                            &st.run,
                            vec![chunk(i, None, Some(finish))],
                        ))
                        .expect("valid JSON");
                        if st.left == 0 {
                            c["usage"] = st.run.usage(st.tokens);
                        }
                        st.queue.push_back(c.to_string());
                    }
                    Some((_, Event::Failed(m))) => {
                        st.queue.push_back(ApiError::internal(m).body().to_string());
                        st.left = 0;
                    }
                }
            }
        });
        Sse::new(events).into_response()
    }
}

/// A message's text: its content, or its text parts joined.
fn message_text(m: &api::ChatMessage, i: usize) -> Result<String, ApiError> {
    match &m.content {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => parts
            .iter()
            .enumerate()
            .map(|(k, p)| match (p.kind.as_str(), &p.text) {
                ("text", Some(t)) => Ok(t.as_str()),
                _ => Err(ApiError::invalid(
                    &format!("messages[{i}].content[{k}]"),
                    format!(
                        "content parts of type `{}` are not supported; send text",
                        p.kind
                    ),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.concat()),
    }
}

pub async fn chat(State(s): S, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let b = body(b)?;
    let req: ChatRequest = api::parse(&b)?;
    let sampling_req: Sampling = api::parse(&b)?;
    let target = resolve(&s, &req.model)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::invalid(
            "tools",
            "tool calls are not supported by this server",
        ));
    }
    if let Some(f) = &req.response_format {
        if f.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "text")
        {
            return Err(ApiError::invalid(
                "response_format",
                "only the `text` response format is supported",
            ));
        }
    }
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| Ok(Message::new(&m.role, &message_text(m, i)?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let prompting = s.info.prompting();
    let template = prompting
        .chat()
        .map_err(|e| ApiError::invalid("model", e.to_string()))?;
    let text = template
        .render(&messages, true)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let ids = s.info.tokenizer.encode(&text)?;
    let (cfg, n) = sampling(&sampling_req, ids.len(), s.info.max_positions)?;
    let stop = sampling_req
        .stop
        .clone()
        .map(|x| x.into_vec())
        .unwrap_or_default();
    let run = launch(&s, vec![ids], n, cfg, stop, target, "chatcmpl")?;
    if sampling_req.stream {
        let first = (0..run.n)
            .map(|i| {
                json!({"index": i, "delta": {"role": "assistant", "content": ""},
                       "logprobs": null, "finish_reason": null})
            })
            .collect();
        return Ok(run.stream(
            "chat.completion.chunk",
            first,
            sampling_req.include_usage(),
            |i, text, finish| {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!({"index": i, "delta": delta, "logprobs": null,
                       "finish_reason": finish.map(Finish::as_str)})
            },
        ));
    }
    run.answer("chat.completion", |i, c| {
        json!({"index": i, "message": {"role": "assistant", "content": c.text, "refusal": null},
               "logprobs": null, "finish_reason": c.finish.map(Finish::as_str)})
    })
    .await
}

/// Token ids of `prompt`/`input` texts or ids (ids checked against the vocabulary).
fn prompts(s: &AppState, inputs: Inputs, param: &str) -> Result<Vec<Vec<u32>>, ApiError> {
    let prompting = s.info.prompting();
    let lists = match inputs {
        Inputs::Text(t) => vec![prompting.encode_prompt(&t)?],
        Inputs::Texts(ts) => ts
            .iter()
            .map(|t| prompting.encode_prompt(t))
            .collect::<crate::Result<_>>()?,
        Inputs::Ids(ids) => vec![ids],
        Inputs::IdLists(l) => l,
    };
    if lists.is_empty() {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must not be empty"),
        ));
    }
    let start = s.info.special.bos.or(s.info.special.eos);
    lists
        .into_iter()
        .enumerate()
        .map(|(i, mut ids)| {
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= s.info.vocab_size) {
                return Err(ApiError::invalid(
                    param,
                    format!("{param}[{i}]: token id {bad} is outside the vocabulary"),
                ));
            }
            if ids.is_empty() {
                // Nothing to condition on: start from the beginning-of-sequence token.
                ids.extend(start);
            }
            if ids.is_empty() {
                return Err(ApiError::invalid(param, format!("{param}[{i}] is empty")));
            }
            Ok(ids)
        })
        .collect()
}

pub async fn completions(
    State(s): S,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    let req: CompletionRequest = api::parse(&b)?;
    let sampling_req: Sampling = api::parse(&b)?;
    let target = resolve(&s, &req.model)?;
    if req.echo {
        return Err(ApiError::invalid(
            "echo",
            "`echo` is not supported by this server",
        ));
    }
    if req.suffix.as_ref().is_some_and(|x| !x.is_empty()) {
        return Err(ApiError::invalid(
            "suffix",
            "`suffix` is not supported by this server",
        ));
    }
    if req.best_of.is_some_and(|b| b > 1) {
        return Err(ApiError::invalid(
            "best_of",
            "`best_of` above 1 is not supported by this server",
        ));
    }
    let lists = prompts(&s, req.prompt, "prompt")?;
    let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
    let (cfg, n) = sampling(&sampling_req, longest, s.info.max_positions).map_err(|mut e| {
        if e.param.as_deref() == Some("messages") {
            e.param = Some("prompt".into());
        }
        e
    })?;
    let stop = sampling_req
        .stop
        .clone()
        .map(|x| x.into_vec())
        .unwrap_or_default();
    let run = launch(&s, lists, n, cfg, stop, target, "cmpl")?;
    if sampling_req.stream {
        return Ok(run.stream(
            "text_completion",
            vec![],
            sampling_req.include_usage(),
            |i, text, finish| {
                json!({"index": i, "text": text.unwrap_or(""), "logprobs": null,
                       "finish_reason": finish.map(Finish::as_str)})
            },
        ));
    }
    run.answer("text_completion", |i, c| {
        json!({"index": i, "text": c.text, "logprobs": null,
               "finish_reason": c.finish.map(Finish::as_str)})
    })
    .await
}
