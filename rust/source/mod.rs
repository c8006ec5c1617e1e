//! Source: find a corpus's input files and stream its documents one at a time.
//!
//! Readers for `.jsonl`, `.jsonl.zst` and `.parquet`; the text field (dotted JSON path or
//! parquet column) and row filters from the spec. Memory is bounded by one record (plus the
//! decompressor's window / one parquet page), never by the file.
//!
//! Error locations: JSONL `line N` (1-based, as an editor shows; `row = N - 1`); parquet
//! `row N` (0-based, equal to `row`), or `schema` / `footer` for a problem with the whole file
//! (with `skip`, every row the file claims is then counted as skipped). A JSONL line longer
//! than `max_doc_bytes + LINE_SLACK` is rejected without being buffered; a shorter one is
//! rejected when its decoded text exceeds `max_doc_bytes`.

mod discover;
mod filter;
mod input;
mod jsonl;
mod parquet;
#[cfg(test)]
mod tests;

pub use discover::discover;
pub use input::{Digest, Input, Location};
pub use jsonl::Decoder;
pub use jsonl::LINE_SLACK;

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

/// Input file formats, told apart by the file name's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `.jsonl` / `.json`: one JSON object a line.
    Jsonl,
    /// `.jsonl.zst` / `.json.zst` / `.zst`: the same, zstd-compressed (any number of frames).
    JsonlZst,
    /// `.parquet`: one row a record, text in a string column.
    Parquet,
}

impl Format {
    /// The format of `path`, or a spec error naming the file and the supported extensions.
    pub fn of(path: &Path) -> Result<Format> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name.ends_with(".zst") {
            Ok(Format::JsonlZst)
        } else if name.ends_with(".jsonl") || name.ends_with(".json") {
            Ok(Format::Jsonl)
        } else if name.ends_with(".parquet") {
            Ok(Format::Parquet)
        } else {
            Err(Error::Spec(format!(
                "{}: unsupported file type (expected .jsonl, .json, .jsonl.zst, .json.zst, .zst \
                 or .parquet)",
                path.display()
            )))
        }
    }
}

/// Byte counters for progress reporting, shared by every reader opened with the same handle
/// (clone it freely; updates are relaxed atomics, one per line / read call).
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    compressed: AtomicU64,
    uncompressed: AtomicU64,
}

impl Progress {
    pub fn new() -> Self {
        Self::default()
    }
    /// Bytes read from disk so far (for parquet: the column chunks opened).
    pub fn compressed_bytes(&self) -> u64 {
        self.0.compressed.load(Ordering::Relaxed)
    }
    /// Bytes of decoded input so far (JSONL: lines incl. newlines; parquet: text values).
    pub fn uncompressed_bytes(&self) -> u64 {
        self.0.uncompressed.load(Ordering::Relaxed)
    }
    fn add_compressed(&self, n: u64) {
        self.0.compressed.fetch_add(n, Ordering::Relaxed);
    }
    fn add_uncompressed(&self, n: u64) {
        self.0.uncompressed.fetch_add(n, Ordering::Relaxed);
    }
}

/// A record iterator, as returned by [`open`].
pub type Records = Box<dyn Iterator<Item = Result<Record>> + Send>;

/// An item of [`open_deferred`]: a record, or a JSONL line still to decode (by the file's
/// [`Decoder`], on any thread).
#[derive(Debug, Clone, PartialEq)]
pub enum Deferred {
    Ready(Record),
    Raw {
        row: u64,
        line: Vec<u8>,
        /// The file's last line, without a trailing newline (named in its error, if bad).
        truncated: bool,
    },
}

impl Deferred {
    /// Bytes of text it holds (for batching).
    pub fn text_len(&self) -> usize {
        match self {
            Deferred::Ready(Record::Doc { text, .. }) => text.len(),
            Deferred::Raw { line, .. } => line.len(),
            Deferred::Ready(_) => 0,
        }
    }
}

/// What [`open_deferred`] returns: the items, and the decoder of its raw lines (none for
/// parquet, whose records come decoded).
pub type DeferredRecords = (
    Box<dyn Iterator<Item = Result<Deferred>> + Send>,
    Option<Decoder>,
);

