//! The on-disk fingerprint store: one file per input file, committed atomically.
//!
//! Layout (all little-endian), fixed-size records so the dedup step can read any document's
//! signature at random through a memory map:
//!
//! ```text
//! header  "TLFPRNT1"  u32 version  u32 permutations  u64 params_key            (24 bytes)
//! record  u64 row  u128 exact  u32 shingles  u32 x permutations minhash      (28 + 4P bytes)
//! footer  u64 records  u64 xxh3_64(header + records)  "TLFPEND1"             (24 bytes)
//! ```
//!
//! `params_key` hashes what the fingerprints depend on (ngram, permutations, seed,
//! exact_normalize), so a store written with other parameters is refused instead of silently
//! mixed in. The writer writes `<path>.tmp`, fsyncs, renames over `<path>` and fsyncs the
//! directory: a store that exists under its final name is complete, which is what makes a
//! killed build resumable (redo every input file without a store).

use super::minhash::Fingerprint;
use super::DedupParams;
use crate::error::{Error, IoContext, Result};
use memmap2::Mmap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

const MAGIC: &[u8; 8] = b"TLFPRNT1";
const END_MAGIC: &[u8; 8] = b"TLFPEND1";
const VERSION: u32 = 1;
const HEADER: usize = 24;
const FOOTER: usize = 24;

pub(crate) fn params_key(p: &DedupParams) -> u64 {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&(p.ngram as u64).to_le_bytes());
    b.extend_from_slice(&(p.permutations as u64).to_le_bytes());
    b.extend_from_slice(&p.seed.to_le_bytes());
    b.push(p.exact_normalize as u8);
    xxh3_64(&b)
}

fn record_size(permutations: usize) -> usize {
    28 + 4 * permutations
}

/// `<path>.tmp`, next to `path` (same file system, so the rename is atomic).
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// fsync `file`, rename `tmp` to `path`, fsync the directory.
pub(crate) fn commit(file: File, tmp: &Path, path: &Path) -> Result<()> {
    file.sync_all().ctx(tmp)?;
    drop(file);
    fs::rename(tmp, path).ctx(path)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        // Directory fsync makes the rename durable; not supported everywhere, so best effort.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes the fingerprints of one input file, in row order.
pub struct FingerprintWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    hasher: Xxh3,
    permutations: usize,
    records: u64,
    last_row: Option<u64>,
    buf: Vec<u8>,
}

impl FingerprintWriter {
    /// Starts `<path>.tmp` (truncating a leftover from a killed run).
    pub fn create(path: impl AsRef<Path>, params: &DedupParams) -> Result<Self> {
        params.validate()?;
        let path = path.as_ref().to_path_buf();
        let tmp = tmp_path(&path);
        let file = File::create(&tmp).ctx(&tmp)?;
        let mut w = FingerprintWriter {
            path,
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            hasher: Xxh3::new(),
            permutations: params.permutations,
            records: 0,
            last_row: None,
            buf: Vec::with_capacity(record_size(params.permutations)),
        };
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(params.permutations as u32).to_le_bytes());
        header.extend_from_slice(&params_key(params).to_le_bytes());
        w.write(&header)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        match self.out.as_mut() {
            Some(out) => out.write_all(bytes).ctx(&self.tmp),
            None => Err(Error::io(&self.tmp, "fingerprint writer already finished")),
        }
    }

    /// Appends the fingerprint of record `row`; rows must be strictly increasing.
    pub fn push(&mut self, row: u64, fp: &Fingerprint) -> Result<()> {
        if self.last_row.is_some_and(|last| row <= last) {
            return Err(Error::io(
                &self.path,
                format!(
                    "fingerprint rows out of order: {row} after {:?}",
                    self.last_row
                ),
            ));
        }
        if fp.minhash.len() != self.permutations {
            return Err(Error::io(
                &self.path,
                format!(
                    "signature has {} values, the store holds {}",
                    fp.minhash.len(),
                    self.permutations
                ),
            ));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&row.to_le_bytes());
        buf.extend_from_slice(&fp.exact.to_le_bytes());
        buf.extend_from_slice(&fp.shingles.to_le_bytes());
        for v in &fp.minhash {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        let r = self.write(&buf);
        self.buf = buf;
        r?;
        self.last_row = Some(row);
        self.records += 1;
        Ok(())
    }

    /// Writes the footer and commits the store under its final name; returns the record count.
    pub fn finish(mut self) -> Result<u64> {
        let digest = self.hasher.digest();
        let mut footer = Vec::with_capacity(FOOTER);
        footer.extend_from_slice(&self.records.to_le_bytes());
        footer.extend_from_slice(&digest.to_le_bytes());
        footer.extend_from_slice(END_MAGIC);
        let mut out = self
            .out
            .take()
            .ok_or_else(|| Error::io(&self.tmp, "fingerprint writer already finished"))?;
        out.write_all(&footer).ctx(&self.tmp)?;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.error()))?;
        commit(file, &self.tmp, &self.path)?;
        Ok(self.records)
    }
}

