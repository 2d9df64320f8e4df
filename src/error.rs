//! The library's error type: every variant names what went wrong and, where there is one, the
//! file it went wrong in, so the CLI can print it as it is.

use std::path::{Path, PathBuf};

/// Errors returned by the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    // The io::Error is part of the message rather than a `source`, so `{:#}` chains (anyhow)
    // do not print it twice.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// A file exists but its content is not what it should be.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A configuration or option is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Input data is unusable (empty, too short for the context, ...).
    #[error("data: {0}")]
    Data(String),
    /// Fetching or verifying an asset failed.
    #[error("asset: {0}")]
    Asset(String),
    /// Training produced a non-finite loss or similar failure.
    #[error("training: {0}")]
    Training(String),
    /// An error from the tensor backend.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            err: source,
        }
    }

    /// A content error in `path`.
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}
