//! The loader's view of a built mix dir: `schedule.json` plus each corpus's training shards
//! as one token stream, so window `w` of corpus `c` is tokens `[w*seq_len, w*seq_len+seq_len+1)`.
//!
//! Integrity where the data is used: opening checks the lock (`mix.json`: format, seal, the
//! sha256 of the schedule, tokenizer and manifests it pins; see `build::manifest::open_lock`)
//! and every shard's footer against its manifest entry; the first read of a shard verifies
//! its checksum over every byte and its token ids against the vocabulary (see
//! `shard::CorpusStream`). Every failure names the file.

use super::{Schedule, WindowSource};
use crate::build::manifest::{open_entry, open_lock, MixLock};
use crate::error::{Error, Result};
use crate::shard::CorpusStream;
use std::path::Path;
use std::sync::Arc;

pub struct ShardSource {
    streams: Vec<CorpusStream>,
    seq_len: u64,
}

impl ShardSource {
    /// Open every corpus of the schedule, checking each stream holds the tokens the schedule
    /// was locked with (a mix dir edited after its build is refused, not silently misread).
    pub fn open(lock: &MixLock, schedule: &Schedule) -> Result<ShardSource> {
        let mut streams = Vec::with_capacity(schedule.corpora().len());
        let vocab = lock.vocab_size();
        for corpus in schedule.corpora() {
            let (manifest_path, manifest) = lock.manifest(&corpus.name)?;
            let dir = lock.dir.join("corpora").join(&corpus.name);
            let mut paths = Vec::with_capacity(manifest.shards.len());
            for entry in &manifest.shards {
                paths.push(open_entry(&dir, entry)?.path().to_path_buf());
            }
            let mut stream = CorpusStream::open(&paths)?;
            if let Some(v) = vocab {
                stream = stream.with_vocab_size(v);
            }
            if stream.n_tokens() != corpus.tokens {
                return Err(Error::shard(
                    &manifest_path,
                    format!(
                        "corpus holds {} tokens, the schedule was locked with {}",
                        stream.n_tokens(),
                        corpus.tokens
                    ),
                ));
            }
            streams.push(stream);
        }
        Ok(ShardSource {
            streams,
            seq_len: schedule.seq_len() as u64,
        })
    }
}

impl WindowSource for ShardSource {
    fn read_window(&self, corpus: u32, window: u64, out: &mut [u32]) -> Result<()> {
        let stream = self
            .streams
            .get(corpus as usize)
            .ok_or_else(|| Error::Usage(format!("corpus index {corpus} out of range")))?;
        stream.read(window * self.seq_len, out)
    }
}

/// Open a built mix for sampling: its checked lock, its locked schedule and its token streams.
pub fn open_mix(mix_dir: &Path) -> Result<(Arc<Schedule>, Arc<ShardSource>)> {
    let lock = open_lock(mix_dir)?;
    let schedule = Schedule::load(mix_dir.join("schedule.json"))?;
    let source = ShardSource::open(&lock, &schedule)?;
    Ok((Arc::new(schedule), Arc::new(source)))
}