/// [`open_with_progress`], leaving JSON decoding to the caller: the reader only reads,
/// decompresses and splits lines (one thread), so decoding (UTF-8 check, JSON parse, field
/// and exclude rules, size limit) can run on many. `Decoder::decode` of each item gives
/// exactly what [`open`] gives, row for row; with `on_error = fail`, the first error in row
/// order is the one `open` would end with.
pub fn open_deferred(
    path: &Path,
    opts: &SourceOptions,
    progress: &Progress,
) -> Result<DeferredRecords> {
    Format::of(path)?; // an unknown extension is a spec error, whether the file exists or not
    open_input(&Input::local(path)?, opts, progress, None)
}

/// [`open_deferred`] of an input (local or in a bucket); with `digest`, a JSONL or zstd
/// reader hashes every byte it reads into it (parquet leaves it untouched: see `input`).
pub fn open_input(
    input: &Input,
    opts: &SourceOptions,
    progress: &Progress,
    digest: Option<Digest>,
) -> Result<DeferredRecords> {
    let shown = input.shown();
    let format = Format::of(&shown)?;
    match format {
        Format::Jsonl | Format::JsonlZst => {
            let compressed = format == Format::JsonlZst;
            let reader =
                jsonl::JsonlReader::open(input, opts, compressed, progress.clone(), digest)?;
            Ok((
                Box::new(jsonl::DeferredLines(reader)),
                Some(Decoder::new(&shown, opts)),
            ))
        }
        Format::Parquet => {
            let records = input_records(input, opts, progress)?;
            Ok((Box::new(records.map(|r| r.map(Deferred::Ready))), None))
        }
    }
}

/// Stream the records of one file (format from its extension). Bad records give
/// `Err(Error::Input{..})` with `on_error = fail`, or `Ok(Record::Skipped)` with `skip`.
/// After an unrecoverable error (corrupt zstd frame) the iterator ends.
///
/// `open` itself fails only when the file cannot be opened at all (`Error::Io`) or the spec
/// asks for something impossible (`Error::Spec`: unknown extension, excluding on a
/// non-string parquet column); bad *content* always comes through the iterator, so that
/// `skip` can count it.
pub fn open(path: &Path, opts: &SourceOptions) -> Result<Records> {
    open_with_progress(path, opts, &Progress::new())
}

/// [`open`], adding the bytes read to `progress`.
pub fn open_with_progress(
    path: &Path,
    opts: &SourceOptions,
    progress: &Progress,
) -> Result<Records> {
    Format::of(path)?; // an unknown extension is a spec error, whether the file exists or not
    input_records(&Input::local(path)?, opts, progress)
}

fn input_records(input: &Input, opts: &SourceOptions, progress: &Progress) -> Result<Records> {
    let path = &input.shown();
    match Format::of(path)? {
        Format::Jsonl => Ok(Box::new(jsonl::JsonlReader::open(
            input,
            opts,
            false,
            progress.clone(),
            None,
        )?)),
        Format::JsonlZst => Ok(Box::new(jsonl::JsonlReader::open(
            input,
            opts,
            true,
            progress.clone(),
            None,
        )?)),
        Format::Parquet => match parquet::open(input, opts, progress.clone())? {
            parquet::Opened::Reader(r) => Ok(r),
            parquet::Opened::Bad(location, msg, rows) => {
                Ok(Box::new(bad_file(path, opts.on_error, location, msg, rows)))
            }
        },
    }
}

/// The records of a file that is bad as a whole: with `fail` one error; with `skip` one
/// counted skip per row it claims to hold (at least one, so the loss is never silent).
fn bad_file(
    path: &Path,
    on_error: OnError,
    location: String,
    msg: String,
    rows: Option<u64>,
) -> impl Iterator<Item = Result<Record>> + Send {
    let path = path.display().to_string();
    let n = match on_error {
        OnError::Fail => 1,
        OnError::Skip => rows.unwrap_or(1).max(1),
    };
    (0..n).map(move |row| match on_error {
        OnError::Fail => Err(Error::Input {
            path: path.clone(),
            location: location.clone(),
            msg: msg.clone(),
        }),
        OnError::Skip => Ok(Record::Skipped {
            row,
            reason: msg.clone(),
        }),
    })
}
