//! JSON Lines reader (`.jsonl`, `.json`, and the same through a streaming zstd decoder).
//!
//! One line is one record. The line buffer is reused, and it never holds more than
//! `max_doc_bytes + LINE_SLACK` bytes: a longer line is reported as bad input and the rest of
//! it is discarded while streaming, so one 100 MB document cannot blow up memory.

use super::filter::{text_problem, Exclude, FieldTree, Value, TEXT_SLOT};
use super::input::{Digest, Hashing, Input};
use super::{OnError, Progress, Record, SourceOptions};
use crate::error::{Error, Result};
use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Room for the JSON syntax and metadata around a document's text on one line.
pub const LINE_SLACK: u64 = 64 * 1024;
/// Read buffer sizes: large enough that syscalls and zstd calls are rare.
const READ_BUF: usize = 256 * 1024;
/// After a huge line, give the memory back instead of keeping it for the rest of the file.
const KEEP_LINE_CAPACITY: usize = 4 << 20;

/// Counts the bytes read from the file (on disk or in a bucket) and marks read errors, so a
/// failing disk or a dropped download is not mistaken for a corrupt zstd stream (the decoder
/// passes our errors through unchanged).
struct DiskReader {
    file: Box<dyn Read + Send>,
    progress: Progress,
}

#[derive(Debug)]
struct DiskError(io::Error);

impl std::fmt::Display for DiskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for DiskError {}

impl Read for DiskReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.file.read(buf) {
            Ok(n) => {
                self.progress.add_compressed(n as u64);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => Err(io::Error::new(e.kind(), DiskError(e))),
        }
    }
}

fn is_disk_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<DiskError>())
}

/// A read error as the one line naming the file: a bucket's own message (naming the URL) as
/// it came, an OS error with the path.
fn read_failure(path: &Path, e: io::Error) -> Error {
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<DiskError>())
        .and_then(|d| crate::storage::read::remote_failure(&d.0));
    inner.unwrap_or_else(|| Error::io(path, e))
}

pub(crate) struct JsonlReader {
    reader: Box<dyn BufRead + Send>,
    compressed: bool,
    /// Decodes the lines (`next`) and owns the file's path and the spec's rules.
    decoder: Decoder,
    line_cap: u64,
    line: Vec<u8>,
    /// 0-based index of the next line.
    row: u64,
    done: bool,
    progress: Progress,
}

/// Decodes the lines a deferring [`JsonlReader`] yields (on any thread, in any order): the
/// same record, or the same error / counted skip, that the reader gives without deferring.
pub struct Decoder {
    path: PathBuf,
    fields: FieldTree,
    exclude: Exclude,
    text_path: String,
    on_error: OnError,
    max_doc_bytes: u64,
}

impl Decoder {
    pub(crate) fn new(path: &Path, opts: &SourceOptions) -> Self {
        let exclude = Exclude::new(&opts.exclude);
        Decoder {
            path: path.to_path_buf(),
            fields: FieldTree::new(&opts.text, exclude.fields()),
            exclude,
            text_path: opts.text.clone(),
            on_error: opts.on_error,
            max_doc_bytes: opts.max_doc_bytes,
        }
    }

    /// `Raw` -> its record (or, with `on_error = fail`, the error naming the file and line).
    pub fn decode(&self, item: super::Deferred) -> Result<Record> {
        match item {
            super::Deferred::Ready(r) => Ok(r),
            super::Deferred::Raw {
                row,
                line,
                truncated,
            } => decode(
                &self.fields,
                &self.exclude,
                &self.text_path,
                self.max_doc_bytes,
                row,
                &line,
                truncated,
            )
            .or_else(|msg| self.bad(row, msg)),
        }
    }

    /// A bad record: a counted skip, or (with `on_error = fail`) the error naming the line.
    fn bad(&self, row: u64, msg: String) -> Result<Record> {
        match self.on_error {
            OnError::Skip => Ok(Record::Skipped { row, reason: msg }),
            OnError::Fail => Err(Error::input(&self.path, format!("line {}", row + 1), msg)),
        }
    }
}

impl JsonlReader {
    /// With `digest`, every byte read from the file is hashed into it.
    pub(crate) fn open(
        input: &Input,
        opts: &SourceOptions,
        compressed: bool,
        progress: Progress,
        digest: Option<Digest>,
    ) -> Result<Self> {
        let path = &input.shown();
        let mut file = input.reader()?;
        if let Some(digest) = digest {
            file = Box::new(Hashing::new(file, digest));
        }
        // A 0-byte .zst is an empty file, not a truncated frame: read it as plain bytes so
        // it reports "empty file" like a 0-byte .jsonl.
        let compressed = compressed && input.size > 0;
        let disk = DiskReader {
            file,
            progress: progress.clone(),
        };
        let reader: Box<dyn BufRead + Send> = if compressed {
            let decoder = zstd::Decoder::with_buffer(BufReader::with_capacity(READ_BUF, disk))
                .map_err(|e| Error::input(path, "line 1", format!("cannot start zstd: {e}")))?;
            Box::new(BufReader::with_capacity(READ_BUF, decoder))
        } else {
            Box::new(BufReader::with_capacity(READ_BUF, disk))
        };
        Ok(JsonlReader {
            reader,
            compressed,
            decoder: Decoder::new(path, opts),
            line_cap: opts.max_doc_bytes.saturating_add(LINE_SLACK),
            line: Vec::with_capacity(64 * 1024),
            row: 0,
            done: false,
            progress,
        })
    }

