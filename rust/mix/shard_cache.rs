//! The shard cache of a mix in a bucket: the one owner of "a local, verified copy of shard
//! NAME of corpus C". Readers (the lazy [`CachedStream`] below, `tinyllama.Mix.documents`)
//! only ask it; nothing else downloads, publishes or evicts a shard.
//!
//! Layout: the mix's small pinned files (lock, schedules, tokenizer, manifests, reports) are
//! fetched whole by `tinyllama.data.remote_mix.cached_mix` into `ROOT/<name>-<lock digest>/`,
//! marked by a `.tinyllama-mix-cache` file; this module fills in its shards, each at the path
//! it has in a local mix (`corpora/C/NAME`), only when a read first needs it. `ROOT` (the
//! `cache_dir`) may hold several mixes; its byte budget covers the shards of all of them.
//!
//! Contract:
//! - A shard is published only verified: it is downloaded to `NAME.part` (its size, known
//!   from the manifest entry and the lock's dtype, checked), its footer compared with the
//!   manifest entry (docs, tokens, checksum), its xxh3 checksum recomputed over every byte and
//!   every token id checked against the vocabulary, and only then renamed into place. A file
//!   at a shard's path was therefore verified when it appeared; later reads trust it (its size
//!   is still checked on every open). A corrupt or truncated download is one line naming the
//!   URL, and nothing is published.
//! - The ranks of a node share the cache: a fetch holds `corpora/C/.NAME.lock` (an exclusive
//!   file lock, per open file, so it also orders threads of one process); whoever waits finds
//!   the shard published and does not download it again.
//! - Budget (`cache_bytes`): before a download, least recently used shards of `ROOT` are
//!   removed until the new one fits; after the publish, again until the total is within the
//!   budget (other processes may have published meanwhile). "Used" is the file's mtime,
//!   refreshed at most once a second per shard by a reader. Only shard files (`*.bin` under
//!   `corpora/` of a marked mix dir) are counted or removed: never a file the cache did not
//!   make, never the metadata (kilobytes). A shard larger than the whole budget is one line.
//! - Eviction is safe under readers: a reader never keeps a shard mapped or open between
//!   reads. It opens the file, reads the tokens it needs with `pread` and closes it, so an
//!   unlinked shard's disk space is returned at once (an mmap held open would keep it) and the
//!   budget is what the disk really holds; a reader whose shard vanished between the lookup and
//!   the open fetches it again.
//! - A full cache disk (ENOSPC, EFBIG, EDQUOT while writing the `.part`) is one line naming the
//!   URL and the cache dir; the `.part` is removed.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::build::manifest::{open_lock, MixLock, ShardEntry};
use crate::error::{Error, Result};
use crate::shard::{decode_tokens, Dtype, Shard, TOKENS_AT};
use crate::storage::{Bucket, Object};

/// The file that marks a directory of `ROOT` as a cached mix (written by `cached_mix`).
pub const CACHE_MARK: &str = ".tinyllama-mix-cache";
/// A reader refreshes a shard's mtime (its LRU age) at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(1);
/// A shard evicted between its lookup and its open is fetched again at most this many times.
const REOPENS: usize = 4;

/// See the module docs.
pub struct ShardCache {
    bucket: Bucket,
    /// The mix's key in the bucket (no trailing `/`).
    key: String,
    /// The local mix dir (`ROOT/<name>-<digest>`).
    dir: PathBuf,
    /// `cache_dir`: the budget covers every shard of every cached mix under it.
    root: PathBuf,
    budget: Option<u64>,
    lock: MixLock,
    dtype: Dtype,
    /// Downloads this cache made (what the tests count: one per shard, whatever the readers).
    downloads: AtomicU64,
    touched: Mutex<HashMap<PathBuf, Instant>>,
}

