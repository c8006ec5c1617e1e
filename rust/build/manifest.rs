//! What a built mix records about itself: `mix.json` (the lock, written last: its presence
//! means the build completed) and one `corpora/<name>/manifest.json` per corpus.
//! Nothing here names the mix's own location, a time or a host: two builds of one spec
//! compare equal file by file. (`OUT/.lock`, the build's exclusive lock, and `OUT/build.log`
//! are not part of the mix: nothing pins them and they differ between builds.)
//!
//! Integrity: `mix.json` pins the sha256 of `schedule.json`, `tokenizer.json`, each
//! manifest and each dedup report, and seals itself ([`seal`]); each manifest records every
//! shard's docs, tokens and xxh3 checksum. [`open_lock`] checks the lock and the pinned
//! files whenever a mix is opened (sampler, loader, `tinyllama.Mix`); [`verify_mix`] checks
//! every file the lock names (what "up to date" means to `mix build`, and `mix verify`).

use crate::error::{Error, IoContext, Result};
use crate::shard::Shard;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const MIX_FORMAT: &str = "tinyllama-mix";
/// 2: `mix.json` pins its metadata files (`sha256`) and seals itself (`lock_sha256`); staged
/// parts carry their checksum. A format-1 mix is refused with "rebuild" (a rebuild over it,
/// same spec, needs no `--force`).
/// 3: corpora's sample streams keyed by name (schedule v2); families (`branches` in the
/// lock, a schedule per branch). A format-2 mix is refused the same way.
/// 4: inputs named by their path under the pattern's directory (the same from a directory or a
/// bucket), with their sha256 in the manifests; so identities and reports name files anew.
/// A format-3 mix is refused the same way, and `mix build` of a spec of the same name
/// rebuilds over it without `--force`.
pub const MIX_FORMAT_VERSION: u32 = 4;

/// Per input file, what happened to its records.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FileStats {
    /// Its path under its pattern's directory (`source::discover`): the same wherever it was read.
    pub path: String,
    pub bytes: u64,
    /// sha256 (hex) of the input file's bytes, as read by the build.
    #[serde(default)]
    pub sha256: String,
    pub docs_read: u64,
    pub docs_filtered: u64,
    pub docs_skipped: u64,
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    pub docs_kept: u64,
    pub tokens: u64,
    /// Documents each quality filter dropped (also counted in `docs_filtered`, with the
    /// `exclude` rows); only filters that dropped something.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filtered_by: BTreeMap<String, u64>,
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
    /// Documents each of the corpus's filters dropped (every filter of its chain, zeros
    /// included; absent without filters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filtered_by: BTreeMap<String, u64>,
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
        for (name, n) in &f.filtered_by {
            *self.filtered_by.entry(name.clone()).or_default() += n;
        }
        self.docs_skipped += f.docs_skipped;
        self.exact_duplicates += f.exact_duplicates;
        self.near_duplicates += f.near_duplicates;
        self.docs_kept += f.docs_kept;
    }
}

// ---- the lock's pins: integrity where the data is used -------------------------------------

/// The lock's file name in a mix dir.
pub const LOCK_NAME: &str = "mix.json";
/// `mix.json` key: relative path -> sha256 (hex) of every metadata file the mix is read
/// through: `schedule.json`, `tokenizer.json`, each `corpora/NAME/manifest.json` and
/// `dedup_report.parquet`. Shards are pinned by their manifest entries (docs, tokens, xxh3).
pub const PINS: &str = "sha256";
/// `mix.json` key: sha256 of the lock itself without this key (compact JSON, sorted keys),
/// so an edited `mix.json` is refused like an edited schedule.
pub const SEAL: &str = "lock_sha256";

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// sha256 (hex) of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    Ok(sha256_hex(&std::fs::read(path).ctx(path)?))
}

fn seal_of(lock: &Value) -> String {
    let mut body = lock.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.remove(SEAL);
    }
    sha256_hex(&serde_json::to_vec(&body).expect("a JSON value serialises"))
}

/// Add the seal to a lock object: the last thing done before it is written.
pub fn seal(lock: &mut Value) {
    let digest = seal_of(lock);
    if let Some(obj) = lock.as_object_mut() {
        obj.insert(SEAL.into(), digest.into());
    }
}

/// A path a lock may name: relative, plain components only (nothing outside the mix dir).
fn inside(dir: &Path, rel: &str, lock: &Path) -> Result<PathBuf> {
    let p = Path::new(rel);
    let plain = !rel.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(Error::integrity(
            lock,
            format!("names {rel:?}, which is not a file of the mix dir"),
        ));
    }
    Ok(dir.join(p))
}

/// A built mix's checked lock (see [`open_lock`]).
pub struct MixLock {
    pub dir: PathBuf,
    pub value: Value,
}

