//! The filter report: every document a corpus's filters dropped, one parquet file per corpus
//! (`corpora/<name>/filter_report.parquet`), readable with `polars.read_parquet`.
//!
//! Columns: `source` (utf8: the input file as the manifest names it), `row` (uint64),
//! `filter` (utf8: the filter's spec name) and `reason` (utf8: the filter's reason; for
//! `decontaminate` it names the task, the item and the shared n-gram). Rows in input order
//! (files in sorted path order, then row). Written like the dedup report (low-level column
//! writers, zstd, committed atomically); the bytes depend only on the rows.

use crate::dedup::store::{commit, tmp_path};
use crate::error::{Error, IoContext, Result};
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::RowAccessor;
use parquet::schema::parser::parse_message_type;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

const ROW_GROUP: usize = 1 << 20;

const SCHEMA: &str = "message filter_report {
    REQUIRED BYTE_ARRAY source (UTF8);
    REQUIRED INT64 row (INTEGER(64, false));
    REQUIRED BYTE_ARRAY filter (UTF8);
    REQUIRED BYTE_ARRAY reason (UTF8);
}";

/// One dropped document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DroppedRow {
    pub source: String,
    pub row: u64,
    pub filter: String,
    pub reason: String,
}

fn perr(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(path, format!("filter report: {e}"))
}

/// Write `rows` to `path` atomically.
pub fn write_report(path: &Path, rows: &[DroppedRow]) -> Result<()> {
    let tmp = tmp_path(path);
    let result = write_to(&tmp, path, rows);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_to(tmp: &Path, path: &Path, rows: &[DroppedRow]) -> Result<()> {
    let schema = Arc::new(parse_message_type(SCHEMA).map_err(|e| perr(path, e))?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build(),
    );
    let file = File::create(tmp).ctx(tmp)?;
    let mut w = SerializedFileWriter::new(file, schema, props).map_err(|e| perr(tmp, e))?;
    // An empty report still has its schema (one empty row group keeps readers simple).
    let chunks: Vec<&[DroppedRow]> = if rows.is_empty() {
        vec![&[]]
    } else {
        rows.chunks(ROW_GROUP).collect()
    };
    for chunk in chunks {
        let mut rg = w.next_row_group().map_err(|e| perr(tmp, e))?;
        let mut col = 0;
        while let Some(mut c) = rg.next_column().map_err(|e| perr(tmp, e))? {
            let written = if col == 1 {
                // uint64 is stored in INT64's bits (parquet's unsigned logical type).
                let v: Vec<i64> = chunk.iter().map(|r| r.row as i64).collect();
                c.typed::<Int64Type>().write_batch(&v, None, None)
            } else {
                let v: Vec<ByteArray> = chunk
                    .iter()
                    .map(|r| {
                        ByteArray::from(match col {
                            0 => r.source.as_str(),
                            2 => r.filter.as_str(),
                            _ => r.reason.as_str(),
                        })
                    })
                    .collect();
                c.typed::<ByteArrayType>().write_batch(&v, None, None)
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

/// Read a report written by [`write_report`].
pub fn read_report(path: &Path) -> Result<Vec<DroppedRow>> {
    let file = File::open(path).ctx(path)?;
    let reader = SerializedFileReader::new(file).map_err(|e| perr(path, e))?;
    let mut out = Vec::new();
    for row in reader.get_row_iter(None).map_err(|e| perr(path, e))? {
        let row = row.map_err(|e| perr(path, e))?;
        let s = |i| {
            row.get_string(i)
                .map(|s| s.to_string())
                .map_err(|e| perr(path, e))
        };
        out.push(DroppedRow {
            source: s(0)?,
            row: row.get_ulong(1).map_err(|e| perr(path, e))?,
            filter: s(2)?,
            reason: s(3)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_and_its_bytes_depend_only_on_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            DroppedRow {
                source: "web/a.jsonl".into(),
                row: 3,
                filter: "gopher_quality".into(),
                reason: "gopher_short_doc".into(),
            },
            DroppedRow {
                source: "web/b.jsonl".into(),
                row: u64::MAX - 1,
                filter: "decontaminate".into(),
                reason: "decontaminated: piqa#7: \"a b c\"".into(),
            },
        ];
        let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        write_report(&a, &rows).unwrap();
        write_report(&b, &rows).unwrap();
        assert_eq!(read_report(&a).unwrap(), rows);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        write_report(&a, &[]).unwrap();
        assert!(read_report(&a).unwrap().is_empty());
    }
}