    /// Bytes the line buffer holds on to (to test that memory stays bounded).
    #[cfg(test)]
    pub(crate) fn line_capacity(&self) -> usize {
        self.line.capacity()
    }

    /// A bad record: a counted skip, or the error that ends the iteration.
    fn bad(&mut self, row: u64, msg: String) -> Result<Record> {
        self.ended_by(self.decoder.bad(row, msg))
    }

    /// `record`; an error ends the iteration.
    fn ended_by(&mut self, record: Result<Record>) -> Result<Record> {
        self.done |= record.is_err();
        record
    }

    /// A read error: the stream cannot go on whatever `on_error` says.
    fn fatal(&mut self, e: io::Error) -> Result<Record> {
        self.done = true;
        if self.compressed && !is_disk_error(&e) {
            let row = self.row;
            let msg = format!("corrupt zstd stream after line {row}: {e}");
            // With Skip the rest of the file counts as one skipped record.
            return self.bad(row, msg);
        }
        Err(read_failure(&self.decoder.path, e))
    }

    /// Read one line into `self.line`; returns (bytes consumed, whether it was cut at the cap).
    fn read_line(&mut self) -> io::Result<(u64, bool)> {
        if self.line.capacity() > KEEP_LINE_CAPACITY {
            self.line = Vec::with_capacity(64 * 1024);
        }
        self.line.clear();
        let n = (&mut self.reader)
            .take(self.line_cap + 1)
            .read_until(b'\n', &mut self.line)? as u64;
        if n > self.line_cap && self.line.last() != Some(&b'\n') {
            // Too long to be a document we accept: drop the rest without buffering it.
            let rest = self.reader.skip_until(b'\n')? as u64;
            return Ok((n + rest, true));
        }
        Ok((n, false))
    }
}

/// Decode one non-blank line (without its newline) into a record, or say why it is bad.
fn decode(
    fields: &FieldTree,
    exclude: &Exclude,
    text_path: &str,
    max_doc_bytes: u64,
    row: u64,
    content: &[u8],
    truncated: bool,
) -> std::result::Result<Record, String> {
    let why_truncated = |detail: String| {
        if truncated {
            format!("truncated last line (no trailing newline): {detail}")
        } else {
            detail
        }
    };
    let text =
        std::str::from_utf8(content).map_err(|e| why_truncated(format!("invalid UTF-8: {e}")))?;
    let parsed = fields
        .parse(text)
        .map_err(|e| why_truncated(format!("invalid JSON: {e}")))?;
    if parsed.kind != "an object" {
        return Err(format!("expected a JSON object, found {}", parsed.kind));
    }
    let mut values = parsed.values;
    for (i, v) in values.iter().enumerate().skip(1) {
        let s = match v {
            Value::Str(s) => Some(&**s),
            _ => None,
        };
        if exclude.matches(i - 1, s) {
            return Ok(Record::Filtered { row });
        }
    }
    let value = std::mem::replace(&mut values[TEXT_SLOT], Value::Missing);
    if let Some(msg) = text_problem(text_path, &value) {
        return Err(msg);
    }
    let Value::Str(doc) = value else {
        return Err(format!("missing text field '{text_path}'"));
    };
    if doc.len() as u64 > max_doc_bytes {
        return Err(format!(
            "document of {} bytes exceeds max_doc_bytes={max_doc_bytes}",
            doc.len()
        ));
    }
    let text = match doc {
        Cow::Borrowed(s) => s.to_owned(),
        Cow::Owned(s) => s,
    };
    Ok(Record::Doc { row, text })
}

impl Iterator for JsonlReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        // Not deferring: decode here (a fail-mode error ends the iteration).
        let item = self.next_item()?;
        let record = item.and_then(|item| self.decoder.decode(item));
        Some(self.ended_by(record))
    }
}

/// The reader in deferring mode: lines as read, undecoded.
pub(crate) struct DeferredLines(pub(crate) JsonlReader);

impl Iterator for DeferredLines {
    type Item = Result<super::Deferred>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_item()
    }
}

impl JsonlReader {
    /// The next line: `Raw` (to decode), or what the reader decides itself (a too-long line,
    /// an empty file, a read error).
    fn next_item(&mut self) -> Option<Result<super::Deferred>> {
        let ready = |r: Result<Record>| r.map(super::Deferred::Ready);
        loop {
            if self.done {
                return None;
            }
            let (n, too_long) = match self.read_line() {
                Ok(x) => x,
                Err(e) => return Some(ready(self.fatal(e))),
            };
            if n == 0 {
                self.done = true;
                if self.row == 0 {
                    // Nothing at all (a 0-byte file or a zstd stream of nothing) is far more
                    // likely a failed download than an intentionally empty shard.
                    return Some(ready(self.bad(0, "empty file".into())));
                }
                return None;
            }
            self.progress.add_uncompressed(n);
            let row = self.row;
            self.row += 1;
            if too_long {
                let msg = format!(
                    "document of {n} bytes exceeds max_doc_bytes={} (the line was not read)",
                    self.decoder.max_doc_bytes
                );
                return Some(ready(self.bad(row, msg)));
            }
            let has_newline = self.line.last() == Some(&b'\n');
            let mut content = &self.line[..];
            if has_newline {
                content = &content[..content.len() - 1];
            }
            if row == 0 {
                // Some tools start UTF-8 text files with a byte-order mark; it is not JSON.
                content = content.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(content);
            }
            if content.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            // Decoding is left to the consumer (`next`, or a `Decoder` on another thread).
            return Some(Ok(super::Deferred::Raw {
                row,
                line: content.to_vec(),
                truncated: !has_newline,
            }));
        }
    }
}
