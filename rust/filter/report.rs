//! The filter report: every document a corpus's filters dropped, one parquet file per corpus
//! (`corpora/<name>/filter_report.parquet`), readable with `polars.read_parquet`.
//!
//! Columns: `source` (utf8: the input file as the manifest names it), `row` (uint64),
//! `filter` (utf8: the filter's spec name) and `reason` (utf8: the filter's reason; for
//! `decontaminate` it names the task, the item and the shared n-gram). Rows in input order
//! (files in sorted path order, then row). Written by [`parquet_table`] (zstd, row groups,
//! committed atomically); the bytes depend only on the rows.

use crate::error::{Error, IoContext, Result};
use crate::parquet_table::{self, Column};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::RowAccessor;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::Path;

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
    parquet_table::error("filter report", path, e)
}

/// Write `rows` to `path` atomically. An empty report still has its schema (one empty row
/// group keeps readers simple).
pub fn write_report(path: &Path, rows: &[DroppedRow]) -> Result<()> {
    let columns = [
        Column::Utf8(|r: &DroppedRow| r.source.as_str()),
        Column::U64(|r: &DroppedRow| r.row),
        Column::Utf8(|r: &DroppedRow| r.filter.as_str()),
        Column::Utf8(|r: &DroppedRow| r.reason.as_str()),
    ];
    parquet_table::write("filter report", path, SCHEMA, &columns, rows, true)
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
