//! The key index beside a fingerprint store (`NNNNNN.keys` next to `NNNNNN.fp`): the same
//! documents, column by column — exact hashes, a "has shingles" flag and every LSH band's key —
//! so the exact stage reads 16 bytes a document and a band-partition task 9 bytes a document
//! per band, instead of paging in whole 540-byte signature records (a band task on another
//! machine would otherwise read every store in full). The stores are still read, at random,
//! to verify candidate pairs.
//!
//! Layout (little-endian; `n` documents, `B` bands, `pad8` rounds up to 8 bytes):
//!
//! ```text
//! header  "TLKEYS01"  u32 version  u32 bands  u32 rows  u32 0  u64 params_key  u64 n  u64 0  (48)
//! exact   n x u128                                          (section 0)
//! live    n x u8, padded to 8 (1: the document has shingles)  (section 1)
//! band b  n x u64, for b in 0..B                            (section 2 + b)
//! footer  (2 + B) x u64 xxh3_64 of each section, "TLKEYEND"
//! ```
//!
//! Each section has its own checksum, so a task verifies exactly what it reads. A corpus with
//! exact dedup only has `B = 0`. Written tmp + fsync + rename like the stores, and committed
//! **before** its store: a committed store with a valid index beside it is a finished file.

use super::minhash::{band_key, Fingerprint};
use super::store::{commit, params_key, tmp_path};
use super::DedupParams;
use crate::error::{Error, IoContext, Result};
use memmap2::Mmap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

const MAGIC: &[u8; 8] = b"TLKEYS01";
const END_MAGIC: &[u8; 8] = b"TLKEYEND";
const VERSION: u32 = 1;
const HEADER: usize = 48;

fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// The index file beside store `store`.
pub fn keys_path(store: &Path) -> PathBuf {
    store.with_extension("keys")
}

/// Bands the index holds for these parameters: all of them with near dedup, none without.
fn index_bands(params: &DedupParams) -> usize {
    if params.near {
        params.bands
    } else {
        0
    }
}

/// Collects one store's keys in memory (25 + 8 x bands bytes a document) and writes the
/// index at [`KeyIndexWriter::finish`].
pub struct KeyIndexWriter {
    path: PathBuf,
    bands: usize,
    rows: usize,
    params_key: u64,
    exact: Vec<u128>,
    live: Vec<u8>,
    keys: Vec<Vec<u64>>,
    sig_le: Vec<u8>,
}

impl KeyIndexWriter {
    pub fn new(path: impl AsRef<Path>, params: &DedupParams) -> Self {
        let bands = index_bands(params);
        KeyIndexWriter {
            path: path.as_ref().to_path_buf(),
            bands,
            rows: params.rows,
            params_key: params_key(params),
            exact: Vec::new(),
            live: Vec::new(),
            keys: vec![Vec::new(); bands],
            sig_le: Vec::new(),
        }
    }

    pub fn push(&mut self, fp: &Fingerprint) {
        self.exact.push(fp.exact);
        self.live.push(u8::from(fp.shingles > 0));
        if self.bands > 0 {
            self.sig_le.clear();
            for v in &fp.minhash {
                self.sig_le.extend_from_slice(&v.to_le_bytes());
            }
            for (b, keys) in self.keys.iter_mut().enumerate() {
                keys.push(band_key(&self.sig_le, b, self.rows));
            }
        }
    }

    /// Write and commit the index; returns the number of documents.
    pub fn finish(self) -> Result<u64> {
        let n = self.exact.len();
        let tmp = tmp_path(&self.path);
        let file = File::create(&tmp).ctx(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        for v in [VERSION, self.bands as u32, self.rows as u32, 0] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.params_key, n as u64, 0] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        out.write_all(&header).ctx(&tmp)?;
        let mut sums = Vec::with_capacity(2 + self.bands);
        let mut section = Vec::with_capacity(16 * n);
        for e in &self.exact {
            section.extend_from_slice(&e.to_le_bytes());
        }
        sums.push(xxh3_64(&section));
        out.write_all(&section).ctx(&tmp)?;
        section.clear();
        section.extend_from_slice(&self.live);
        section.resize(pad8(n), 0);
        sums.push(xxh3_64(&section));
        out.write_all(&section).ctx(&tmp)?;
        for keys in &self.keys {
            section.clear();
            for k in keys {
                section.extend_from_slice(&k.to_le_bytes());
            }
            sums.push(xxh3_64(&section));
            out.write_all(&section).ctx(&tmp)?;
        }
        for s in sums {
            out.write_all(&s.to_le_bytes()).ctx(&tmp)?;
        }
        out.write_all(END_MAGIC).ctx(&tmp)?;
        let file = out.into_inner().map_err(|e| Error::io(&tmp, e.error()))?;
        commit(file, &tmp, &self.path)?;
        Ok(n as u64)
    }
}

