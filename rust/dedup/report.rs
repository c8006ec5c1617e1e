//! The dedup report: one parquet file per corpus, readable with `polars.read_parquet`.
//!
//! Columns: `source` (utf8), `row` (uint64), `kept_source` (utf8), `kept_row` (uint64),
//! `kind` (utf8: "exact" / "near"), `jaccard` (float32). Written with parquet's low-level
//! column writers (no arrow), zstd-compressed, in row groups of [`ROW_GROUP`] rows, committed
//! atomically (tmp + fsync + rename). The bytes depend only on the rows: parquet-rs writes no
//! time or path.

use super::store::{commit, tmp_path};
use super::Kind;
use crate::error::{Error, IoContext, Result};
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::RowAccessor;
use parquet::schema::parser::parse_message_type;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// Rows per parquet row group.
pub const ROW_GROUP: usize = 1 << 20;

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
    Error::io(path, format!("dedup report: {e}"))
}

/// Writes `rows` to `path` atomically.
pub fn write_report(path: &Path, rows: &[ReportRow]) -> Result<()> {
    let tmp = tmp_path(path);
    let result = write_to(&tmp, path, rows);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_to(tmp: &Path, path: &Path, rows: &[ReportRow]) -> Result<()> {
    let schema = Arc::new(parse_message_type(SCHEMA).map_err(|e| perr(path, e))?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build(),
    );
    let file = File::create(tmp).ctx(tmp)?;
    let mut w = SerializedFileWriter::new(file, schema, props).map_err(|e| perr(tmp, e))?;
    for chunk in rows.chunks(ROW_GROUP) {
        let mut rg = w.next_row_group().map_err(|e| perr(tmp, e))?;
        let mut col = 0;
        while let Some(mut c) = rg.next_column().map_err(|e| perr(tmp, e))? {
            let written = match col {
                0 | 2 | 4 => {
                    let v: Vec<ByteArray> = chunk
                        .iter()
                        .map(|r| match col {
                            0 => ByteArray::from(r.source.as_str()),
                            2 => ByteArray::from(r.kept_source.as_str()),
                            _ => ByteArray::from(r.kind.as_str()),
                        })
                        .collect();
                    c.typed::<ByteArrayType>().write_batch(&v, None, None)
                }
                1 | 3 => {
                    // uint64 is stored in INT64's bits (parquet's unsigned logical type).
                    let v: Vec<i64> = chunk
                        .iter()
                        .map(|r| if col == 1 { r.row } else { r.kept_row } as i64)
                        .collect();
                    c.typed::<Int64Type>().write_batch(&v, None, None)
                }
                _ => {
                    let v: Vec<f32> = chunk.iter().map(|r| r.jaccard).collect();
                    c.typed::<FloatType>().write_batch(&v, None, None)
                }
            };
            written.map_err(|e| perr(tmp, e))?;
            c.close().map_err(|e| perr(tmp, e))?;
            col += 1;
        }
        rg.close().map_err(|e| perr(tmp, e))?;
    }
    let file = w.into_inner().map_err(|e| perr(tmp, e))?;
    commit(file, tmp, path)
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
