//! The loader's view of a built mix dir: `schedule.json` plus each corpus's training shards
//! as one token stream, so window `w` of corpus `c` is tokens `[w*seq_len, w*seq_len+seq_len+1)`.
//!
//! Integrity where the data is used: opening checks the lock (`mix.json`: format, seal, the
//! sha256 of the schedule, tokenizer and manifests it pins; see `build::manifest::open_lock`)
//! and every shard's footer against its manifest entry; the first read of a shard verifies
//! its checksum over every byte and its token ids against the vocabulary (see
//! `shard::CorpusStream`). Every failure names the file.
//!
//! A mix in a bucket (`open_mix_cached`, given its `ShardCache`) opens no shard at all: each
//! corpus is a `CachedStream` whose offsets come from the manifest, and the first read of a
//! shard fetches and verifies it into the cache (`mix::shard_cache`). A local mix pays nothing
//! for this: its streams are the mmapped `CorpusStream`s as before.

use super::shard_cache::{CachedStream, ShardCache};
use super::{Schedule, WindowSource};
use crate::build::manifest::{open_entry, open_lock, MixLock};
use crate::error::{Error, Result};
use crate::shard::CorpusStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct ShardSource {
    streams: Vec<Stream>,
    seq_len: u64,
}

/// A corpus's token stream: its shards on local disk (mmapped), or fetched through the cache.
enum Stream {
    Local(CorpusStream),
    Cached(CachedStream),
}

impl Stream {
    fn n_tokens(&self) -> u64 {
        match self {
            Stream::Local(s) => s.n_tokens(),
            Stream::Cached(s) => s.n_tokens(),
        }
    }
    fn read(&self, start: u64, out: &mut [u32]) -> Result<()> {
        match self {
            Stream::Local(s) => s.read(start, out),
            Stream::Cached(s) => s.read(start, out),
        }
    }
}

impl ShardSource {
    /// Open every corpus of the schedule, checking each stream holds the tokens the schedule
    /// was locked with (a mix dir edited after its build is refused, not silently misread).
    /// `cache`: the mix is a bucket's, its shards fetched on first read (nothing opened here).
    pub fn open(
        lock: &MixLock,
        schedule: &Schedule,
        cache: Option<&Arc<ShardCache>>,
    ) -> Result<ShardSource> {
        let mut streams = Vec::with_capacity(schedule.corpora().len());
        let vocab = lock.vocab_size();
        for corpus in schedule.corpora() {
            let (manifest_path, manifest) = lock.manifest(&corpus.name)?;
            let stream = match cache {
                Some(cache) => Stream::Cached(CachedStream::new(
                    Arc::clone(cache),
                    &corpus.name,
                    manifest.shards,
                )),
                None => {
                    let dir = lock.dir.join("corpora").join(&corpus.name);
                    let mut paths = Vec::with_capacity(manifest.shards.len());
                    for entry in &manifest.shards {
                        paths.push(open_entry(&dir, entry)?.path().to_path_buf());
                    }
                    let mut stream = CorpusStream::open(&paths)?;
                    if let Some(v) = vocab {
                        stream = stream.with_vocab_size(v);
                    }
                    Stream::Local(stream)
                }
            };
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
/// `branch`: one branch of a family mix (its whole schedule: the trunk's stages, then its
/// own); `None`: the trunk of a family, the whole schedule of a plain mix.
pub fn open_mix(mix_dir: &Path, branch: Option<&str>) -> Result<(Arc<Schedule>, Arc<ShardSource>)> {
    open_mix_cached(mix_dir, branch, None)
}

/// [`open_mix`] of a mix in a bucket whose pinned files `cache` already holds in `mix_dir`:
/// its shards are fetched on first read (see `mix::shard_cache`).
pub fn open_mix_cached(
    mix_dir: &Path,
    branch: Option<&str>,
    cache: Option<&Arc<ShardCache>>,
) -> Result<(Arc<Schedule>, Arc<ShardSource>)> {
    let lock = open_lock(mix_dir)?;
    let schedule = Schedule::load(mix_dir.join(schedule_file(&lock, branch)?))?;
    let source = ShardSource::open(&lock, &schedule, cache)?;
    Ok((Arc::new(schedule), Arc::new(source)))
}

/// The names of a family mix's branches (sorted; empty for a plain mix).
pub fn branch_names(lock: &MixLock) -> Vec<String> {
    lock.value
        .get("branches")
        .and_then(serde_json::Value::as_object)
        .map(|b| b.keys().cloned().collect())
        .unwrap_or_default()
}

/// The schedule file (relative to the mix dir) of the trunk or of branch `branch`; an
/// unknown branch is one line naming the mix and the branches it has.
fn schedule_file(lock: &MixLock, branch: Option<&str>) -> Result<PathBuf> {
    let Some(name) = branch else {
        return Ok(PathBuf::from("schedule.json"));
    };
    let names = branch_names(lock);
    if names.is_empty() {
        return Err(Error::Usage(format!(
            "branch {name:?}: {} is a plain mix, not a family (it has no branches)",
            lock.dir.display()
        )));
    }
    let rel = lock.value["branches"]
        .get(name)
        .and_then(|b| b.get("schedule"))
        .and_then(serde_json::Value::as_str);
    match rel {
        // Pinned like every metadata file: `open_lock` checked its bytes.
        Some(rel) if lock.value[crate::build::manifest::PINS].get(rel).is_some() => {
            Ok(PathBuf::from(rel))
        }
        Some(rel) => Err(Error::integrity(
            lock.dir.join(crate::build::manifest::LOCK_NAME),
            format!("does not pin {rel}: edited after the build"),
        )),
        None => Err(Error::Usage(format!(
            "branch {name:?}: no such branch in {}; it has {}",
            lock.dir.display(),
            names.join(", ")
        ))),
    }
}