/// A committed key index, memory-mapped: only the sections a stage reads are paged in.
pub struct KeyIndex {
    path: PathBuf,
    map: Mmap,
    n: usize,
    bands: usize,
}

impl KeyIndex {
    /// Opens the index and checks its header against the parameters and the store's document
    /// count `n` (sections are checked by [`KeyIndex::verify`], by the stage that reads them).
    pub fn open(path: impl AsRef<Path>, params: &DedupParams, n: usize) -> Result<KeyIndex> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).ctx(&path)?;
        // SAFETY: indexes are written once under a tmp name, renamed into place, never modified.
        let map = unsafe { Mmap::map(&file) }.ctx(&path)?;
        let bad = |msg: String| Error::shard(&path, format!("key index: {msg}"));
        let u32_at = |i: usize| u32::from_le_bytes(map[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(map[i..i + 8].try_into().expect("8 bytes"));
        if map.len() < HEADER + 8 || &map[..8] != MAGIC || &map[map.len() - 8..] != END_MAGIC {
            return Err(bad("bad magic (truncated, or not a key index)".into()));
        }
        if u32_at(8) != VERSION {
            return Err(bad(format!("unknown version {}", u32_at(8))));
        }
        let bands = u32_at(12) as usize;
        if bands != index_bands(params)
            || (bands > 0 && u32_at(16) as usize != params.rows)
            || u64_at(24) != params_key(params)
        {
            return Err(bad("made with other dedup parameters".into()));
        }
        if u64_at(32) as usize != n {
            return Err(bad(format!(
                "holds {} documents, its store {n}",
                u64_at(32)
            )));
        }
        let index = KeyIndex {
            path: path.clone(),
            map,
            n,
            bands,
        };
        if index.map.len() != index.footer_at() + 8 * (2 + bands) + 8 {
            return Err(bad(format!(
                "size {} does not match {n} documents and {bands} bands",
                index.map.len()
            )));
        }
        Ok(index)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn section(&self, s: usize) -> Range<usize> {
        let live_at = HEADER + 16 * self.n;
        let bands_at = live_at + pad8(self.n);
        match s {
            0 => HEADER..live_at,
            1 => live_at..bands_at,
            b => bands_at + 8 * self.n * (b - 2)..bands_at + 8 * self.n * (b - 1),
        }
    }

    fn footer_at(&self) -> usize {
        self.section(2 + self.bands).start
    }

    /// Checks the exact section, the live section and bands `bands` against their checksums;
    /// a flipped byte is an error naming the file.
    pub fn verify(&self, exact: bool, bands: Range<usize>) -> Result<()> {
        let sections = (!exact as usize..2).chain(bands.map(|b| 2 + b));
        for s in sections {
            let at = self.footer_at() + 8 * s;
            let want = u64::from_le_bytes(self.map[at..at + 8].try_into().expect("8 bytes"));
            if xxh3_64(&self.map[self.section(s)]) != want {
                return Err(Error::shard(
                    &self.path,
                    format!("key index: checksum mismatch in section {s} (delete it and its store to redo the file)"),
                ));
            }
        }
        Ok(())
    }

    pub fn exact(&self, i: usize) -> u128 {
        let at = HEADER + 16 * i;
        u128::from_le_bytes(self.map[at..at + 16].try_into().expect("16 bytes"))
    }

    pub fn live(&self, i: usize) -> bool {
        self.map[self.section(1).start + i] != 0
    }

    pub fn band_key(&self, band: usize, i: usize) -> u64 {
        let at = self.section(2 + band).start + 8 * i;
        u64::from_le_bytes(self.map[at..at + 8].try_into().expect("8 bytes"))
    }
}
