//! Fine-tuning jobs in OpenAI's shape: training files uploaded, jobs queued and run one at a
//! time on their own thread through the `instruct` engine (a LoRA adapter on the served base;
//! QLoRA when it is served quantized), each finished adapter served at once as
//! `ft:BASE:SUFFIX:ID`. Everything lives in the data directory: a file per upload and a folder
//! per job (its state in `job.json`, its run with checkpoints and `metrics.jsonl`), so a
//! server restarted mid-job resumes the job from its last checkpoint and serves the adapters
//! of finished ones again.

use crate::io::{read_json, write_json_atomic};
use crate::train::checkpoint::list_checkpoints;
use crate::train::Recipe;
use crate::{Error, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// An uploaded file's record (`files/<id>.json`; the data is `files/<id>.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    pub id: String,
    pub bytes: u64,
    pub created_at: u64,
    /// The client's name for it (shown, never used as a path).
    pub filename: String,
    pub purpose: String,
    /// Instruction examples it holds.
    pub examples: usize,
}

impl FileRecord {
    pub fn to_json(&self) -> Value {
        json!({"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
               "filename": self.filename, "purpose": self.purpose, "status": "processed",
               "status_details": null})
    }
}

/// `n_epochs`, `batch_size`, `learning_rate_multiplier` as resolved for the job.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Hyperparameters {
    pub n_epochs: usize,
    pub batch_size: usize,
    pub learning_rate_multiplier: f64,
}

/// A job's lifecycle message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobEvent {
    pub created_at: u64,
    pub level: String,
    pub message: String,
}

/// A job's state (`jobs/<id>/job.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: String,
    pub created_at: u64,
    pub finished_at: Option<u64>,
    /// The base model's id.
    pub model: String,
    pub fine_tuned_model: Option<String>,
    /// queued, running, succeeded, failed or cancelled.
    pub status: String,
    pub training_file: String,
    pub hyperparameters: Hyperparameters,
    pub suffix: Option<String>,
    pub seed: u64,
    pub steps: usize,
    pub trained_tokens: Option<u64>,
    pub error: Option<String>,
    pub events: Vec<JobEvent>,
    /// The served adapter's directory once succeeded.
    pub adapter_dir: Option<PathBuf>,
}

impl Job {
    pub fn to_json(&self) -> Value {
        let h = &self.hyperparameters;
        let hyper = json!({"n_epochs": h.n_epochs, "batch_size": h.batch_size,
                           "learning_rate_multiplier": h.learning_rate_multiplier});
        json!({
            "id": self.id, "object": "fine_tuning.job", "created_at": self.created_at,
            "finished_at": self.finished_at, "model": self.model,
            "fine_tuned_model": self.fine_tuned_model, "organization_id": "ferroformer",
            "status": self.status, "training_file": self.training_file, "validation_file": null,
            "hyperparameters": hyper, "result_files": [], "trained_tokens": self.trained_tokens,
            "seed": self.seed, "suffix": self.suffix, "estimated_finish": null, "integrations": [],
            "error": self.error.as_ref().map(|m| json!({"code": "training_failed", "message": m, "param": null})),
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        })
    }

    fn is_over(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

/// Serves a finished job's adapter: `(public id, adapter directory)`.
pub type Register = Box<dyn Fn(&str, &Path) -> Result<()> + Send>;

/// What the training side needs of the served base.
#[derive(Debug, Clone)]
pub struct Base {
    /// The id clients name it by.
    pub name: String,
    /// Its file or directory.
    pub source: PathBuf,
    pub quantized: bool,
    pub device: Device,
}

/// The data directory, the queue and the running job.
pub struct Jobs {
    pub dir: PathBuf,
    queue: Mutex<mpsc::Sender<String>>,
    /// The running job and its stop flag.
    running: Mutex<Option<(String, Arc<AtomicBool>)>>,
    /// Serialises read-modify-write of job files.
    lock: Mutex<()>,
    pub base: Base,
}

fn id(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let k = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}-{:012x}",
        (nanos / 1000).wrapping_add(k) & 0xffff_ffff_ffff
    )
}

/// A job or file id from a URL: only ids we make (no path separators, no dots).
pub fn valid_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()))
}

