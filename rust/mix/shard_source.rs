//! The loader's view of a built mix dir: `schedule.json` plus each corpus's training shards
//! as one token stream, so window `w` of corpus `c` is tokens `[w*seq_len, w*seq_len+seq_len+1)`.

use super::{Schedule, WindowSource};
use crate::build::manifest::CorpusManifest;
use crate::error::{Error, IoContext, Result};
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
    pub fn open(mix_dir: &Path, schedule: &Schedule) -> Result<ShardSource> {
        let mut streams = Vec::with_capacity(schedule.corpora().len());
        for corpus in schedule.corpora() {
            let dir = mix_dir.join("corpora").join(&corpus.name);
            let manifest_path = dir.join("manifest.json");
            let text = std::fs::read_to_string(&manifest_path).ctx(&manifest_path)?;
            let manifest: CorpusManifest = serde_json::from_str(&text)
                .map_err(|e| Error::shard(&manifest_path, format!("unreadable manifest: {e}")))?;
            let paths: Vec<_> = manifest.shards.iter().map(|s| dir.join(&s.name)).collect();
            let stream = CorpusStream::open(&paths)?;
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
            .ok_or_else(|| Error::Spec(format!("corpus index {corpus} out of range")))?;
        stream.read(window * self.seq_len, out)
    }
}

/// Open a built mix for sampling: its locked schedule and its token streams.
pub fn open_mix(mix_dir: &Path) -> Result<(Arc<Schedule>, Arc<ShardSource>)> {
    let schedule = Schedule::load(mix_dir.join("schedule.json"))?;
    let source = ShardSource::open(mix_dir, &schedule)?;
    Ok((Arc::new(schedule), Arc::new(source)))
}
