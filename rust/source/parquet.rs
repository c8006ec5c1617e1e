//! Parquet reader (StarCoderData) on the `parquet` crate's column API, without arrow.
//!
//! Only the text column (and any exclude columns) are decoded, one row group at a time in
//! small batches, so memory is bounded by a few pages, never by the file. Values are
//! reference-counted slices of the decompressed page; the only copy is into the `String`
//! handed out. A file in a bucket is read through range reads (`input::Chunks`); a failed
//! remote read ends the file with its own error, never counted as a corrupt row group.

use super::filter::Exclude;
use super::input::{Chunks, Input, RemoteChunks};
use super::{OnError, Progress, Record, SourceOptions};
use crate::error::{Error, Result};
use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::column::reader::{get_typed_column_reader, ColumnReaderImpl};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::schema::types::{ColumnDescriptor, SchemaDescriptor};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Once};

/// Rows decoded per call: enough to amortise the call, few enough to keep pages short-lived.
const BATCH_ROWS: usize = 128;

thread_local! {
    /// Set while a guarded parquet call runs on this thread: its panics are expected input
    /// errors, reported (or counted) by the caller, so the panic hook keeps quiet about them.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Wraps the process's panic hook (once) so that panics inside [`guard`] print nothing; every
/// other panic still goes to the previous hook.
fn quiet_guarded_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(wrap_panic_hook);
}

fn wrap_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !GUARDED.with(Cell::get) {
            previous(info);
        }
    }));
}

/// Run a parquet call, turning both its errors and its panics (the crate asserts on some
/// malformed inputs) into a message: input must never crash the process.
fn guard<T>(f: impl FnOnce() -> parquet::errors::Result<T>) -> std::result::Result<T, String> {
    quiet_guarded_panics();
    let was = GUARDED.with(|g| g.replace(true));
    let out = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("decoder panicked")
            .to_string()),
    }
}

/// A decoded batch of one column: `None` is a null.
struct Column {
    reader: ColumnReaderImpl<ByteArrayType>,
    max_def: i16,
    def: Vec<i16>,
    values: Vec<ByteArray>,
    rows: Vec<Option<ByteArray>>,
}

impl Column {
    fn read_batch(&mut self, n: usize) -> std::result::Result<usize, String> {
        self.def.clear();
        self.values.clear();
        self.rows.clear();
        let def = (self.max_def > 0).then_some(&mut self.def);
        let reader = &mut self.reader;
        let values = &mut self.values;
        let (records, _, _) = guard(|| reader.read_records(n, def, None, values))?;
        let mut vals = self.values.drain(..);
        for r in 0..records {
            let present = self.max_def == 0 || self.def.get(r) == Some(&self.max_def);
            self.rows.push(if present { vals.next() } else { None });
        }
        Ok(records)
    }
}

/// Describe a column's type for error messages, e.g. `INT64 (logical type: none)`.
fn describe(col: &ColumnDescriptor) -> String {
    let logical = match col.logical_type() {
        Some(l) => format!("{l:?}"),
        None if col.converted_type() != ConvertedType::NONE => col.converted_type().to_string(),
        None => "none".into(),
    };
    format!("{} (logical type: {logical})", col.physical_type())
}

fn is_string_column(col: &ColumnDescriptor) -> bool {
    let logical_ok = match col.logical_type() {
        Some(LogicalType::String | LogicalType::Json | LogicalType::Enum) => true,
        Some(_) => false,
        // Plain binary: accepted, each value is checked to be UTF-8.
        None => matches!(
            col.converted_type(),
            ConvertedType::NONE | ConvertedType::UTF8 | ConvertedType::JSON | ConvertedType::ENUM
        ),
    };
    col.physical_type() == PhysicalType::BYTE_ARRAY && logical_ok && col.max_rep_level() == 0
}

/// Index of the top-level column `name`, or why it cannot serve as a string column.
fn find_column(schema: &SchemaDescriptor, name: &str) -> std::result::Result<usize, String> {
    let top: Vec<&str> = schema
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name())
        .collect();
    if !top.contains(&name) {
        return Err(format!(
            "wrong parquet schema: no column '{name}'; available columns: {}",
            top.join(", ")
        ));
    }
    let found = schema
        .columns()
        .iter()
        .position(|c| c.path().parts().len() == 1 && c.path().parts()[0] == name);
    match found {
        None => Err(format!(
            "wrong parquet schema: column '{name}' is a nested group, expected a string column"
        )),
        Some(i) if !is_string_column(&schema.columns()[i]) => Err(format!(
            "wrong parquet schema: column '{name}' is {}, expected a string (BYTE_ARRAY, UTF8)",
            describe(&schema.columns()[i])
        )),
        Some(i) => Ok(i),
    }
}

