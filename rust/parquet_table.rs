//! One parquet file of rows, written atomically: what the build's reports (dedup, filter) share.
//!
//! Written with parquet's low-level column writers (no arrow), zstd-compressed, in row groups
//! of [`ROW_GROUP`] rows, to `path.tmp`, fsynced and renamed. The bytes depend only on the
//! rows: parquet-rs writes no time or path. Each report owns its schema and its row type and
//! says, per column, how to read a row's value; this module owns the file.

use crate::dedup::store::{commit, tmp_path};
use crate::error::{Error, IoContext, Result};
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// Rows per parquet row group.
pub const ROW_GROUP: usize = 1 << 20;

/// How to read one column's value from a row, in the schema's column order.
pub enum Column<R> {
    /// `BYTE_ARRAY (UTF8)`.
    Utf8(fn(&R) -> &str),
    /// `INT64 (INTEGER(64, false))`: uint64 stored in INT64's bits (parquet's unsigned type).
    U64(fn(&R) -> u64),
    /// `FLOAT`.
    F32(fn(&R) -> f32),
}

/// The table's name in errors ("dedup report: ...").
pub fn error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(path, format!("{what}: {e}"))
}

/// Write `rows` to `path` atomically under `schema` (a parquet message type whose columns are
/// `columns`, in order). `empty_group`: an empty table still gets one (empty) row group.
pub fn write<R>(
    what: &str,
    path: &Path,
    schema: &str,
    columns: &[Column<R>],
    rows: &[R],
    empty_group: bool,
) -> Result<()> {
    let tmp = tmp_path(path);
    let perr = |e: &dyn std::fmt::Display| error(what, &tmp, e);
    let written = (|| {
        let schema = Arc::new(parse_message_type(schema).map_err(|e| error(what, path, e))?);
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build(),
        );
        let file = File::create(&tmp).ctx(&tmp)?;
        let mut w = SerializedFileWriter::new(file, schema, props).map_err(|e| perr(&e))?;
        let mut groups: Vec<&[R]> = rows.chunks(ROW_GROUP).collect();
        if groups.is_empty() && empty_group {
            groups.push(&[]);
        }
        for group in groups {
            let mut rg = w.next_row_group().map_err(|e| perr(&e))?;
            let mut col = 0;
            while let Some(mut c) = rg.next_column().map_err(|e| perr(&e))? {
                let written = match columns.get(col) {
                    Some(Column::Utf8(get)) => {
                        let v: Vec<ByteArray> =
                            group.iter().map(|r| ByteArray::from(get(r))).collect();
                        c.typed::<ByteArrayType>().write_batch(&v, None, None)
                    }
                    Some(Column::U64(get)) => {
                        let v: Vec<i64> = group.iter().map(|r| get(r) as i64).collect();
                        c.typed::<Int64Type>().write_batch(&v, None, None)
                    }
                    Some(Column::F32(get)) => {
                        let v: Vec<f32> = group.iter().map(get).collect();
                        c.typed::<FloatType>().write_batch(&v, None, None)
                    }
                    None => return Err(perr(&format!("the schema has more than {col} columns"))),
                };
                written.map_err(|e| perr(&e))?;
                c.close().map_err(|e| perr(&e))?;
                col += 1;
            }
            rg.close().map_err(|e| perr(&e))?;
        }
        let file = w.into_inner().map_err(|e| perr(&e))?;
        commit(file, &tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
