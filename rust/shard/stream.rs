//! A corpus as one flat token stream over its shards (documents back to back, in order):
//! what the sampler's windows index into. A window may straddle two shards.
//!
//! Integrity where the data is used: the first read that touches a shard verifies it (its
//! xxh3 checksum over every byte and, when the stream knows the vocabulary size, every token
//! id; see [`Shard::check`]). A shard is checked once per stream (concurrent readers wait for
//! the one check); a shard that fails fails every read that touches it, naming the shard.

use super::Shard;
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The pieces of a read of `len` tokens from `start` of a stream whose shard `i` begins at
/// `starts[i]` (`starts[n]` = the total; the caller has checked `start + len` against it):
/// (shard index, offset in the shard, the part of the output it fills), in order. A window may
/// straddle shards; `CorpusStream` and the shard cache's stream both read through this walk.
pub(crate) fn spans(
    starts: &[u64],
    start: u64,
    len: usize,
) -> impl Iterator<Item = (usize, u64, std::ops::Range<usize>)> + '_ {
    // the last shard whose start is <= start
    let mut i = starts.partition_point(|&s| s <= start).saturating_sub(1);
    let mut filled = 0usize;
    std::iter::from_fn(move || {
        if filled >= len {
            return None;
        }
        let pos = start + filled as u64;
        let take = ((starts[i + 1] - pos) as usize).min(len - filled);
        let span = (i, pos - starts[i], filled..filled + take);
        filled += take;
        i += 1;
        Some(span)
    })
}

pub struct CorpusStream {
    shards: Vec<Shard>,
    /// starts[i] = tokens in shards before i; starts[len] = total.
    starts: Vec<u64>,
    /// The outcome of each shard's first-touch check.
    checked: Vec<OnceLock<Result<()>>>,
    vocab_size: Option<u64>,
}

impl CorpusStream {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut starts = vec![0u64];
        for p in paths {
            let s = Shard::open(p)?;
            starts.push(starts.last().copied().unwrap_or(0) + s.n_tokens() as u64);
            shards.push(s);
        }
        let checked = shards.iter().map(|_| OnceLock::new()).collect();
        Ok(CorpusStream {
            shards,
            starts,
            checked,
            vocab_size: None,
        })
    }

    /// Also check, on first touch, that every token id of a shard is `< vocab_size`.
    pub fn with_vocab_size(mut self, vocab_size: u64) -> Self {
        self.vocab_size = Some(vocab_size);
        self
    }

    pub fn n_tokens(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Shard `i`'s first-touch check (see the module docs), run once.
    fn ensure_checked(&self, i: usize) -> Result<()> {
        self.checked[i]
            .get_or_init(|| self.shards[i].check(self.vocab_size))
            .clone()
    }

    /// Copy tokens `[start, start + out.len())` of the stream into `out`.
    pub fn read(&self, start: u64, out: &mut [u32]) -> Result<()> {
        let end = start + out.len() as u64;
        if end > self.n_tokens() {
            let name = self
                .shards
                .last()
                .map(|s| s.path().display().to_string())
                .unwrap_or_default();
            return Err(Error::Shard {
                path: name,
                msg: format!(
                    "read of tokens [{start}, {end}) past the end of the corpus ({} tokens)",
                    self.n_tokens()
                ),
            });
        }
        for (i, local, range) in spans(&self.starts, start, out.len()) {
            self.ensure_checked(i)?;
            let local = local as usize;
            self.shards[i].read_tokens(local..local + range.len(), &mut out[range]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{Dtype, ShardWriter, Source};

    fn write(dir: &std::path::Path, docs: &[Vec<Vec<u32>>]) -> (Vec<PathBuf>, Vec<u32>) {
        let mut paths = Vec::new();
        let mut all = Vec::new();
        for (k, docs) in docs.iter().enumerate() {
            let p = dir.join(format!("s{k}.bin"));
            let mut w = ShardWriter::create(&p, Dtype::U16, [0; 32]).unwrap();
            for d in docs {
                w.push(d, Source { file: 0, row: 0 }).unwrap();
                all.extend_from_slice(d);
            }
            w.finish().unwrap();
            paths.push(p);
        }
        (paths, all)
    }

    #[test]
    fn reads_across_shard_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, all) = write(
            dir.path(),
            &[
                vec![vec![1u32, 2, 3], vec![4, 5]],
                vec![vec![6]],
                vec![vec![7, 8, 9, 10]],
            ],
        );
        let s = CorpusStream::open(&paths).unwrap();
        assert_eq!(s.n_tokens(), 10);
        for start in 0..10u64 {
            for len in 0..=(10 - start as usize) {
                let mut out = vec![0u32; len];
                s.read(start, &mut out).unwrap();
                assert_eq!(&out[..], &all[start as usize..start as usize + len]);
            }
        }
        let mut out = vec![0u32; 3];
        assert!(s
            .read(8, &mut out)
            .unwrap_err()
            .to_string()
            .contains("past the end"));
    }

    #[test]
    fn a_flipped_byte_fails_the_first_read_that_touches_the_shard() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, _) = write(
            dir.path(),
            &[vec![vec![1u32, 2, 3], vec![4, 5]], vec![vec![6, 7, 8]]],
        );
        let mut bytes = std::fs::read(&paths[1]).unwrap();
        bytes[10] ^= 1; // a token byte of the second shard
        std::fs::write(&paths[1], &bytes).unwrap();
        let s = CorpusStream::open(&paths).unwrap();
        let mut out = vec![0u32; 3];
        s.read(0, &mut out).unwrap(); // the first shard is fine
        for _ in 0..2 {
            let err = s.read(4, &mut out).unwrap_err().to_string();
            assert!(err.contains("s1.bin") && err.contains("checksum"), "{err}");
        }
    }

    #[test]
    fn a_token_id_past_the_vocabulary_names_the_shard_and_document() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, _) = write(
            dir.path(),
            &[vec![vec![1u32, 2], vec![3, 4], vec![5, 900, 6]]],
        );
        let mut out = vec![0u32; 7];
        CorpusStream::open(&paths)
            .unwrap()
            .read(0, &mut out)
            .unwrap();
        let s = CorpusStream::open(&paths).unwrap().with_vocab_size(900);
        let err = s.read(0, &mut out).unwrap_err().to_string();
        assert!(
            err.contains("s0.bin") && err.contains("document 2") && err.contains("token id 900"),
            "{err}"
        );
        let s = CorpusStream::open(&paths).unwrap().with_vocab_size(901);
        s.read(0, &mut out).unwrap();
    }
}