pub(crate) struct ParquetReader {
    path: PathBuf,
    file: SerializedFileReader<Chunks>,
    /// A remote file's range reader, asked after a failure whether the store failed.
    remote: Option<Arc<RemoteChunks>>,
    text_name: String,
    /// Leaf indices: the text column first, then one per exclude rule (None: not in file).
    leaves: Vec<Option<usize>>,
    exclude: Exclude,
    on_error: OnError,
    max_doc_bytes: u64,
    next_group: usize,
    group_rows_left: u64,
    columns: Vec<Option<Column>>,
    batch_len: usize,
    batch_pos: usize,
    /// 0-based index of the next row.
    row: u64,
    /// Rows still to report as skipped after an unreadable row group.
    pending_skips: u64,
    pending_reason: String,
    done: bool,
    progress: Progress,
}

/// What opening a parquet file gave: a reader, or a problem that makes every row bad.
pub(crate) enum Opened {
    Reader(Box<ParquetReader>),
    /// (location, message, rows the file claims to hold if known)
    Bad(String, String, Option<u64>),
}

pub(crate) fn open(input: &Input, opts: &SourceOptions, progress: Progress) -> Result<Opened> {
    let path = &input.shown();
    if input.size == 0 {
        return Ok(Opened::Bad("row 0".into(), "empty file".into(), None));
    }
    let chunks = input.chunks()?;
    let remote = chunks.handle();
    let file = match guard(|| SerializedFileReader::new(chunks)) {
        Ok(f) => f,
        Err(e) => {
            if let Some(failed) = remote.as_ref().and_then(|r| r.failure()) {
                return Err(failed);
            }
            let msg = format!("not a readable parquet file: {e}");
            return Ok(Opened::Bad("footer".into(), msg, None));
        }
    };
    let meta = file.metadata();
    let schema = meta.file_metadata().schema_descr();
    let rows = u64::try_from(meta.file_metadata().num_rows()).unwrap_or(0);
    let text = match find_column(schema, &opts.text) {
        Ok(i) => i,
        Err(msg) => return Ok(Opened::Bad("schema".into(), msg, Some(rows))),
    };
    let exclude = Exclude::new(&opts.exclude);
    let mut leaves = vec![Some(text)];
    for name in exclude.fields() {
        let leaf = schema
            .columns()
            .iter()
            .position(|c| c.path().parts().len() == 1 && c.path().parts()[0] == name);
        if let Some(i) = leaf {
            if !is_string_column(&schema.columns()[i]) {
                return Err(Error::Spec(format!(
                    "exclude on parquet column '{name}' of {}: {} is unsupported \
                     (only string columns can be excluded on)",
                    path.display(),
                    describe(&schema.columns()[i])
                )));
            }
        }
        // A column the file lacks excludes nothing, as a missing JSON field does.
        leaves.push(leaf);
    }
    Ok(Opened::Reader(Box::new(ParquetReader {
        path: path.to_path_buf(),
        file,
        remote,
        text_name: opts.text.clone(),
        leaves,
        exclude,
        on_error: opts.on_error,
        max_doc_bytes: opts.max_doc_bytes,
        next_group: 0,
        group_rows_left: 0,
        columns: Vec::new(),
        batch_len: 0,
        batch_pos: 0,
        row: 0,
        pending_skips: 0,
        pending_reason: String::new(),
        done: false,
        progress,
    })))
}

impl ParquetReader {
    fn bad(&mut self, row: u64, msg: String) -> Result<Record> {
        match self.on_error {
            OnError::Skip => Ok(Record::Skipped { row, reason: msg }),
            OnError::Fail => {
                self.done = true;
                Err(Error::input(&self.path, format!("row {row}"), msg))
            }
        }
    }

    /// The rest of the current row group cannot be decoded: fail, or skip each of its rows.
    fn group_failed(&mut self, msg: String) -> Result<Record> {
        if let Some(failed) = self.remote.as_ref().and_then(|r| r.failure()) {
            self.done = true;
            return Err(failed);
        }
        let msg = format!(
            "corrupt parquet data in row group {}: {msg}",
            self.next_group.saturating_sub(1)
        );
        self.columns.clear();
        self.batch_len = 0;
        self.batch_pos = 0;
        if self.on_error == OnError::Fail {
            return self.bad(self.row, msg);
        }
        self.pending_skips = self.group_rows_left;
        self.group_rows_left = 0;
        self.pending_reason = msg;
        self.next_pending()
    }

