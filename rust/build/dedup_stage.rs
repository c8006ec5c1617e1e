//! The build's dedup stage, between discovery and tokenization: fingerprint every input file
//! (one committed store per file, so a resumed build skips finished files), then find
//! duplicates over the corpus with the keep-the-earliest rule and commit that decision to
//! staging, where the tokenize stage of any process (thread or Ray task) reads its file's
//! removed rows. Nothing removed is ever tokenized.

use super::{
    display_path, BuildConfig, CorpusConfig, Ctx, DedupMode, DedupWork, FileWork, Removed,
};
use crate::dedup::{self, DedupParams, FingerprintStore, FingerprintWriter, Fingerprinter, Kind};
use crate::error::{Error, IoContext, Result};
use crate::shard::write_atomic;
use crate::source::{self, Record};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

/// The spec's `[dedup]` table (as resolved by Python) -> the engine's parameters.
pub fn params(table: &serde_json::Value, mode: DedupMode) -> Result<DedupParams> {
    let mut p = DedupParams::default();
    let get = |key: &str| table.get(key).and_then(|v| v.as_u64());
    if let Some(v) = get("ngram") {
        p.ngram = v as usize;
    }
    if let Some(v) = get("permutations") {
        p.permutations = v as usize;
    }
    if let Some(v) = get("bands") {
        p.bands = v as usize;
    }
    if let Some(v) = get("rows") {
        p.rows = v as usize;
    }
    if let Some(v) = table.get("threshold").and_then(|v| v.as_f64()) {
        p.threshold = v;
    }
    if let Some(v) = get("memory") {
        p.memory_bytes = v;
    }
    p.near = mode == DedupMode::Near;
    p.validate()?;
    Ok(p)
}

/// The committed decision: removed rows, sorted by (file, row), as 16-byte records
/// `file u32, kind u32 (1 exact, 2 near), row u64` (little-endian) after a header. Written
/// last, after the report: its presence means the corpus's dedup is done.
const DECISION: &str = "dedup.bin";
const DECISION_MAGIC: &[u8; 8] = b"TLDEDUP1";
const HEADER: usize = 16;
const RECORD: usize = 16;

pub fn report_path(dir: &Path) -> PathBuf {
    dir.join("dedup_report.parquet")
}

/// Find the corpus's duplicates (keep the earliest) from its committed fingerprint stores and
/// commit the decision and the report under `dir` (the corpus's staging dir).
pub fn decide(
    cfg: &BuildConfig,
    corpus: &CorpusConfig,
    dir: &Path,
    files: &[PathBuf],
) -> Result<DedupWork> {
    let decision = dir.join(DECISION);
    if let Ok(map) = Decision::open(&decision) {
        let near = map.near();
        return Ok(DedupWork {
            resumed: true,
            exact: map.len() as u64 - near,
            near,
        });
    }
    let params = params(&cfg.dedup, corpus.dedup)?;
    let fp_dir = dir.join("fingerprints");
    let mut stores = Vec::with_capacity(files.len());
    for i in 0..files.len() {
        let path = store_path(&fp_dir, i);
        // A missing store is a stage run out of order, not something to silently skip.
        FingerprintStore::open(&path, &params)?;
        stores.push(path);
    }
    let work = dir.join("dedup-work");
    let result = dedup::find_duplicates(&stores, &params, &work)?;
    let _ = std::fs::remove_dir_all(&work);
    let sources: Vec<String> = files.iter().map(|f| display_path(corpus, f)).collect();
    crate::dedup::write_report(&report_path(dir), &result.report_rows(&sources)?)?;
    let mut rows: Vec<(u32, u32, u64)> = result
        .removals
        .iter()
        .map(|r| {
            let kind = match r.kind {
                Kind::Exact => 1,
                Kind::Near => 2,
            };
            (r.removed.file, kind, r.removed.row)
        })
        .collect();
    rows.sort_unstable_by_key(|&(file, _, row)| (file, row));
    let mut bytes = Vec::with_capacity(HEADER + RECORD * rows.len());
    bytes.extend_from_slice(DECISION_MAGIC);
    bytes.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    let mut near = 0;
    for (file, kind, row) in rows.iter().copied() {
        near += u64::from(kind == 2);
        bytes.extend_from_slice(&file.to_le_bytes());
        bytes.extend_from_slice(&kind.to_le_bytes());
        bytes.extend_from_slice(&row.to_le_bytes());
    }
    write_atomic(&decision, &bytes)?;
    Ok(DedupWork {
        resumed: false,
        exact: rows.len() as u64 - near,
        near,
    })
}

/// The rows of input file `file` that the committed decision removes. Memory-maps the
/// decision and binary-searches the file's range, so a task reads only its own rows.
pub fn removed_rows(dir: &Path, file: usize) -> Result<HashMap<u64, Removed>> {
    let map = Decision::open(&dir.join(DECISION))?;
    let file = u32::try_from(file)
        .map_err(|_| Error::Spec(format!("input file #{file}: too many files")))?;
    let start = map.lower_bound(file);
    let end = map.lower_bound(file.saturating_add(1));
    let mut out = HashMap::with_capacity(end - start);
    for i in start..end {
        let (_, kind, row) = map.record(i);
        out.insert(
            row,
            if kind == 2 {
                Removed::Near
            } else {
                Removed::Exact
            },
        );
    }
    Ok(out)
}

