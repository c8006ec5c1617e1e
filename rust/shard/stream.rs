//! A corpus as one flat token stream over its shards (documents back to back, in order):
//! what the sampler's windows index into. A window may straddle two shards.

use super::Shard;
use crate::error::{Error, Result};
use std::path::PathBuf;

pub struct CorpusStream {
    shards: Vec<Shard>,
    /// starts[i] = tokens in shards before i; starts[len] = total.
    starts: Vec<u64>,
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
        Ok(CorpusStream { shards, starts })
    }

    pub fn n_tokens(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
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
        // the last shard whose start is <= start
        let mut i = self.starts.partition_point(|&s| s <= start) - 1;
        let mut pos = start;
        let mut filled = 0usize;
        while filled < out.len() {
            let shard = &self.shards[i];
            let local = (pos - self.starts[i]) as usize;
            let take = (shard.n_tokens() - local).min(out.len() - filled);
            shard.read_tokens(local..local + take, &mut out[filled..filled + take]);
            filled += take;
            pos += take as u64;
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{Dtype, ShardWriter, Source};

    #[test]
    fn reads_across_shard_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        let mut all = Vec::new();
        for (k, docs) in [
            vec![vec![1u32, 2, 3], vec![4, 5]],
            vec![vec![6]],
            vec![vec![7, 8, 9, 10]],
        ]
        .iter()
        .enumerate()
        {
            let p = dir.path().join(format!("s{k}.bin"));
            let mut w = ShardWriter::create(&p, Dtype::U16, [0; 32]).unwrap();
            for d in docs {
                w.push(d, Source { file: 0, row: 0 }).unwrap();
                all.extend_from_slice(d);
            }
            w.finish().unwrap();
            paths.push(p);
        }
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
}