impl ShardCache {
    /// The cache for the mix at `url`, whose pinned files are already in `mix_dir` (checked
    /// here again by `open_lock`).
    pub fn open(mix_dir: &Path, url: &str, budget: Option<u64>) -> Result<ShardCache> {
        let (bucket, key) = Bucket::open(url)?;
        let lock = open_lock(mix_dir)?;
        let dtype = lock
            .value
            .get("dtype")
            .cloned()
            .and_then(|d| serde_json::from_value::<Dtype>(d).ok())
            .ok_or_else(|| Error::integrity(mix_dir.join("mix.json"), "no token dtype"))?;
        let root = mix_dir.parent().unwrap_or(mix_dir).to_path_buf();
        Ok(ShardCache {
            bucket,
            key,
            dir: mix_dir.to_path_buf(),
            root,
            budget: budget.filter(|&b| b > 0),
            lock,
            dtype,
            downloads: AtomicU64::new(0),
            touched: Mutex::new(HashMap::new()),
        })
    }

    pub fn lock(&self) -> &MixLock {
        &self.lock
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Shards this cache downloaded so far.
    pub fn downloads(&self) -> u64 {
        self.downloads.load(Ordering::Relaxed)
    }

    /// The bucket URL of a shard, for messages.
    pub fn url(&self, corpus: &str, entry: &ShardEntry) -> String {
        self.bucket.url(&self.object_key(corpus, entry))
    }

    fn object_key(&self, corpus: &str, entry: &ShardEntry) -> String {
        let rel = format!("corpora/{corpus}/{}", entry.name);
        if self.key.is_empty() {
            rel
        } else {
            format!("{}/{rel}", self.key)
        }
    }

    /// The size a shard of `entry` has (the format fixes it from docs, tokens and width).
    fn size_of(&self, entry: &ShardEntry) -> u64 {
        crate::shard::file_len(
            self.dtype.width(),
            entry.docs as usize,
            entry.tokens as usize,
        ) as u64
    }

    fn local_path(&self, corpus: &str, entry: &ShardEntry) -> Result<PathBuf> {
        // Names come from a pinned manifest; still, nothing outside the corpus dir.
        let plain = !entry.name.is_empty()
            && Path::new(&entry.name)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
            && !entry.name.contains('/');
        if !plain {
            return Err(Error::integrity(
                self.dir.join("corpora").join(corpus).join("manifest.json"),
                format!("names {:?}, which is not a shard of the corpus", entry.name),
            ));
        }
        Ok(self.dir.join("corpora").join(corpus).join(&entry.name))
    }

    /// The entry of shard `name` of `corpus` (training or holdout), from its pinned manifest.
    pub fn entry(&self, corpus: &str, name: &str) -> Result<ShardEntry> {
        let (path, manifest) = self.lock.manifest(corpus)?;
        manifest
            .shards
            .into_iter()
            .chain(manifest.holdout_shards)
            .find(|e| e.name == name)
            .ok_or_else(|| Error::integrity(path, format!("names no shard {name:?}")))
    }

    /// A local, verified copy of the shard (fetched now if it is not in the cache).
    pub fn path(&self, corpus: &str, entry: &ShardEntry) -> Result<PathBuf> {
        self.open_shard(corpus, entry).map(|(p, _)| p)
    }

    /// The shard's local copy, open for reading (fetched first if needed; see the module docs).
    pub fn open_shard(&self, corpus: &str, entry: &ShardEntry) -> Result<(PathBuf, File)> {
        let path = self.local_path(corpus, entry)?;
        let size = self.size_of(entry);
        for _ in 0..REOPENS {
            if let Some(file) = self.open_published(&path, size)? {
                self.touch(&path, &file);
                return Ok((path, file));
            }
            self.fetch(corpus, entry, &path, size)?;
        }
        Err(Error::Remote {
            url: self.url(corpus, entry),
            msg: format!(
                "evicted {REOPENS} times before it could be read: mix_cache_bytes is too small \
                 for the shards the readers of {} use at once; raise it",
                self.root.display()
            ),
        })
    }

    /// The published file, or None when it is not there (never fetched, or evicted).
    fn open_published(&self, path: &Path, size: u64) -> Result<Option<File>> {
        match File::open(path) {
            Ok(f) => {
                let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
                if len != size {
                    return Err(Error::shard(
                        path,
                        format!(
                            "{len} bytes in the cache, its manifest entry makes {size}: damaged \
                             after it was fetched; delete it to fetch it again"
                        ),
                    ));
                }
                Ok(Some(f))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Refresh the shard's LRU age (its mtime), at most once a second per shard.
    fn touch(&self, path: &Path, file: &File) {
        let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if touched
            .get(path)
            .is_some_and(|t| now.duration_since(*t) < TOUCH_EVERY)
        {
            return;
        }
        touched.insert(path.to_path_buf(), now);
        // Best effort: a failed touch only makes the shard look older to the evictor.
        let _ = file.set_modified(SystemTime::now());
    }

    /// Download, verify and publish one shard, under its lock (see the module docs).
    fn fetch(&self, corpus: &str, entry: &ShardEntry, path: &Path, size: u64) -> Result<()> {
        let url = self.url(corpus, entry);
        if let Some(budget) = self.budget.filter(|&b| size > b) {
            return Err(Error::Remote {
                url,
                msg: format!(
                    "the shard holds {size} bytes, more than mix_cache_bytes ({budget}) for \
                     {}: raise it",
                    self.root.display()
                ),
            });
        }
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock_path = dir.join(format!(".{}.lock", entry.name));
        let held = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
        held.lock().map_err(|e| Error::io(&lock_path, e))?; // released when `held` drops
        if path.exists() {
            return Ok(()); // another rank (or thread) published it while this one waited
        }
        if let Some(budget) = self.budget {
            self.evict(budget - size, path)?;
        }
        let want = Object {
            key: self.object_key(corpus, entry),
            size,
            etag: None,
        };
        let vocab = self.lock.vocab_size();
        self.bucket
            .download_checked(&want.key, path, Some(&want), |part| {
                self.verify(part, entry, vocab).map_err(|e| Error::Remote {
                    url: url.clone(),
                    msg: format!("{}; not used, not cached", inner_message(&e)),
                })
            })?;
        self.downloads.fetch_add(1, Ordering::Relaxed);
        if let Some(budget) = self.budget {
            self.evict(budget, path)?;
        }
        Ok(())
    }

    /// The checks a downloaded shard passes before it is published.
    fn verify(&self, part: &Path, entry: &ShardEntry, vocab: Option<u64>) -> Result<()> {
        let shard = Shard::open(part)?;
        let got = (
            shard.n_docs() as u64,
            shard.n_tokens() as u64,
            shard.checksum_hex(),
            shard.dtype(),
        );
        if got != (entry.docs, entry.tokens, entry.checksum.clone(), self.dtype) {
            return Err(Error::integrity(
                part,
                format!(
                    "holds {} docs / {} tokens (checksum {}), its manifest says {} / {} ({}): \
                     the object was replaced after the build",
                    got.0, got.1, got.2, entry.docs, entry.tokens, entry.checksum
                ),
            ));
        }
        shard.check(vocab)
    }

    fn evict(&self, budget: u64, keep: &Path) -> Result<()> {
        evict_lru(&self.root, budget, keep)
    }
}

/// Remove the least recently used shards of `root`'s cached mixes (never `keep`) until the
/// rest hold at most `budget` bytes.
pub fn evict_lru(root: &Path, budget: u64, keep: &Path) -> Result<()> {
    let mut shards = cached_shards(root);
    let mut total: u64 = shards.iter().map(|s| s.2).sum();
    shards.sort_by_key(|s| s.1);
    for (path, _, len) in shards {
        if total <= budget {
            break;
        }
        if path == keep {
            continue;
        }
        match std::fs::remove_file(&path) {
            // Gone already: another process evicted it first.
            Ok(()) => total -= len,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= len,
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    Ok(())
}

/// Every published shard of `root`'s cached mixes: (path, mtime, bytes).
pub fn cached_shards(root: &Path) -> Vec<(PathBuf, SystemTime, u64)> {
    let mut out = Vec::new();
    let Ok(mixes) = std::fs::read_dir(root) else {
        return out;
    };
    for mix in mixes.flatten() {
        let dir = mix.path();
        if !dir.join(CACHE_MARK).is_file() {
            continue; // not a dir the cache made
        }
        let Ok(corpora) = std::fs::read_dir(dir.join("corpora")) else {
            continue;
        };
        for corpus in corpora.flatten() {
            let Ok(files) = std::fs::read_dir(corpus.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                if path.extension().is_some_and(|e| e == "bin") {
                    if let Ok(meta) = f.metadata() {
                        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        out.push((path, mtime, meta.len()));
                    }
                }
            }
        }
    }
    out
}

/// An error's message without its leading location (the caller names the URL instead).
fn inner_message(e: &Error) -> String {
    match e {
        Error::Shard { msg, .. } | Error::Integrity { msg, .. } | Error::Io { msg, .. } => {
            msg.clone()
        }
        other => other.to_string(),
    }
}

/// A corpus's training shards read through a [`ShardCache`]: one flat token stream like
/// `shard::CorpusStream`, with window offsets from the manifest's per-shard token counts, so
/// opening it touches no shard; the first read of a shard fetches it (in the loader's worker
/// threads, ahead of the step).
pub struct CachedStream {
    cache: std::sync::Arc<ShardCache>,
    corpus: String,
    entries: Vec<ShardEntry>,
    /// starts[i] = tokens in shards before i; starts[len] = total.
    starts: Vec<u64>,
}

impl CachedStream {
    pub fn new(
        cache: std::sync::Arc<ShardCache>,
        corpus: &str,
        entries: Vec<ShardEntry>,
    ) -> CachedStream {
        let mut starts = vec![0u64];
        for e in &entries {
            starts.push(starts.last().copied().unwrap_or(0) + e.tokens);
        }
        CachedStream {
            cache,
            corpus: corpus.to_string(),
            entries,
            starts,
        }
    }

    pub fn n_tokens(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    /// Copy tokens `[start, start + out.len())` of the stream into `out`.
    pub fn read(&self, start: u64, out: &mut [u32]) -> Result<()> {
        let end = start + out.len() as u64;
        if end > self.n_tokens() {
            return Err(Error::Shard {
                path: format!("corpus {}", self.corpus),
                msg: format!(
                    "read of tokens [{start}, {end}) past the end of the corpus ({} tokens)",
                    self.n_tokens()
                ),
            });
        }
        let dtype = self.cache.dtype();
        let width = dtype.width();
        let mut bytes = Vec::new();
        for (i, local, range) in crate::shard::stream_spans(&self.starts, start, out.len()) {
            let (path, file) = self.cache.open_shard(&self.corpus, &self.entries[i])?;
            bytes.resize(range.len() * width, 0);
            let at = (TOKENS_AT + local as usize * width) as u64;
            file.read_exact_at(&mut bytes, at)
                .map_err(|e| Error::io(&path, e))?;
            decode_tokens(dtype, &bytes, &mut out[range]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(root: &Path, mix: &str, name: &str, len: usize, age_s: u64) -> PathBuf {
        let dir = root.join(mix).join("corpora/c");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, vec![0u8; len]).unwrap();
        let when = SystemTime::now() - Duration::from_secs(age_s);
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(when)
            .unwrap();
        p
    }

    #[test]
    fn eviction_removes_the_oldest_shards_the_cache_made_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for mix in ["a", "b"] {
            std::fs::create_dir_all(r.join(mix)).unwrap();
            std::fs::write(r.join(mix).join(CACHE_MARK), b"").unwrap();
        }
        let old = shard(r, "a", "s0.bin", 100, 300);
        let mid = shard(r, "b", "s1.bin", 100, 200);
        let new = shard(r, "a", "s2.bin", 100, 100);
        let keep = shard(r, "b", "s3.bin", 100, 400); // the one just fetched: never evicted
        let meta = r.join("a/corpora/c/manifest.json");
        std::fs::write(&meta, vec![0u8; 1000]).unwrap(); // metadata: not a shard
        let foreign = shard(r, "mine", "x.bin", 1000, 999); // a dir the cache did not make
        assert_eq!(cached_shards(r).len(), 4);
        evict_lru(r, 250, &keep).unwrap();
        assert!(!old.exists() && !mid.exists());
        assert!(new.exists() && keep.exists() && meta.exists() && foreign.exists());
        evict_lru(r, 0, &keep).unwrap();
        assert!(!new.exists() && keep.exists() && foreign.exists());
    }
}
