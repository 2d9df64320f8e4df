//! The fine-tuning endpoints, as OpenAI's: `/v1/files` (multipart upload of chat-format
//! JSONL, `purpose=fine-tune`) and `/v1/fine_tuning/jobs` (create, list, get, events,
//! cancel). The work itself is in [`super::jobs`].

use super::api::{self, ApiError};
use super::jobs::{Hyperparameters, Jobs};
use super::AppState;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Multipart, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

type S = State<Arc<AppState>>;

fn upload_error(e: impl std::fmt::Display) -> ApiError {
    let m = e.to_string();
    if m.contains("length limit") || m.contains("too large") {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "the upload is larger than the server's limit (--max-upload-mb)",
        )
    } else {
        ApiError::invalid("file", format!("reading the upload: {m}"))
    }
}

/// `POST /v1/files`: stores a training file under a name of our own (the client's file name
/// is kept only as a label).
pub async fn upload(
    State(s): S,
    mp: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut mp = mp.map_err(|r| {
        ApiError::new(
            r.status(),
            "invalid_request_error",
            format!("expected a multipart/form-data upload: {}", r.body_text()),
        )
    })?;
    let jobs = &s.jobs;
    let tmp = jobs.dir.join("files").join(format!(
        "upload-{}-{}.jsonl",
        std::process::id(),
        super::now_nanos()
    ));
    let mut purpose = None;
    let mut filename = None;
    let result: Result<(), ApiError> = async {
        while let Some(mut field) = mp.next_field().await.map_err(upload_error)? {
            match field.name() {
                Some("purpose") => purpose = Some(field.text().await.map_err(upload_error)?),
                Some("file") => {
                    filename = Some(field.file_name().unwrap_or("upload.jsonl").to_string());
                    let mut f = std::fs::File::create(&tmp)
                        .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))?;
                    while let Some(chunk) = field.chunk().await.map_err(upload_error)? {
                        f.write_all(&chunk)
                            .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    let cleanup = |e: ApiError| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    result.map_err(cleanup)?;
    let Some(filename) = filename else {
        return Err(cleanup(ApiError::invalid(
            "file",
            "no `file` field in the upload",
        )));
    };
    match purpose.as_deref() {
        Some("fine-tune") => {}
        Some(p) => {
            return Err(cleanup(ApiError::invalid(
                "purpose",
                format!("purpose `{p}` is not supported; use `fine-tune`"),
            )))
        }
        None => {
            return Err(cleanup(ApiError::invalid(
                "purpose",
                "no `purpose` field in the upload",
            )))
        }
    }
    let rec = jobs.add_file(&tmp, &filename, "fine-tune").map_err(|e| {
        ApiError::invalid("file", format!("invalid training file: {e}")).with_code("invalid_file")
    })?;
    Ok(Json(rec.to_json()))
}

pub async fn files(State(s): S) -> Json<Value> {
    let data: Vec<Value> = s.jobs.files().iter().map(|f| f.to_json()).collect();
    Json(json!({"object": "list", "data": data, "has_more": false}))
}

pub async fn file(State(s): S, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    s.jobs
        .file(&id)
        .map(|f| Json(f.to_json()))
        .ok_or_else(|| ApiError::not_found(format!("no file {id}")))
}

/// `"auto"` or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Auto<T> {
    Value(T),
    Word(String),
}

impl<T: Copy> Auto<T> {
    fn get(a: &Option<Self>, param: &str, auto: T) -> Result<T, ApiError> {
        match a {
            None => Ok(auto),
            Some(Auto::Value(v)) => Ok(*v),
            Some(Auto::Word(w)) if w == "auto" => Ok(auto),
            Some(Auto::Word(w)) => Err(ApiError::invalid(
                param,
                format!("`{param}` must be a number or \"auto\", got {w:?}"),
            )),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Hyper {
    n_epochs: Option<Auto<usize>>,
    batch_size: Option<Auto<usize>>,
    learning_rate_multiplier: Option<Auto<f64>>,
}

#[derive(Debug, Clone, Deserialize)]
struct Supervised {
    hyperparameters: Option<Hyper>,
}

#[derive(Debug, Clone, Deserialize)]
struct Method {
    #[serde(rename = "type")]
    kind: String,
    supervised: Option<Supervised>,
}

#[derive(Debug, Clone, Deserialize)]
struct JobRequest {
    training_file: String,
    model: String,
    hyperparameters: Option<Hyper>,
    method: Option<Method>,
    suffix: Option<String>,
    seed: Option<u64>,
    validation_file: Option<String>,
}

/// `POST /v1/fine_tuning/jobs`.
pub async fn create(
    State(s): S,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let req: JobRequest = api::parse(&super::routes::body(b)?)?;
    let jobs: &Jobs = &s.jobs;
    if req.model != jobs.base.name {
        let names = s.names.read().expect("names");
        if names.all().contains(&req.model) {
            return Err(ApiError::invalid(
                "model",
                format!("only the base model `{}` can be fine-tuned", jobs.base.name),
            ));
        }
        return Err(ApiError::unknown_model(&req.model, &names.all()));
    }
    if req.validation_file.is_some() {
        return Err(ApiError::invalid(
            "validation_file",
            "validation files are not supported by this server",
        ));
    }
    let hyper = match &req.method {
        Some(m) if m.kind != "supervised" => {
            return Err(ApiError::invalid(
                "method.type",
                format!("method `{}` is not supported; use `supervised`", m.kind),
            ))
        }
        Some(m) => m
            .supervised
            .as_ref()
            .and_then(|s| s.hyperparameters.clone())
            .or(req.hyperparameters.clone()),
        None => req.hyperparameters.clone(),
    }
    .unwrap_or_default();
    let file = jobs.file(&req.training_file).ok_or_else(|| {
        ApiError::invalid(
            "training_file",
            format!(
                "no file {} (upload it to /v1/files first)",
                req.training_file
            ),
        )
    })?;
    let h = Hyperparameters {
        n_epochs: Auto::get(&hyper.n_epochs, "n_epochs", 3)?,
        batch_size: Auto::get(&hyper.batch_size, "batch_size", file.examples.clamp(1, 4))?,
        learning_rate_multiplier: Auto::get(
            &hyper.learning_rate_multiplier,
            "learning_rate_multiplier",
            1.0,
        )?,
    };
    if !(1..=50).contains(&h.n_epochs) {
        return Err(ApiError::invalid(
            "n_epochs",
            "n_epochs must be between 1 and 50",
        ));
    }
    if !(1..=64).contains(&h.batch_size) {
        return Err(ApiError::invalid(
            "batch_size",
            "batch_size must be between 1 and 64",
        ));
    }
    let m = h.learning_rate_multiplier;
    if !(m > 0.0 && m <= 10.0) {
        return Err(ApiError::invalid(
            "learning_rate_multiplier",
            "learning_rate_multiplier must be in (0, 10]",
        ));
    }
    if let Some(sfx) = &req.suffix {
        if sfx.len() > 64
            || !sfx
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ApiError::invalid(
                "suffix",
                "suffix must be at most 64 letters, digits, `-` or `_`",
            ));
        }
    }
    let job = jobs
        .create(
            &file,
            h,
            req.suffix.clone().filter(|s| !s.is_empty()),
            req.seed.unwrap_or(42),
        )
        .map_err(ApiError::from)?;
    Ok(Json(job.to_json()))
}

fn limit(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(20),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", "limit must be between 1 and 1000")),
    }
}

/// A page of `all` (newest first) after the id `after`, as OpenAI lists them.
fn page(all: Vec<Value>, q: &HashMap<String, String>) -> Result<Json<Value>, ApiError> {
    let n = limit(q)?;
    let start = match q.get("after") {
        Some(a) => all.iter().position(|v| v["id"] == *a).map_or(0, |i| i + 1),
        None => 0,
    };
    let rest: Vec<Value> = all.into_iter().skip(start).collect();
    let has_more = rest.len() > n;
    let data: Vec<Value> = rest.into_iter().take(n).collect();
    Ok(Json(
        json!({"object": "list", "data": data, "has_more": has_more}),
    ))
}

pub async fn list(
    State(s): S,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let all = s.jobs.list()?.iter().map(|j| j.to_json()).collect();
    page(all, &q)
}

fn job(s: &AppState, id: &str) -> Result<super::jobs::Job, ApiError> {
    s.jobs
        .job(id)
        .ok_or_else(|| ApiError::not_found(format!("no fine-tuning job {id}")))
}

pub async fn get_job(State(s): S, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(job(&s, &id)?.to_json()))
}

pub async fn events(
    State(s): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let j = job(&s, &id)?;
    page(s.jobs.events(&j), &q)
}

pub async fn cancel(State(s): S, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    let j = job(&s, &id)?;
    if matches!(j.status.as_str(), "succeeded" | "failed" | "cancelled") {
        return Err(ApiError::invalid(
            "",
            format!("the job is already {}", j.status),
        ));
    }
    Ok(Json(s.jobs.cancel(&id)?.to_json()))
}
