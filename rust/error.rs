//! One error type for the whole core. Every variant names the thing the user must look at
//! (a file and line, a spec key, a shard) so the message is actionable on its own; the
//! bindings map each variant to a typed Python exception (see `py/mod.rs`).

use std::path::Path;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed at the OS level.
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    /// A record of an input corpus is bad (truncated JSON, invalid UTF-8, missing field,
    /// corrupt zstd, wrong parquet schema...). `location` is "line N" or "row N".
    #[error("{path}: {location}: {msg}")]
    Input {
        path: String,
        location: String,
        msg: String,
    },
    /// The spec (or a resolved build config) is invalid; names the key.
    #[error("spec: {0}")]
    Spec(String),
    /// The tokenizer file is missing, unreadable, or does not fit the shard dtype.
    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: String, msg: String },
    /// A shard or manifest is corrupt (bad magic, checksum mismatch, truncated).
    #[error("shard {path}: {msg}")]
    Shard { path: String, msg: String },
    /// A file of a built mix (its lock, schedule, tokenizer, a manifest, a staged part) does
    /// not match what the build recorded for it: edited, replaced or damaged afterwards.
    #[error("{path}: {msg}")]
    Integrity { path: String, msg: String },
    /// An API called the wrong way, not a bad spec: a build stage before `prepare`, a corpus
    /// or file index out of range, a step past the schedule, a rank outside the world.
    #[error("{0}")]
    Usage(String),
    /// An object store request failed (a missing bucket or key, denied access, a wrong
    /// endpoint, an object replaced while read, a truncated transfer); names the URL only.
    #[error("{url}: {msg}")]
    Remote { url: String, msg: String },
    /// The work was cancelled (Ctrl-C from Python).
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, err: impl std::fmt::Display) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            msg: err.to_string(),
        }
    }
    pub fn input(
        path: impl AsRef<Path>,
        location: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Input {
            path: path.as_ref().display().to_string(),
            location: location.into(),
            msg: msg.into(),
        }
    }
    pub fn shard(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Shard {
            path: path.as_ref().display().to_string(),
            msg: msg.into(),
        }
    }
    pub fn integrity(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Integrity {
            path: path.as_ref().display().to_string(),
            msg: msg.into(),
        }
    }
    pub fn tokenizer(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Tokenizer {
            path: path.as_ref().display().to_string(),
            msg: msg.into(),
        }
    }
}

/// `.ctx(path)?` turns an `io::Error` into an `Error::Io` naming the path.
pub trait IoContext<T> {
    fn ctx(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