struct Decision {
    map: memmap2::Mmap,
}

impl Decision {
    fn open(path: &Path) -> Result<Decision> {
        let f = std::fs::File::open(path)
            .map_err(|e| Error::io(path, format!("{e} (the corpus's dedup stage has not run)")))?;
        // SAFETY: the decision is committed by rename and never written in place; a file
        // replaced under us keeps its old inode mapped.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        let ok = map.len() >= HEADER
            && &map[..8] == DECISION_MAGIC
            && u64::from_le_bytes(map[8..16].try_into().expect("8 bytes")) as usize
                == (map.len() - HEADER) / RECORD
            && (map.len() - HEADER).is_multiple_of(RECORD);
        if !ok {
            return Err(Error::shard(
                path,
                "corrupt dedup decision (delete it to redo the dedup)",
            ));
        }
        Ok(Decision { map })
    }
    fn len(&self) -> usize {
        (self.map.len() - HEADER) / RECORD
    }
    fn record(&self, i: usize) -> (u32, u32, u64) {
        let r = &self.map[HEADER + i * RECORD..HEADER + (i + 1) * RECORD];
        (
            u32::from_le_bytes(r[0..4].try_into().expect("4 bytes")),
            u32::from_le_bytes(r[4..8].try_into().expect("4 bytes")),
            u64::from_le_bytes(r[8..16].try_into().expect("8 bytes")),
        )
    }
    fn near(&self) -> u64 {
        (0..self.len()).filter(|&i| self.record(i).1 == 2).count() as u64
    }
    /// The first record whose file is >= `file`.
    fn lower_bound(&self, file: u32) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.record(mid).0 < file {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

fn store_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("{index:06}.fp"))
}

pub fn fingerprint_file(
    ctx: &Ctx,
    corpus: &CorpusConfig,
    params: &DedupParams,
    dir: &Path,
    index: usize,
    file: &Path,
) -> Result<FileWork> {
    let path = store_path(dir, index);
    let bytes = std::fs::metadata(file).ctx(file)?.len();
    // A committed store made with these parameters is this file's finished work.
    if let Ok(store) = FingerprintStore::open(&path, params) {
        ctx.progress.files_done.fetch_add(1, Relaxed);
        return Ok(FileWork {
            resumed: true,
            bytes,
            docs: store.len() as u64,
            ..Default::default()
        });
    }
    if ctx.progress.cancelled() {
        return Err(Error::Interrupted);
    }
    let mut writer = FingerprintWriter::create(&path, params)?;
    let mut hasher = Fingerprinter::new(params);
    let mut docs = 0;
    for record in source::open(file, &corpus.source_options())? {
        // Bad records are reported (or counted) by the tokenize pass, which reads the same rows.
        if let Record::Doc { row, text } = record? {
            writer.push(row, &hasher.fingerprint(&text))?;
            ctx.progress.docs.fetch_add(1, Relaxed);
            docs += 1;
        }
    }
    writer.finish()?;
    ctx.progress.files_done.fetch_add(1, Relaxed);
    Ok(FileWork {
        resumed: false,
        bytes,
        docs,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_decision(dir: &Path, rows: &[(u32, u32, u64)]) {
        let mut bytes = DECISION_MAGIC.to_vec();
        bytes.extend_from_slice(&(rows.len() as u64).to_le_bytes());
        for &(file, kind, row) in rows {
            bytes.extend_from_slice(&file.to_le_bytes());
            bytes.extend_from_slice(&kind.to_le_bytes());
            bytes.extend_from_slice(&row.to_le_bytes());
        }
        std::fs::write(dir.join(DECISION), bytes).unwrap();
    }

    #[test]
    fn removed_rows_are_those_of_the_asked_file() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [(0, 1, 3), (0, 2, 9), (2, 2, 0), (2, 1, 7), (5, 1, 1)];
        write_decision(dir.path(), &rows);
        let got = |file| {
            let mut v: Vec<_> = removed_rows(dir.path(), file)
                .unwrap()
                .into_iter()
                .collect();
            v.sort_by_key(|&(row, _)| row);
            v
        };
        assert_eq!(got(0), vec![(3, Removed::Exact), (9, Removed::Near)]);
        assert!(got(1).is_empty());
        assert_eq!(got(2), vec![(0, Removed::Near), (7, Removed::Exact)]);
        assert_eq!(got(5), vec![(1, Removed::Exact)]);
        assert!(got(6).is_empty());
    }

    #[test]
    fn missing_or_truncated_decision_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = removed_rows(dir.path(), 0).unwrap_err().to_string();
        assert!(
            err.contains("dedup.bin") && err.contains("has not run"),
            "{err}"
        );
        write_decision(dir.path(), &[(0, 1, 3)]);
        let path = dir.path().join(DECISION);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = removed_rows(dir.path(), 0).unwrap_err().to_string();
        assert!(err.contains("corrupt dedup decision"), "{err}");
    }
}