impl MixLock {
    pub fn identity(&self) -> Option<&str> {
        self.value.get("identity")?.as_str()
    }
    pub fn vocab_size(&self) -> Option<u64> {
        self.value.get("vocab_size")?.as_u64()
    }
    /// The corpora's names, in the lock's order.
    pub fn corpora(&self) -> Vec<String> {
        self.value
            .get("corpora")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("name")?.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Corpus `name`'s manifest (pinned: [`open_lock`] checked its bytes).
    pub fn manifest(&self, name: &str) -> Result<(PathBuf, CorpusManifest)> {
        let lock_path = self.dir.join(LOCK_NAME);
        let rel = format!("corpora/{name}/manifest.json");
        let path = inside(&self.dir, &rel, &lock_path)?;
        let pinned = self.value.get(PINS).and_then(|p| p.get(&rel)).is_some();
        if !pinned {
            return Err(Error::integrity(
                &lock_path,
                format!("does not pin {rel}: edited after the build"),
            ));
        }
        let text = std::fs::read_to_string(&path).ctx(&path)?;
        let manifest = serde_json::from_str(&text)
            .map_err(|e| Error::integrity(&path, format!("unreadable manifest: {e}")))?;
        Ok((path, manifest))
    }
}

/// Read `dir/mix.json` and check it before anything is read through it: its format version
/// (an older format is refused with "rebuild"), its seal (an edited lock is refused), and the
/// sha256 of every file it pins (an edited schedule or manifest is refused, naming the file).
/// Reads every byte of the pinned files: small ones (KB to a few MB).
pub fn open_lock(dir: &Path) -> Result<MixLock> {
    let path = dir.join(LOCK_NAME);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::integrity(
            &path,
            format!("{e}: not a built mix (a build that did not complete leaves no mix.json)"),
        )
    })?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::integrity(&path, format!("unreadable lock: {e}")))?;
    if value.get("format").and_then(Value::as_str) != Some(MIX_FORMAT) {
        return Err(Error::integrity(&path, "not a tinyllama mix lock"));
    }
    let version = value.get("format_version").and_then(Value::as_u64);
    if version != Some(MIX_FORMAT_VERSION as u64) {
        let shown = version.map_or("unknown".to_string(), |v| v.to_string());
        return Err(Error::Spec(format!(
            "{}: a mix of format {shown}; this tinyllama reads format {MIX_FORMAT_VERSION}: \
             rebuild it (`tinyllama mix build --spec SPEC --out {}` rebuilds it in place)",
            path.display(),
            dir.display()
        )));
    }
    let sealed = value.get(SEAL).and_then(Value::as_str).unwrap_or_default();
    if sealed != seal_of(&value) {
        return Err(Error::integrity(
            &path,
            "edited after the build (it no longer matches its own seal `lock_sha256`): restore \
             it or rebuild the mix",
        ));
    }
    let pins = value
        .get(PINS)
        .and_then(Value::as_object)
        .ok_or_else(|| Error::integrity(&path, "has no pinned files: not a complete lock"))?;
    for (rel, want) in pins {
        let file = inside(dir, rel, &path)?;
        if !file.is_file() {
            return Err(Error::integrity(
                &file,
                "missing (mix.json pins it): the mix is incomplete; rebuild it",
            ));
        }
        let got = sha256_file(&file)?;
        if Some(got.as_str()) != want.as_str() {
            return Err(Error::integrity(
                &file,
                format!(
                    "sha256 {} differs from the {} mix.json pins: the file was edited or damaged \
                     after the build; restore it or rebuild the mix",
                    &got[..12],
                    want.as_str().map_or("?", |w| &w[..w.len().min(12)])
                ),
            ));
        }
    }
    Ok(MixLock {
        dir: dir.to_path_buf(),
        value,
    })
}

/// A shard of a manifest against its entry: present, structurally sound, its footer agreeing
/// with the entry (docs, tokens, checksum: a shard swapped for another is caught here).
pub fn open_entry(corpus_dir: &Path, entry: &ShardEntry) -> Result<Shard> {
    let lock = corpus_dir.join("manifest.json");
    let path = inside(corpus_dir, &entry.name, &lock)?;
    let shard = Shard::open(&path)?;
    let (docs, tokens, checksum) = (
        shard.n_docs() as u64,
        shard.n_tokens() as u64,
        shard.checksum_hex(),
    );
    if (docs, tokens, checksum.as_str()) != (entry.docs, entry.tokens, entry.checksum.as_str()) {
        return Err(Error::integrity(
            &path,
            format!(
                "holds {docs} docs / {tokens} tokens (checksum {checksum}), its manifest says \
                 {} / {} ({}): the shard was replaced after the build",
                entry.docs, entry.tokens, entry.checksum
            ),
        ));
    }
    Ok(shard)
}

