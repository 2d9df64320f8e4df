//! `metrics.jsonl`: one JSON object per line, appended as training goes (flushed each line, so
//! `tail -f` works), and truncated to the checkpoint's step on resume.

use crate::io::write_atomic;
use crate::{Error, Result};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Appends metric records to a JSONL file.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path` for appending, first dropping records with `step` greater than
    /// `keep_until` (those belong to work after the checkpoint being resumed).
    pub fn open(path: &Path, keep_until: Option<usize>) -> Result<Self> {
        if let Some(limit) = keep_until {
            let kept: String = read_records(path)?
                .into_iter()
                .filter(|r| {
                    r.get("step")
                        .and_then(Value::as_u64)
                        .map(|s| s as usize <= limit)
                        .unwrap_or(true)
                })
                .map(|r| format!("{r}\n"))
                .collect();
            write_atomic(path, kept.as_bytes())?;
        } else if path.exists() {
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record.
    pub fn log(&mut self, record: Value) -> Result<()> {
        writeln!(self.file, "{record}").map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads all records of a metrics file (none if it does not exist).
pub use crate::io::read_jsonl as read_records;

/// The process's peak resident memory since the last [`reset_peak_rss`] (or its start), in
/// bytes: Linux's `VmHWM`. `None` where the kernel does not report it.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Restarts the peak-memory count at the current resident size (Linux `clear_refs` 5), so
/// [`peak_rss`] then reports the peak of the work that follows.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
