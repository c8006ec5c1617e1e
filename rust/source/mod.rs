//! Source: find a corpus's input files and stream its documents one at a time.
//!
//! Readers for `.jsonl`, `.jsonl.zst` and `.parquet`; the text field (dotted JSON path or
//! parquet column) and row filters from the spec. Memory is bounded by one record (plus the
//! decompressor's window / one parquet page), never by the file.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// What to do with a bad record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    Fail,
    Skip,
}

/// How to turn a record into a document (from the spec's `[corpora.X]` table).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
pub struct SourceOptions {
    /// JSON field as a dotted path (`text`, `meta.body`) or parquet column (`content`).
    pub text: String,
    /// Drop records whose field (dotted path) equals one of these strings.
    #[serde(default)]
    pub exclude: Vec<(String, Vec<String>)>,
    pub on_error: OnError,
    /// Records whose text is larger than this are bad input (error or counted skip).
    pub max_doc_bytes: u64,
}

/// One record of an input file, in file order. `row` is the 0-based record index in the file
/// (for JSONL the 0-based line number, so `row + 1` is the line an editor shows).
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Doc {
        row: u64,
        text: String,
    },
    /// Dropped by an `exclude` filter.
    Filtered {
        row: u64,
    },
    /// Bad record skipped because `on_error = "skip"`; `reason` is the message `fail` would give.
    Skipped {
        row: u64,
        reason: String,
    },
}

/// Files matched by the glob `patterns`, relative to `base`, sorted by their path relative to
/// `base` and deduplicated. A pattern that matches nothing is an error naming the pattern.
pub fn discover(base: &Path, patterns: &[String]) -> Result<Vec<PathBuf>> {
    let _ = (base, patterns);
    Err(Error::Spec("source::discover: not implemented yet".into()))
}

/// Stream the records of one file (format from its extension). Bad records give
/// `Err(Error::Input{..})` with `on_error = fail`, or `Ok(Record::Skipped)` with `skip`.
/// After an unrecoverable error (corrupt zstd frame) the iterator ends.
pub fn open(
    path: &Path,
    opts: &SourceOptions,
) -> Result<Box<dyn Iterator<Item = Result<Record>> + Send>> {
    let _ = (path, opts);
    Err(Error::Spec("source::open: not implemented yet".into()))
}