impl Drop for FingerprintWriter {
    fn drop(&mut self) {
        // An unfinished store must never be mistaken for a complete one; the tmp name already
        // guarantees that, removing it just keeps the work dir clean.
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A fingerprint store opened for reading (memory-mapped, checksum verified on open).
pub struct FingerprintStore {
    path: PathBuf,
    map: Mmap,
    permutations: usize,
    records: usize,
}

/// One record, borrowed from the map.
#[derive(Clone, Copy, Debug)]
pub struct FingerprintRef<'a> {
    pub row: u64,
    pub exact: u128,
    pub shingles: u32,
    /// Little-endian u32 values.
    pub minhash_le: &'a [u8],
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}
fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}
fn le_u128(b: &[u8]) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    u128::from_le_bytes(a)
}

impl FingerprintStore {
    /// Opens and verifies a store written with the same fingerprint parameters (reads it all:
    /// checksum and row order).
    pub fn open(path: impl AsRef<Path>, params: &DedupParams) -> Result<Self> {
        Self::open_checked(path, params, true)
    }

    /// Opens a store checking its header, parameters and size only, without reading its
    /// records: for stages that read a few records at random (the band tasks, which take
    /// exact hashes and band keys from the key index); the stage that commits the decision
    /// opens the stores with [`FingerprintStore::open`].
    pub fn open_lazy(path: impl AsRef<Path>, params: &DedupParams) -> Result<Self> {
        Self::open_checked(path, params, false)
    }

    fn open_checked(path: impl AsRef<Path>, params: &DedupParams, verify: bool) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let shown = path.clone();
        let bad = |msg: String| Error::shard(&shown, format!("fingerprint store: {msg}"));
        let file = File::open(&path).ctx(&path)?;
        // SAFETY: stores are written once under a tmp name and renamed into place, never
        // modified afterwards; the map is read-only.
        let map = unsafe { Mmap::map(&file) }.ctx(&path)?;
        if map.len() < HEADER + FOOTER {
            return Err(bad(format!("truncated ({} bytes)", map.len())));
        }
        if &map[..8] != MAGIC || &map[map.len() - 8..] != END_MAGIC {
            return Err(bad(
                "bad magic (not a fingerprint store, or truncated)".into()
            ));
        }
        if le_u32(&map[8..]) != VERSION {
            return Err(bad(format!("unknown version {}", le_u32(&map[8..]))));
        }
        let permutations = le_u32(&map[12..]) as usize;
        if permutations != params.permutations || le_u64(&map[16..]) != params_key(params) {
            return Err(bad(
                "written with other dedup parameters (ngram / permutations / seed / \
                 exact_normalize); delete it to recompute"
                    .into(),
            ));
        }
        let body = map.len() - FOOTER;
        let f = &map[body..];
        let records = le_u64(f);
        let checksum = le_u64(&f[8..]);
        let rs = record_size(permutations) as u64;
        if (body - HEADER) as u64 != records.saturating_mul(rs) {
            return Err(bad(format!(
                "size {} does not match {records} records",
                map.len()
            )));
        }
        let store = FingerprintStore {
            path,
            map,
            permutations,
            records: records as usize,
        };
        if !verify {
            // Read at random, a record at a time: no readahead or fault-around, which would
            // fetch 64 KiB around every 540-byte signature (from a network filesystem, too).
            #[cfg(unix)]
            let _ = store.map.advise(memmap2::Advice::Random);
            return Ok(store);
        }
        if xxh3_64(&store.map[..body]) != checksum {
            return Err(bad("checksum mismatch".into()));
        }
        for i in 1..store.records {
            if store.get(i).row <= store.get(i - 1).row {
                return Err(bad(format!("rows out of order at record {i}")));
            }
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Record `i` (`i < len()`; panics otherwise, like slice indexing).
    pub fn get(&self, i: usize) -> FingerprintRef<'_> {
        let rs = record_size(self.permutations);
        let r = &self.map[HEADER + i * rs..HEADER + (i + 1) * rs];
        FingerprintRef {
            row: le_u64(r),
            exact: le_u128(&r[8..]),
            shingles: le_u32(&r[24..]),
            minhash_le: &r[28..],
        }
    }

    /// The record as an owned [`Fingerprint`] (and its row).
    pub fn fingerprint(&self, i: usize) -> (u64, Fingerprint) {
        let r = self.get(i);
        let minhash = r.minhash_le.chunks_exact(4).map(le_u32).collect();
        (
            r.row,
            Fingerprint {
                exact: r.exact,
                shingles: r.shingles,
                minhash,
            },
        )
    }
}