    fn next_pending(&mut self) -> Result<Record> {
        self.pending_skips -= 1;
        self.row += 1;
        Ok(Record::Skipped {
            row: self.row - 1,
            reason: self.pending_reason.clone(),
        })
    }

    fn open_group(&mut self) -> std::result::Result<(), String> {
        let g = self.next_group;
        self.next_group += 1;
        let rows = self.file.metadata().row_group(g).num_rows();
        self.group_rows_left = u64::try_from(rows).unwrap_or(0);
        let file = &self.file;
        let group = guard(|| file.get_row_group(g))?;
        self.columns.clear();
        for leaf in self.leaves.clone() {
            let Some(i) = leaf else {
                self.columns.push(None);
                continue;
            };
            let chunk = group.metadata().column(i);
            self.progress
                .add_compressed(u64::try_from(chunk.compressed_size()).unwrap_or(0));
            let max_def = chunk.column_descr().max_def_level();
            let reader = guard(|| group.get_column_reader(i))?;
            self.columns.push(Some(Column {
                reader: get_typed_column_reader::<ByteArrayType>(reader),
                max_def,
                def: Vec::with_capacity(BATCH_ROWS),
                values: Vec::with_capacity(BATCH_ROWS),
                rows: Vec::with_capacity(BATCH_ROWS),
            }));
        }
        Ok(())
    }

    fn read_batch(&mut self) -> std::result::Result<(), String> {
        let n = usize::try_from(self.group_rows_left)
            .unwrap_or(BATCH_ROWS)
            .min(BATCH_ROWS);
        for col in self.columns.iter_mut().flatten() {
            let got = col.read_batch(n)?;
            if got != n {
                return Err(format!(
                    "a column chunk ended {} rows early",
                    self.group_rows_left - got as u64
                ));
            }
        }
        self.batch_len = n;
        self.batch_pos = 0;
        self.group_rows_left -= n as u64;
        Ok(())
    }

    /// The record at `batch_pos` of the decoded batch.
    fn decode_row(&mut self) -> Result<Record> {
        let i = self.batch_pos;
        self.batch_pos += 1;
        let row = self.row;
        self.row += 1;
        for (k, col) in self.columns.iter().enumerate().skip(1) {
            let value = col.as_ref().and_then(|c| c.rows.get(i).cloned().flatten());
            let s = value
                .as_ref()
                .and_then(|v| std::str::from_utf8(v.data()).ok());
            if self.exclude.matches(k - 1, s) {
                return Ok(Record::Filtered { row });
            }
        }
        let value = self
            .columns
            .first()
            .and_then(|c| c.as_ref())
            .and_then(|c| c.rows.get(i).cloned().flatten());
        let Some(value) = value else {
            let msg = format!("null value in text column '{}'", self.text_name);
            return self.bad(row, msg);
        };
        let bytes = value.data();
        if bytes.len() as u64 > self.max_doc_bytes {
            let msg = format!(
                "document of {} bytes exceeds max_doc_bytes={}",
                bytes.len(),
                self.max_doc_bytes
            );
            return self.bad(row, msg);
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                self.progress.add_uncompressed(bytes.len() as u64);
                Ok(Record::Doc {
                    row,
                    text: s.to_owned(),
                })
            }
            Err(e) => self.bad(row, format!("invalid UTF-8: {e}")),
        }
    }
}

impl Iterator for ParquetReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if self.pending_skips > 0 {
                return Some(self.next_pending());
            }
            if self.batch_pos < self.batch_len {
                return Some(self.decode_row());
            }
            if self.group_rows_left > 0 {
                if let Err(e) = self.read_batch() {
                    return Some(self.group_failed(e));
                }
                continue;
            }
            if self.next_group < self.file.metadata().num_row_groups() {
                if let Err(e) = self.open_group() {
                    return Some(self.group_failed(e));
                }
                continue;
            }
            self.done = true;
            return None;
        }
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    thread_local! {
        static REPORTED: Cell<u32> = const { Cell::new(0) };
    }

    /// A decoder panic becomes the error message and reaches no panic hook (nothing printed);
    /// a panic outside a guarded call still does.
    #[test]
    fn guarded_panics_are_errors_and_stay_quiet() {
        let original = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| REPORTED.with(|r| r.set(r.get() + 1))));
        wrap_panic_hook();
        let err = guard::<()>(|| panic!("decoder assertion")).unwrap_err();
        let quiet = REPORTED.with(Cell::get);
        let _ = catch_unwind(|| panic!("a real bug"));
        let loud = REPORTED.with(Cell::get);
        std::panic::set_hook(original);
        assert_eq!(err, "decoder assertion");
        assert_eq!((quiet, loud), (0, 1));
    }
}