/// Every file the lock names, checked without reading the shards' data: [`open_lock`] (the
/// small pinned files by sha256), then every training and holdout shard by [`open_entry`]
/// (present, its size agreeing with its footer, the footer's docs / tokens / checksum agreeing
/// with the manifest). What "up to date" means for `mix build`: a rerun on a 2T-token mix must
/// not read ~4 TB to find it has nothing to do. A byte flipped inside a shard's data is caught
/// by [`verify_mix`] (`tinyllama mix verify`) and by the readers' first-touch check instead.
pub fn check_mix(dir: &Path) -> Result<MixLock> {
    let lock = open_lock(dir)?;
    for name in lock.corpora() {
        let (path, manifest) = lock.manifest(&name)?;
        let corpus_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        for entry in manifest.shards.iter().chain(&manifest.holdout_shards) {
            open_entry(&corpus_dir, entry)?;
        }
    }
    Ok(lock)
}

/// Everything the lock names, checked: [`open_lock`], then every training and holdout shard
/// of every manifest ([`open_entry`], then its checksum over every byte and its token ids
/// against the vocabulary). What `mix verify` means. Shards are checked in
/// parallel on the current rayon pool; the first problem in lock order is reported.
pub fn verify_mix(dir: &Path) -> Result<MixLock> {
    use rayon::prelude::*;
    let lock = open_lock(dir)?;
    let vocab = lock.vocab_size();
    let mut work = Vec::new();
    for name in lock.corpora() {
        let (path, manifest) = lock.manifest(&name)?;
        let corpus_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        for entry in manifest.shards.into_iter().chain(manifest.holdout_shards) {
            work.push((corpus_dir.clone(), entry));
        }
    }
    work.par_iter()
        .map(|(corpus_dir, entry)| open_entry(corpus_dir, entry)?.check(vocab))
        .collect::<Vec<Result<()>>>()
        .into_iter()
        .collect::<Result<()>>()?;
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal lock over two pinned files, sealed as `finish` seals it.
    fn sealed_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("schedule.json"), b"{\"seed\":7}").unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
        let mut pins = serde_json::Map::new();
        for rel in ["schedule.json", "tokenizer.json"] {
            let digest = sha256_file(&dir.path().join(rel)).unwrap();
            pins.insert(rel.into(), digest.into());
        }
        let mut lock = serde_json::json!({
            "format": MIX_FORMAT,
            "format_version": MIX_FORMAT_VERSION,
            "corpora": [],
            "stages": [{"weights": {"a": 0.3, "b": 0.7}}],
        });
        lock[PINS] = pins.into();
        seal(&mut lock);
        let text = serde_json::to_string_pretty(&lock).unwrap();
        std::fs::write(dir.path().join(LOCK_NAME), text).unwrap();
        dir
    }

    fn edit(path: &Path, from: &str, to: &str) {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains(from));
        std::fs::write(path, text.replacen(from, to, 1)).unwrap();
    }

    #[test]
    fn a_sealed_lock_opens_and_survives_reformatting() {
        let dir = sealed_dir();
        open_lock(dir.path()).unwrap();
        // The seal is over the JSON value, not its layout: re-indenting is no edit.
        let path = dir.path().join(LOCK_NAME);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
        verify_mix(dir.path()).unwrap();
    }

    #[test]
    fn an_edited_lock_or_pinned_file_is_named() {
        let dir = sealed_dir();
        edit(&dir.path().join(LOCK_NAME), "0.3", "0.4");
        let err = open_lock(dir.path()).err().unwrap().to_string();
        assert!(err.contains("mix.json") && err.contains("edited"), "{err}");

        let dir = sealed_dir();
        edit(&dir.path().join("schedule.json"), "7", "8");
        let err = open_lock(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("schedule.json") && err.contains("sha256"),
            "{err}"
        );

        let dir = sealed_dir();
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        let err = open_lock(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn an_older_format_says_rebuild_and_a_pin_cannot_leave_the_dir() {
        let dir = sealed_dir();
        edit(
            &dir.path().join(LOCK_NAME),
            &format!("\"format_version\": {MIX_FORMAT_VERSION}"),
            "\"format_version\": 1",
        );
        let err = open_lock(dir.path()).err().unwrap();
        assert!(
            matches!(err, Error::Spec(_)) && err.to_string().contains("rebuild"),
            "{err}"
        );
        assert!(inside(dir.path(), "../x", Path::new("mix.json")).is_err());
        assert!(inside(dir.path(), "/etc/passwd", Path::new("mix.json")).is_err());
        assert!(inside(dir.path(), "corpora/a/manifest.json", Path::new("mix.json")).is_ok());
    }
}
