//! The endpoints: OpenAI's chat completions, completions, embeddings and models, `/health`,
//! and adapters loaded and unloaded at run time. Every failure answers with OpenAI's error
//! object and the server goes on serving.

use super::api::{self, AdapterRequest, ApiError, EmbeddingRequest, Inputs};
use super::completions::{chat, completions};
use super::worker::Command;
use super::{tuning, AppState, Served};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

type S = State<Arc<AppState>>;

/// The router over `state`, with authentication and the body limit.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/adapters", post(load_adapter))
        .route(
            "/v1/files",
            post(tuning::upload)
                .get(tuning::files)
                .layer(axum::extract::DefaultBodyLimit::max(state.max_upload_bytes)),
        )
        .route("/v1/files/{id}", get(tuning::file))
        .route(
            "/v1/fine_tuning/jobs",
            post(tuning::create).get(tuning::list),
        )
        .route("/v1/fine_tuning/jobs/{id}", get(tuning::get_job))
        .route("/v1/fine_tuning/jobs/{id}/events", get(tuning::events))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(tuning::cancel))
        .route("/v1/adapters/{*name}", delete(unload_adapter))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            declared_length,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// Equal strings, in time that depends only on their lengths.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= (x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0)) as usize;
    }
    std::hint::black_box(diff) == 0
}

async fn auth(State(s): S, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        if req.uri().path() != "/health" {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let message = match given {
                None => Some("Missing API key: send the header `Authorization: Bearer KEY`."),
                Some(g) if !same_key(g.trim().as_bytes(), key.as_bytes()) => {
                    Some("Incorrect API key provided.")
                }
                Some(_) => None,
            };
            if let Some(m) = message {
                return ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", m)
                    .with_code("invalid_api_key")
                    .into_response();
            }
        }
    }
    next.run(req).await
}

/// Refuses a body whose declared length is over the limit before reading it.
async fn declared_length(State(s): S, req: Request, next: Next) -> Response {
    let limit = if req.uri().path() == "/v1/files" {
        s.max_upload_bytes
    } else {
        s.max_body_bytes
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large().into_response();
    }
    next.run(req).await
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "the request body is larger than the server's limit (--max-body-mb, --max-upload-mb for /v1/files)",
    )
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {} {} (see /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings)",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// The request body, or the 400/413 that reading it gives.
pub(crate) fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::new(status, "invalid_request_error", r.body_text())
        }
    })
}

async fn health(State(s): S) -> Json<Value> {
    let names = s.names.read().expect("names");
    Json(json!({
        "status": "ok",
        "model": names.base,
        "adapters": names.adapters.len(),
        "active": s.load.active.load(Ordering::Relaxed),
        "waiting": s.load.waiting.load(Ordering::Relaxed),
    }))
}

fn model_object(id: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "ferroformer"})
}

async fn models(State(s): S) -> Json<Value> {
    let names = s.names.read().expect("names");
    let mut data = vec![model_object(&names.base, s.started)];
    data.extend(
        names
            .adapters
            .iter()
            .map(|(id, a)| model_object(id, a.created)),
    );
    data.extend(names.embedding.iter().map(|e| model_object(e, s.started)));
    Json(json!({"object": "list", "data": data}))
}

async fn model(State(s): S, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    let names = s.names.read().expect("names");
    let created = if id == names.base || names.embedding.as_deref() == Some(id.as_str()) {
        s.started
    } else if let Some(a) = names.adapters.get(&id) {
        a.created
    } else {
        return Err(ApiError::unknown_model(&id, &names.all()));
    };
    Ok(Json(model_object(&id, created)))
}

async fn embeddings(State(s): S, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: EmbeddingRequest = api::parse(&body(b)?)?;
    let Some(emb) = &s.embedder else {
        return Err(ApiError::invalid(
            "model",
            "this server has no embedding model (start it with --embedding-model)",
        ));
    };
    let model = {
        let names = s.names.read().expect("names");
        match &req.model {
            None => {
                return Err(ApiError::invalid(
                    "model",
                    "you must provide a model parameter",
                ))
            }
            Some(m) if names.embedding.as_deref() == Some(m.as_str()) => m.clone(),
            Some(m) => return Err(ApiError::unknown_model(m, &names.all())),
        }
    };
    let texts = match req.input {
        Inputs::Text(t) => vec![t],
        Inputs::Texts(t) => t,
        Inputs::Ids(_) | Inputs::IdLists(_) => {
            return Err(ApiError::invalid(
                "input",
                "token ids are not supported for embeddings; send text",
            ))
        }
    };
    if texts.is_empty() {
        return Err(ApiError::invalid("input", "`input` must not be empty"));
    }
    if let Some(i) = texts.iter().position(|t| t.is_empty()) {
        return Err(ApiError::invalid(
            "input",
            format!("input[{i}] is an empty string"),
        ));
    }
    if let Some(d) = req.dimensions {
        if d != emb.dimensions {
            return Err(ApiError::invalid(
                "dimensions",
                format!(
                    "this model's embeddings have {} dimensions, not {d}",
                    emb.dimensions
                ),
            ));
        }
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format must be `float` or `base64`, got `{f}`"),
            ))
        }
    };
    let (vectors, tokens) = emb.embed(texts).await?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                use base64::Engine;
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "model": model,
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response())
}

async fn load_adapter(State(s): S, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: AdapterRequest = api::parse(&body(b)?)?;
    let name = req.name.trim().to_string();
    if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(ApiError::invalid(
            "name",
            "the adapter name must be 1 to 256 printable characters, without `/`",
        ));
    }
    let internal = {
        let mut names = s.names.write().expect("names");
        if name == names.base
            || names.adapters.contains_key(&name)
            || names.embedding.as_deref() == Some(name.as_str())
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                format!("a model named `{name}` is already served"),
            )
            .with_code("model_exists"));
        }
        names.internal_name()
    };
    let dir = std::path::PathBuf::from(&req.path);
    if !dir.is_dir() {
        return Err(ApiError::invalid(
            "path",
            format!("{}: not a directory on the server", req.path),
        ));
    }
    let (reply, rx) = tokio::sync::oneshot::channel();
    s.generation
        .send(Command::LoadAdapter {
            name: internal.clone(),
            dir,
            reply,
        })
        .map_err(|_| ApiError::unavailable("the generation thread has stopped"))?;
    rx.await
        .map_err(|_| ApiError::unavailable("the generation thread has stopped"))?
        .map_err(|e| ApiError::invalid("path", e.to_string()))?;
    let created = super::now();
    let mut names = s.names.write().expect("names");
    if names.adapters.contains_key(&name) {
        // Loaded twice at once: the other request won; this copy goes.
        let _ = s.generation.send(Command::UnloadAdapter { name: internal });
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            format!("a model named `{name}` is already served"),
        )
        .with_code("model_exists"));
    }
    names.adapters.insert(
        name.clone(),
        Served {
            adapter: Some(internal),
            created,
        },
    );
    Ok(Json(model_object(&name, created)).into_response())
}

async fn unload_adapter(
    State(s): S,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let served = {
        let mut names = s.names.write().expect("names");
        match names.adapters.remove(&name) {
            Some(a) => a,
            None if name == names.base => {
                return Err(ApiError::invalid(
                    "name",
                    "the base model cannot be unloaded",
                ))
            }
            None => return Err(ApiError::unknown_model(&name, &names.all())),
        }
    };
    if let Some(internal) = served.adapter {
        // Requests already running with it finish first.
        let _ = s.generation.send(Command::UnloadAdapter { name: internal });
    }
    Ok(Json(
        json!({"id": name, "object": "model", "deleted": true}),
    ))
}
