//! External sort of 16-byte entries under a memory budget.
//!
//! Entries are `u128`s packing `(table key, ordinal)` so that one integer comparison orders
//! them; every entry is unique (it contains its document ordinal), so the sorted stream is
//! the same whatever the budget, the number of runs or the sort's parallelism: spilling can
//! never change a result.
//!
//! Pushing fills a buffer of `memory_bytes / 16` entries; a full buffer is sorted (rayon) and
//! written as a run to an anonymous temporary file in `work_dir` (deleted when closed, so a
//! killed process leaves nothing behind). [`ExternalSorter::finish`] merges the runs with a
//! binary heap, reading each through a 64 KiB buffer.

use crate::error::{IoContext, Result};
use rayon::slice::ParallelSliceMut;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Size of one entry on disk and in memory.
pub const ENTRY_BYTES: usize = 16;
const RUN_READ_BUFFER: usize = 64 << 10;
/// At most this many runs are open at once: reaching it merges them into one run (keeps file
/// descriptors and merge buffers bounded whatever the budget).
const MAX_RUNS: usize = 64;

pub struct ExternalSorter {
    work_dir: PathBuf,
    capacity: usize,
    buf: Vec<u128>,
    runs: Vec<File>,
}

impl ExternalSorter {
    pub fn new(work_dir: &Path, memory_bytes: u64) -> Self {
        let capacity = (memory_bytes / ENTRY_BYTES as u64).clamp(1, usize::MAX as u64) as usize;
        ExternalSorter {
            work_dir: work_dir.to_path_buf(),
            capacity,
            // Grows on demand: a small job never allocates the whole budget.
            buf: Vec::new(),
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, entry: u128) -> Result<()> {
        if self.buf.len() >= self.capacity {
            self.spill()?;
        }
        self.buf.push(entry);
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        self.buf.par_sort_unstable();
        std::fs::create_dir_all(&self.work_dir).ctx(&self.work_dir)?;
        let file = tempfile::tempfile_in(&self.work_dir).ctx(&self.work_dir)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        for e in &self.buf {
            w.write_all(&e.to_le_bytes()).ctx(&self.work_dir)?;
        }
        let mut file = w
            .into_inner()
            .map_err(|e| crate::error::Error::io(&self.work_dir, e.error()))?;
        file.seek(SeekFrom::Start(0)).ctx(&self.work_dir)?;
        self.runs.push(file);
        self.buf.clear();
        if self.runs.len() >= MAX_RUNS {
            self.compact()?;
        }
        Ok(())
    }

    /// Merges all runs into one.
    fn compact(&mut self) -> Result<()> {
        let runs = std::mem::take(&mut self.runs);
        let merged = merge(runs, &self.work_dir)?;
        let file = tempfile::tempfile_in(&self.work_dir).ctx(&self.work_dir)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        for e in merged {
            w.write_all(&e?.to_le_bytes()).ctx(&self.work_dir)?;
        }
        let mut file = w
            .into_inner()
            .map_err(|e| crate::error::Error::io(&self.work_dir, e.error()))?;
        file.seek(SeekFrom::Start(0)).ctx(&self.work_dir)?;
        self.runs.push(file);
        Ok(())
    }

    /// Number of runs written so far.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The sorted stream of everything pushed.
    pub fn finish(mut self) -> Result<Sorted> {
        if self.runs.is_empty() {
            self.buf.par_sort_unstable();
            return Ok(Sorted::Memory(self.buf.into_iter()));
        }
        if !self.buf.is_empty() {
            self.spill()?;
        }
        self.buf = Vec::new();
        merge(std::mem::take(&mut self.runs), &self.work_dir)
    }
}

fn merge(runs: Vec<File>, work_dir: &Path) -> Result<Sorted> {
    let mut readers: Vec<BufReader<File>> = runs
        .into_iter()
        .map(|f| BufReader::with_capacity(RUN_READ_BUFFER, f))
        .collect();
    let mut heap = BinaryHeap::with_capacity(readers.len());
    for (i, r) in readers.iter_mut().enumerate() {
        if let Some(e) = read_entry(r, work_dir)? {
            heap.push(Reverse((e, i)));
        }
    }
    Ok(Sorted::Merge {
        readers,
        heap,
        work_dir: work_dir.to_path_buf(),
    })
}

fn read_entry(r: &mut BufReader<File>, work_dir: &Path) -> Result<Option<u128>> {
    let mut b = [0u8; ENTRY_BYTES];
    match r.read_exact(&mut b) {
        Ok(()) => Ok(Some(u128::from_le_bytes(b))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e).ctx(work_dir),
    }
}

pub enum Sorted {
    Memory(std::vec::IntoIter<u128>),
    Merge {
        readers: Vec<BufReader<File>>,
        heap: BinaryHeap<Reverse<(u128, usize)>>,
        work_dir: PathBuf,
    },
}

impl Iterator for Sorted {
    type Item = Result<u128>;
    fn next(&mut self) -> Option<Result<u128>> {
        match self {
            Sorted::Memory(it) => it.next().map(Ok),
            Sorted::Merge {
                readers,
                heap,
                work_dir,
            } => {
                let Reverse((e, i)) = heap.pop()?;
                match read_entry(&mut readers[i], work_dir) {
                    Ok(Some(next)) => heap.push(Reverse((next, i))),
                    Ok(None) => {}
                    Err(err) => return Some(Err(err)),
                }
                Some(Ok(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spilled_and_in_memory_sorts_agree() {
        let dir = tempfile::tempdir().unwrap();
        let mut x: u64 = 12345;
        let entries: Vec<u128> = (0..10_000)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 50) as u128) << 32 | i as u128
            })
            .collect();
        let mut expect = entries.clone();
        expect.sort();
        for budget in [16 * 3, 16 * 7, 16 * 1000, 1 << 30] {
            let mut s = ExternalSorter::new(dir.path(), budget);
            for &e in &entries {
                s.push(e).unwrap();
            }
            let runs = s.runs();
            let got: Vec<u128> = s.finish().unwrap().map(|e| e.unwrap()).collect();
            assert_eq!(got, expect, "budget {budget} ({runs} runs)");
            assert_eq!(runs > 0, budget < 16 * 10_000);
        }
    }
}
