//! The dedup report: one parquet file per corpus, readable with `polars.read_parquet`.
//!
//! Columns: `source` (utf8), `row` (uint64), `kept_source` (utf8), `kept_row` (uint64),
//! `kind` (utf8: "exact" / "near"), `jaccard` (float32). Written by [`parquet_table`]
//! (zstd, row groups, committed atomically; the bytes depend only on the rows).

use super::Kind;
use crate::error::{Error, IoContext, Result};
use crate::parquet_table::{self, Column};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::RowAccessor;
use std::fs::File;
use std::path::Path;

const SCHEMA: &str = "message dedup_report {
    REQUIRED BYTE_ARRAY source (UTF8);
    REQUIRED INT64 row (INTEGER(64, false));
    REQUIRED BYTE_ARRAY kept_source (UTF8);
    REQUIRED INT64 kept_row (INTEGER(64, false));
    REQUIRED BYTE_ARRAY kind (UTF8);
    REQUIRED FLOAT jaccard;
}";

/// One row of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportRow {
    pub source: String,
    pub row: u64,
    pub kept_source: String,
    pub kept_row: u64,
    pub kind: Kind,
    pub jaccard: f32,
}

fn perr(path: &Path, e: impl std::fmt::Display) -> Error {
    parquet_table::error("dedup report", path, e)
}

/// Writes `rows` to `path` atomically.
pub fn write_report(path: &Path, rows: &[ReportRow]) -> Result<()> {
    let columns = [
        Column::Utf8(|r: &ReportRow| r.source.as_str()),
        Column::U64(|r: &ReportRow| r.row),
        Column::Utf8(|r: &ReportRow| r.kept_source.as_str()),
        Column::U64(|r: &ReportRow| r.kept_row),
        Column::Utf8(|r: &ReportRow| r.kind.as_str()),
        Column::F32(|r: &ReportRow| r.jaccard),
    ];
    parquet_table::write("dedup report", path, SCHEMA, &columns, rows, false)
}

/// Reads a report written by [`write_report`].
pub fn read_report(path: &Path) -> Result<Vec<ReportRow>> {
    let file = File::open(path).ctx(path)?;
    let reader = SerializedFileReader::new(file).map_err(|e| perr(path, e))?;
    let mut out = Vec::new();
    for row in reader.get_row_iter(None).map_err(|e| perr(path, e))? {
        let row = row.map_err(|e| perr(path, e))?;
        let kind = match row.get_string(4).map_err(|e| perr(path, e))?.as_str() {
            "exact" => Kind::Exact,
            "near" => Kind::Near,
            other => return Err(perr(path, format!("unknown kind {other:?}"))),
        };
        out.push(ReportRow {
            source: row.get_string(0).map_err(|e| perr(path, e))?.clone(),
            row: row.get_ulong(1).map_err(|e| perr(path, e))?,
            kept_source: row.get_string(2).map_err(|e| perr(path, e))?.clone(),
            kept_row: row.get_ulong(3).map_err(|e| perr(path, e))?,
            kind,
            jaccard: row.get_float(5).map_err(|e| perr(path, e))?,
        });
    }
    Ok(out)
}