impl Jobs {
    /// Opens (creating) the data directory and starts the job thread; queued and running jobs
    /// go back in the queue. Returns the finished jobs whose adapters are to be served.
    pub fn start(dir: &Path, base: Base, register: Register) -> Result<(Arc<Jobs>, Vec<Job>)> {
        for sub in ["files", "jobs"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        let (tx, rx) = mpsc::channel::<String>();
        let jobs = Arc::new(Jobs {
            dir: dir.to_path_buf(),
            queue: Mutex::new(tx),
            running: Mutex::new(None),
            lock: Mutex::new(()),
            base,
        });
        let mut all = jobs.list()?;
        all.sort_by_key(|j| j.created_at);
        let mut done = vec![];
        for j in all {
            match j.status.as_str() {
                "queued" | "running" => jobs.enqueue(&j.id)?,
                "succeeded" if j.model == jobs.base.name => done.push(j),
                _ => {}
            }
        }
        let worker = jobs.clone();
        std::thread::Builder::new()
            .name("fine-tuning".into())
            .spawn(move || {
                for id in rx {
                    worker.run(&id, &register);
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the fine-tuning thread: {e}")))?;
        Ok((jobs, done))
    }

    fn enqueue(&self, id: &str) -> Result<()> {
        self.queue
            .lock()
            .expect("queue")
            .send(id.to_string())
            .map_err(|_| Error::Config("the fine-tuning thread has stopped".into()))
    }

    fn file_paths(&self, id: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.join("files");
        (d.join(format!("{id}.json")), d.join(format!("{id}.jsonl")))
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join("jobs").join(id)
    }

    /// Stores an upload already written to `tmp` (in the files directory): checks it holds
    /// instruction records, every one usable, and names it.
    pub fn add_file(&self, tmp: &Path, filename: &str, purpose: &str) -> Result<FileRecord> {
        let check = crate::data::instruct::read(tmp).and_then(|(ex, report)| {
            if report.skipped > 0 || !report.truncated.is_empty() {
                let why = report.summary().unwrap_or_default();
                return Err(Error::Data(why));
            }
            Ok(ex.len())
        });
        let examples = match check {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(tmp);
                // Our temporary name means nothing to the client.
                let msg = e.to_string().replace(&tmp.display().to_string(), filename);
                return Err(Error::Data(msg));
            }
        };
        let bytes = std::fs::metadata(tmp).map_err(|e| Error::io(tmp, e))?.len();
        let rec = FileRecord {
            id: id("file"),
            bytes,
            created_at: super::now(),
            filename: filename
                .chars()
                .filter(|c| !c.is_control())
                .take(256)
                .collect(),
            purpose: purpose.to_string(),
            examples,
        };
        let (meta, data) = self.file_paths(&rec.id);
        std::fs::rename(tmp, &data).map_err(|e| Error::io(&data, e))?;
        write_json_atomic(&meta, &rec)?;
        Ok(rec)
    }

    pub fn file(&self, id: &str) -> Option<FileRecord> {
        if !valid_id(id, "file") {
            return None;
        }
        read_json(&self.file_paths(id).0).ok()
    }

    pub fn files(&self) -> Vec<FileRecord> {
        let mut out: Vec<FileRecord> = std::fs::read_dir(self.dir.join("files"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| read_json(&e.path()).ok())
            .collect();
        out.sort_by_key(|f| std::cmp::Reverse(f.created_at));
        out
    }

    pub fn job(&self, id: &str) -> Option<Job> {
        if !valid_id(id, "ftjob") {
            return None;
        }
        read_json(&self.job_dir(id).join("job.json")).ok()
    }

    /// Every job, newest first.
    pub fn list(&self) -> Result<Vec<Job>> {
        let d = self.dir.join("jobs");
        let mut out: Vec<Job> = std::fs::read_dir(&d)
            .map_err(|e| Error::io(&d, e))?
            .flatten()
            .filter_map(|e| read_json(&e.path().join("job.json")).ok())
            .collect();
        out.sort_by_key(|j| std::cmp::Reverse(j.created_at));
        Ok(out)
    }

    fn save(&self, job: &Job) -> Result<()> {
        write_json_atomic(&self.job_dir(&job.id).join("job.json"), job)
    }

    /// Changes a job's state under the lock; returns it changed.
    fn update(&self, id: &str, f: impl FnOnce(&mut Job)) -> Result<Job> {
        let _guard = self.lock.lock().expect("job lock");
        let mut job = self
            .job(id)
            .ok_or_else(|| Error::Config(format!("no fine-tuning job {id}")))?;
        f(&mut job);
        self.save(&job)?;
        Ok(job)
    }

    /// Creates and queues a job training on `file`.
    pub fn create(
        &self,
        file: &FileRecord,
        h: Hyperparameters,
        suffix: Option<String>,
        seed: u64,
    ) -> Result<Job> {
        let steps = (h.n_epochs * file.examples).div_ceil(h.batch_size).max(1);
        let now = super::now();
        let job = Job {
            id: id("ftjob"),
            created_at: now,
            finished_at: None,
            model: self.base.name.clone(),
            fine_tuned_model: None,
            status: "queued".into(),
            training_file: file.id.clone(),
            hyperparameters: h,
            suffix,
            seed,
            steps,
            trained_tokens: None,
            error: None,
            events: vec![JobEvent {
                created_at: now,
                level: "info".into(),
                message: format!(
                    "Created fine-tuning job: {} examples, {} epochs, {steps} steps",
                    file.examples, h.n_epochs
                ),
            }],
            adapter_dir: None,
        };
        let d = self.job_dir(&job.id);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        self.save(&job)?;
        self.enqueue(&job.id)?;
        Ok(job)
    }

    /// Cancels a job: a queued one at once, a running one after its current step.
    pub fn cancel(&self, id: &str) -> Result<Job> {
        if let Some((running, flag)) = self.running.lock().expect("running").as_ref() {
            if running == id {
                flag.store(true, Ordering::SeqCst);
            }
        }
        self.update(id, |j| {
            if !j.is_over() {
                j.status = "cancelled".into();
                j.finished_at = Some(super::now());
                j.events.push(event("Fine-tuning job cancelled"));
            }
        })
    }

    /// The job's events, newest first: its lifecycle and the loss of each logged step.
    pub fn events(&self, job: &Job) -> Vec<Value> {
        let mut all: Vec<(u64, Value)> = job
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (e.created_at, json!({"object": "fine_tuning.job.event", "id": format!("{}-event-{i}", job.id),
                    "created_at": e.created_at, "level": e.level, "message": e.message, "data": {}, "type": "message"}))
            })
            .collect();
        let metrics = self.job_dir(&job.id).join("run").join("metrics.jsonl");
        let text = std::fs::read_to_string(metrics).unwrap_or_default();
        let start = job.created_at;
        for line in text.lines() {
            let Ok(m) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let (Some(step), Some(loss)) = (m["step"].as_u64(), m["loss"].as_f64()) else {
                continue;
            };
            let at = start + m["elapsed_s"].as_f64().unwrap_or(0.0) as u64;
            all.push((
                at,
                json!({"object": "fine_tuning.job.event", "id": format!("{}-step-{step}", job.id),
                "created_at": at, "level": "info",
                "message": format!("Step {step}/{}: training loss={loss:.4}", job.steps),
                "data": {"step": step, "total_steps": job.steps, "train_loss": loss,
                         "learning_rate": m["lr"], "tokens_seen": m["tokens_seen"]},
                "type": "metrics"}),
            ));
        }
        // Stable: within a second, later entries stay later.
        all.sort_by_key(|(t, _)| *t);
        all.into_iter().rev().map(|(_, v)| v).collect()
    }

    /// The recipe of a job: the built-in instruction-tuning recipe (LoRA) on the base.
    fn recipe(&self, job: &Job) -> Result<Recipe> {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let h = &job.hyperparameters;
        let (_, data) = self.file_paths(&job.training_file);
        let run = self.job_dir(&job.id).join("run");
        let lr = 5e-4 * h.learning_rate_multiplier;
        let set = vec![
            format!("data.corpus=[{}]", q(&data.display().to_string())),
            "data.val_fraction=0.0".into(),
            format!("model.init={}", q(&self.base.source.display().to_string())),
            format!("model.quantized={}", self.base.quantized),
            // One example per row, so an epoch is examples / batch_size steps.
            "sft.packing=false".into(),
            format!("train.out_dir={}", q(&run.display().to_string())),
            format!("train.steps={}", job.steps),
            format!("train.batch_size={}", h.batch_size),
            format!("train.lr={lr}"),
            format!("train.min_lr={}", lr / 10.0),
            format!("train.warmup_steps={}", (job.steps / 10).min(20)),
            format!("train.eval_interval={}", job.steps),
            "train.log_interval=1".into(),
            // Often enough that a restart loses little.
            format!(
                "train.checkpoint_interval={}",
                (job.steps / 10).clamp(1, 50)
            ),
            "train.keep_checkpoints=2".into(),
            format!("train.seed={}", job.seed),
        ];
        Recipe::parse(
            crate::tasks::sft::INSTRUCT_RECIPE,
            &set,
            Path::new("recipes/instruct.toml"),
        )
    }

    /// Runs a queued (or interrupted) job to its end.
    fn run(&self, id: &str, register: &Register) {
        let Some(job) = self.job(id) else { return };
        if job.is_over() {
            return;
        }
        let flag = Arc::new(AtomicBool::new(false));
        *self.running.lock().expect("running") = Some((id.to_string(), flag.clone()));
        let result = self.train(&job, flag, register);
        *self.running.lock().expect("running") = None;
        let _ = self.update(id, |j| {
            match result {
                Ok(Some((name, dir))) => {
                    j.status = "succeeded".into();
                    j.fine_tuned_model = Some(name.clone());
                    j.adapter_dir = Some(dir);
                    j.events.push(event(&format!(
                        "The job has successfully completed: {name}"
                    )));
                }
                // Stopped by a cancellation (recorded by it).
                Ok(None) if j.is_over() => {}
                Ok(None) => {
                    j.status = "cancelled".into();
                    j.events.push(event("Fine-tuning job cancelled"));
                }
                Err(e) => {
                    j.status = "failed".into();
                    j.error = Some(e.to_string());
                    j.events.push(JobEvent {
                        level: "error".into(),
                        ..event(&format!("Fine-tuning failed: {e}"))
                    });
                }
            }
            if j.finished_at.is_none() {
                j.finished_at = Some(super::now());
            }
        });
    }

    /// Trains the job's adapter; `None` when it was cancelled.
    fn train(
        &self,
        job: &Job,
        flag: Arc<AtomicBool>,
        register: &Register,
    ) -> Result<Option<(String, PathBuf)>> {
        let recipe = self.recipe(job)?;
        let run = PathBuf::from(&recipe.train.out_dir);
        let resume = !list_checkpoints(&run)?.is_empty();
        let job = self.update(&job.id, |j| {
            // Cancelled while it was being picked up: it stays so.
            if !j.is_over() {
                j.status = "running".into();
                j.events.push(event(if resume {
                    "Fine-tuning job resumed from its last checkpoint"
                } else {
                    "Fine-tuning job started"
                }));
            }
        })?;
        if job.is_over() {
            return Ok(None);
        }
        let device = &self.base.device;
        let (trainer, outcome) = crate::nn::kernels::on_pool(|| {
            let mut trainer = crate::tasks::prepare(recipe, resume, device)?;
            trainer.stop = Some(flag);
            let outcome = trainer.run(false, &mut |_| {})?;
            Ok::<_, Error>((trainer, outcome))
        })?;
        let tokens = trainer.state.tokens_seen;
        let _ = self.update(&job.id, |j| j.trained_tokens = Some(tokens));
        if outcome != crate::train::engine::Outcome::Finished {
            return Ok(None);
        }
        let Some((_, dir)) = list_checkpoints(&run)?.pop() else {
            return Err(Error::Training("the run saved no checkpoint".into()));
        };
        let name = format!(
            "ft:{}:{}:{}",
            job.model,
            job.suffix.as_deref().unwrap_or(""),
            job.id
        );
        register(&name, &dir)?;
        Ok(Some((name, dir)))
    }
}

fn event(message: &str) -> JobEvent {
    JobEvent {
        created_at: super::now(),
        level: "info".into(),
        message: message.to_string(),
    }
}
