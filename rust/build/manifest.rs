//! What a built mix records about itself: `mix.json` (the lock, written last: its presence
//! means the build completed) and one `corpora/<name>/manifest.json` per corpus.
//! Nothing here names the mix's own location, a time or a host: two builds of one spec
//! compare equal file by file.

use serde::{Deserialize, Serialize};

pub const MIX_FORMAT: &str = "tinyllama-mix";
pub const MIX_FORMAT_VERSION: u32 = 1;

/// Per input file, what happened to its records.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FileStats {
    /// Relative to the spec's directory (or absolute if the pattern was).
    pub path: String,
    pub bytes: u64,
    pub docs_read: u64,
    pub docs_filtered: u64,
    pub docs_skipped: u64,
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    pub docs_kept: u64,
    pub tokens: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SkippedRow {
    pub file: String,
    pub row: u64,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardEntry {
    pub name: String,
    pub docs: u64,
    pub tokens: u64,
    /// xxh3-64 of the shard, as stored in its footer.
    pub checksum: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
    pub docs_read: u64,
    pub docs_filtered: u64,
    pub docs_skipped: u64,
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    pub docs_kept: u64,
    /// Kept documents set aside for `tinyllama eval` (not in the training shards).
    pub docs_holdout: u64,
    /// Tokens in the training shards (holdout excluded).
    pub tokens: u64,
    pub holdout_tokens: u64,
    pub shards: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CorpusManifest {
    pub name: String,
    pub totals: Totals,
    pub files: Vec<FileStats>,
    pub shards: Vec<ShardEntry>,
    pub holdout_shards: Vec<ShardEntry>,
    /// Every skipped record with its reason (only with `on_error = "skip"`).
    pub skipped: Vec<SkippedRow>,
}

impl Totals {
    pub fn add_file(&mut self, f: &FileStats) {
        self.files += 1;
        self.bytes += f.bytes;
        self.docs_read += f.docs_read;
        self.docs_filtered += f.docs_filtered;
        self.docs_skipped += f.docs_skipped;
        self.exact_duplicates += f.exact_duplicates;
        self.near_duplicates += f.near_duplicates;
        self.docs_kept += f.docs_kept;
    }
}
