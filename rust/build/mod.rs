//! The `mix build` pipeline: corpora in, token shards + manifests + the locked `mix.json` out.
//!
//! ```text
//! for each corpus:  discover files (sorted)
//!   [dedup]         fingerprint each file -> find duplicates (keep the earliest)    (dedup/)
//!   tokenize        each input file -> one staged part (a shard of its kept docs)
//!   pack            parts in file order -> fixed-size shards + holdout + manifest
//! write mix.json last (it pins the schedule, tokenizer and manifests); drop the staging dir
//! ```
//!
//! Parallelism: the per-file stages (fingerprint, tokenize) run through [`stream`]: files are
//! taken largest first, each read on a reader thread into batches that every thread of the
//! pool works on, and written in row order by an ordered sink, with a cap on the documents in
//! flight (`in_flight_docs`); so one big file keeps every core busy as many small ones do.
//!
//! Determinism: every per-file output is a pure function of that file, the spec and the
//! tokenizer (written in row order whatever the threads), and packing walks files in sorted
//! order, so the bytes never depend on the number of workers or the in-flight cap. Resume: parts are committed atomically and carry their stats; a rerun
//! skips files whose part exists (made under the same config identity) and redoes the cheap
//! pack. A kill at any instant leaves either the previous complete mix or resumable staging.
//!
//! What the output dir may hold ([`Plan::prepare`]): nothing, this build's staging, or a
//! complete mix. A complete mix of the same identity is "up to date" only when every file its
//! lock names is there as built ([`manifest::check_mix`]: the small pinned files by sha256,
//! each shard by its size and footer against its manifest entry, without reading shard data);
//! otherwise it is rebuilt, and the summary says why. Full content verification is `mix
//! verify`'s and the readers' first-touch check's job. A complete mix of another identity is replaced only with `force`; a non-empty
//! dir that is no mix dir at all (no `mix.json`, no `.staging`) is refused: a build deletes
//! nothing it did not create. Staged parts carry their checksum in their sidecar; a part that
//! does not verify is redone by the tokenize stage and never packed. (Callers hold the
//! directory's exclusive lock, `OUT/.lock`, around all of this: see `tinyllama/lock.py`.)

pub mod config;
mod dedup_stage;
pub mod fault;
pub mod manifest;
mod pack;
pub mod progress;
pub mod stream;
mod tokenize_stage;

/// Inputs the build's unit tests share: the test slice's SlimPajama files.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::source::{OnError, SourceOptions};
    use std::path::{Path, PathBuf};

    /// SlimPajama file `i` (0 or 1) of the test slice.
    pub fn slim(i: usize) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
            "python/tests/data/corpora/slimpajama/train/chunk1/example_train_000{i}.jsonl.zst"
        ))
    }

    /// Reading `text`, failing on a bad record.
    pub fn options() -> SourceOptions {
        SourceOptions {
            text: "text".into(),
            exclude: Vec::new(),
            on_error: OnError::Fail,
            max_doc_bytes: 64 << 20,
        }
    }
}

use crate::error::{Error, IoContext, Result};
use crate::filter::{self, DocFilter, FilterChain};
use crate::mix::{CorpusSize, Schedule, StageSpec};
use crate::shard::{write_atomic, Dtype};
use crate::source;
use crate::tokenize::Tokenizer;
pub use config::{BuildConfig, CorpusConfig, DedupMode};
pub use dedup_stage::{dedup_files, params as dedup_params, FilesDedup, PairsWork};
use manifest::{FileStats, SkippedRow, LOCK_NAME, MIX_FORMAT, MIX_FORMAT_VERSION, PINS};
pub use pack::ShardPlan;
pub use progress::{Progress, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What a build did, for the CLI's last line.
#[derive(Debug, Clone, Default)]
pub struct BuildSummary {
    pub up_to_date: bool,
    /// Why a complete mix of this identity was rebuilt (a file its lock names was missing or
    /// did not verify), if it was.
    pub rebuilt: Option<String>,
    pub files_resumed: u64,
    pub files_processed: u64,
    pub docs_kept: u64,
    pub tokens: u64,
}

/// A staged part's sidecar: the file's stats, its skipped rows and the part's checksum.
/// Written after the part, so its presence means the part is complete; the part is only used
/// (resumed, packed) when it verifies against this checksum.
#[derive(Serialize, Deserialize)]
struct PartStats {
    stats: FileStats,
    skipped: Vec<SkippedRow>,
    /// xxh3-64 (hex) of the part, as in its footer. Empty in sidecars of older builds: such a
    /// part is redone.
    #[serde(default)]
    checksum: String,
    /// Every document the corpus's filters dropped, in row order (for the filter report).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dropped: Vec<filter::report::DroppedRow>,
}

/// What [`Plan::prepare_report`] found.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// A complete mix of this identity, every file its lock names verified: nothing to do.
    pub up_to_date: bool,
    /// A complete mix of this identity was there but did not verify: why (it is rebuilt).
    pub rebuilt: Option<String>,
}

struct Ctx<'a> {
    cfg: &'a BuildConfig,
    tokenizer: &'a Tokenizer,
    fingerprint: [u8; 32],
    dtype: Dtype,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Each corpus's filter chain (by corpus index; empty chains without filters).
    chains: &'a [FilterChain],
    progress: &'a Progress,
}

/// Everything the stages need that follows from the config alone: the loaded tokenizer, the
/// token dtype and specials, the discovered input files and the build's identity. Loading a
/// plan writes nothing, so every process of a distributed build (Ray tasks) loads its own and
/// they all agree: the identity check against the staging dir ([`Plan::check_staging`]) makes
/// sure they do (same inputs, same spec, same tokenizer).
pub struct Plan {
    cfg: BuildConfig,
    tokenizer: Tokenizer,
    fingerprint: [u8; 32],
    dtype: Dtype,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Each corpus's input files, named and sorted by `source::discover`.
    inputs: Vec<Vec<source::Input>>,
    /// The trunk's stages (a plain spec's whole schedule).
    stages: Vec<StageSpec>,
    /// A family's branches: name, the branch's own stages, and its whole schedule's stages
    /// (the trunk's, then its own).
    branches: Vec<Branch>,
    identity: String,
    chains: Vec<FilterChain>,
    /// The resolved settings of every filter, as the lock records them (null without any).
    filter_settings: serde_json::Value,
}

/// One branch of a family, resolved.
#[derive(Clone, Debug)]
struct Branch {
    name: String,
    /// As the spec gave them (recorded in the lock).
    own: serde_json::Value,
    /// Trunk stages, then the branch's own: the branch's whole schedule.
    stages: Vec<StageSpec>,
}

/// What one per-file task did, for the caller's progress display.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileWork {
    pub resumed: bool,
    pub bytes: u64,
    pub docs: u64,
    pub docs_kept: u64,
    pub tokens: u64,
}

/// What one corpus's dedup decision removed.
#[derive(Debug, Clone, Copy, Default)]
pub struct DedupWork {
    pub resumed: bool,
    pub exact: u64,
    pub near: u64,
}

/// Validate the config, load the tokenizer, discover the inputs and compute the identity.
pub fn plan(cfg: &BuildConfig) -> Result<Plan> {
    validate(cfg)?;
    let tokenizer = Tokenizer::from_file(&cfg.tokenizer)?;
    let vocab = tokenizer.vocab_size();
    let dtype = match cfg.dtype {
        Some(d) if (vocab as u64) > d.max_id() + 1 => {
            return Err(Error::tokenizer(
                &cfg.tokenizer,
                format!("vocabulary of {vocab} tokens does not fit dtype {d:?}: use u32 or leave `dtype` unset"),
            ))
        }
        Some(d) => d,
        None => Dtype::for_vocab(vocab),
    };
    // The tokenizer decides which ids are BOS / EOS (one owner: `Tokenizer::bos_id`).
    let special = |id: Option<u32>, name: &str, want: bool| -> Result<Option<u32>> {
        if !want {
            return Ok(None);
        }
        id.map(Some).ok_or_else(|| {
            Error::tokenizer(
                &cfg.tokenizer,
                format!("has no {name} token; set add_bos/add_eos = false"),
            )
        })
    };
    let bos = special(tokenizer.bos_id(), "BOS (<s>)", cfg.add_bos)?;
    let eos = special(tokenizer.eos_id(), "EOS (</s>)", cfg.add_eos)?;
    let mut fingerprint = [0u8; 32];
    hex::decode_to_slice(tokenizer.sha256(), &mut fingerprint)
        .map_err(|e| Error::tokenizer(&cfg.tokenizer, e.to_string()))?;

    let mut inputs = Vec::with_capacity(cfg.corpora.len());
    for corpus in &cfg.corpora {
        inputs.push(source::discover(&corpus.base, &corpus.paths)?);
    }
    let mut input_ids = Vec::with_capacity(inputs.len());
    for files in &inputs {
        let mut ids = Vec::with_capacity(files.len());
        // By name and size only: the same files give the same identity wherever they are.
        for f in files {
            ids.push((f.name.clone(), f.size));
        }
        input_ids.push(ids);
    }
    let stages: Vec<StageSpec> = serde_json::from_value(cfg.stages.clone())
        .map_err(|e| Error::Spec(format!("stages: {e}")))?;
    // Check the schedule now (weights, batch sizes), not after hours of tokenizing; only
    // "a weighted corpus came out empty" has to wait for the real token counts.
    let provisional: Vec<CorpusSize> = cfg
        .corpora
        .iter()
        .map(|c| CorpusSize {
            name: c.name.clone(),
            tokens: 1 << 40,
        })
        .collect();
    Schedule::new(cfg.seq_len, cfg.seed, provisional.clone(), stages.clone())?;
    let mut branches = Vec::with_capacity(cfg.branches.len());
    for b in &cfg.branches {
        let key = format!("branches.{}.stages", b.name);
        let own: Vec<StageSpec> = serde_json::from_value(b.stages.clone())
            .map_err(|e| Error::Spec(format!("{key}: {e}")))?;
        if own.is_empty() {
            return Err(Error::Spec(format!(
                "{key}: a branch needs at least one stage"
            )));
        }
        let whole: Vec<StageSpec> = stages.iter().cloned().chain(own).collect();
        Schedule::new(cfg.seq_len, cfg.seed, provisional.clone(), whole.clone())
            .map_err(|e| Error::Spec(format!("branches.{}: {e}", b.name)))?;
        branches.push(Branch {
            name: b.name.clone(),
            own: b.stages.clone(),
            stages: whole,
        });
    }
    let (chains, filter_settings) = filter_chains(cfg)?;
    let identity = cfg.identity(tokenizer.sha256(), &input_ids, &filter_settings);
    Ok(Plan {
        cfg: cfg.clone(),
        tokenizer,
        fingerprint,
        dtype,
        bos,
        eos,
        inputs,
        stages,
        branches,
        identity,
        chains,
        filter_settings,
    })
}

/// Every corpus's filter chain (its `filters`, then `[decontaminate]`, built once for all)
/// and their resolved settings: `{"corpora": {name: [{name, settings}]}, "decontaminate":
/// settings}`, or null when no corpus has a filter (so a spec without filters keeps the
/// identity it always had).
fn filter_chains(cfg: &BuildConfig) -> Result<(Vec<FilterChain>, serde_json::Value)> {
    let mut shared: Vec<std::sync::Arc<dyn DocFilter>> = Vec::new();
    if let Some(table) = &cfg.decontaminate {
        let f = filter::filter("decontaminate", table).map_err(|e| match e {
            Error::Spec(msg) => Error::Spec(msg.trim_start_matches("filters.").to_string()),
            other => other,
        })?;
        shared.push(std::sync::Arc::from(f));
    }
    let mut chains = Vec::with_capacity(cfg.corpora.len());
    let mut settings = serde_json::Map::new();
    for c in &cfg.corpora {
        let chain = FilterChain::for_corpus(&c.name, &c.filters, &shared)?;
        if !chain.is_empty() {
            settings.insert(c.name.clone(), chain.settings());
        }
        chains.push(chain);
    }
    if settings.is_empty() {
        return Ok((chains, serde_json::Value::Null));
    }
    let decontaminate = shared
        .first()
        .map(|f| f.settings())
        .unwrap_or(serde_json::Value::Null);
    Ok((
        chains,
        serde_json::json!({"corpora": settings, "decontaminate": decontaminate}),
    ))
}

impl Plan {
    pub fn config(&self) -> &BuildConfig {
        &self.cfg
    }
    pub fn identity(&self) -> &str {
        &self.identity
    }
    /// The input files of corpus `corpus`, in sorted path order (the order of the result).
    pub fn files(&self, corpus: usize) -> &[source::Input] {
        self.inputs.get(corpus).map(Vec::as_slice).unwrap_or(&[])
    }

    fn staging(&self) -> PathBuf {
        self.cfg.out.join(".staging")
    }

    fn ctx<'a>(&'a self, progress: &'a Progress) -> Ctx<'a> {
        Ctx {
            cfg: &self.cfg,
            tokenizer: &self.tokenizer,
            fingerprint: self.fingerprint,
            dtype: self.dtype,
            bos: self.bos,
            eos: self.eos,
            chains: &self.chains,
            progress,
        }
    }

    fn corpus(&self, corpus: usize) -> Result<&CorpusConfig> {
        self.cfg.corpora.get(corpus).ok_or_else(|| {
            Error::Usage(format!(
                "corpora: no corpus #{corpus} (the spec has {})",
                self.cfg.corpora.len()
            ))
        })
    }

    /// What every per-corpus stage starts with: the staging must be this build's (see
    /// [`Plan::check_staging`]); returns the corpus's config and its staging dir.
    fn staged(&self, corpus: usize) -> Result<(&CorpusConfig, PathBuf)> {
        self.check_staging()?;
        let c = self.corpus(corpus)?;
        Ok((c, self.staging().join(&c.name)))
    }

    fn file(&self, corpus: usize, file: usize) -> Result<&source::Input> {
        let c = self.corpus(corpus)?;
        self.files(corpus).get(file).ok_or_else(|| {
            Error::Usage(format!(
                "corpora.{}: no input file #{file} (found {})",
                c.name,
                self.files(corpus).len()
            ))
        })
    }

    /// Make the output dir ready for the stages (run once, by whoever drives the build).
    /// Returns true when a complete mix of this identity is already there: nothing to do.
    pub fn prepare(&self) -> Result<bool> {
        self.prepare_report().map(|p| p.up_to_date)
    }

    /// [`Plan::prepare`], saying why a complete mix of this identity is rebuilt (see the
    /// module docs for what the output dir may hold). Checking a complete mix reads its small
    /// pinned files and each shard's header and footer, never the shards' data.
    pub fn prepare_report(&self) -> Result<Prepared> {
        let out = &self.cfg.out;
        std::fs::create_dir_all(out).ctx(out)?;
        check_out_dir(out)?;
        let mut rebuilt = None;
        let lock_path = out.join(LOCK_NAME);
        if lock_path.exists() {
            let found = completed_identity(out);
            if found.as_deref() == Some(self.identity.as_str()) {
                match manifest::check_mix(out) {
                    Ok(_) => {
                        // A kill between writing the lock and dropping the staging leaves it.
                        let staging = self.staging();
                        if staging.exists() {
                            std::fs::remove_dir_all(&staging).ctx(&staging)?;
                        }
                        return Ok(Prepared {
                            up_to_date: true,
                            rebuilt: None,
                        });
                    }
                    Err(e) => rebuilt = Some(e.to_string()),
                }
            } else if let Some(version) = self.older_format(out) {
                // Unreadable by this tinyllama whatever it holds, and made by a build of this
                // spec's name: the "rebuild" that opening it asks for.
                self.drop_other_mix(out)?;
                rebuilt = Some(format!(
                    "a mix of format {version}, rebuilt in format {MIX_FORMAT_VERSION}"
                ));
            } else if !self.cfg.force {
                let what = match &found {
                    Some(_) => format!(
                        "holds a complete mix of another spec ({:?}; its spec, inputs or \
                         tokenizer differ from these)",
                        completed_name(out).unwrap_or_default()
                    ),
                    None => "holds a mix whose mix.json is unreadable".to_string(),
                };
                return Err(Error::Spec(format!(
                    "{}: {what}; mix build refuses to replace it (nothing was changed): pass \
                     --force to rebuild it with this spec, or choose another --out",
                    out.display()
                )));
            } else {
                self.drop_other_mix(out)?;
            }
            // Staging first (a kill in between must leave a mix dir, not a dir that lost its
            // lock), then the lock goes, so a half-built mix is never taken for a complete one.
            prepare_staging(&self.staging(), &self.identity)?;
            std::fs::remove_file(&lock_path).ctx(&lock_path)?;
        }
        prepare_staging(&self.staging(), &self.identity)?;
        for corpus in &self.cfg.corpora {
            let dir = self.staging().join(&corpus.name);
            std::fs::create_dir_all(dir.join("parts")).ctx(&dir)?;
            std::fs::create_dir_all(dir.join("fingerprints")).ctx(&dir)?;
        }
        Ok(Prepared {
            up_to_date: false,
            rebuilt,
        })
    }

    /// The format version of the complete mix in `out` when it is older than this build's and
    /// was built from a spec of this name.
    fn older_format(&self, out: &Path) -> Option<u64> {
        let text = std::fs::read_to_string(out.join(LOCK_NAME)).ok()?;
        let lock: serde_json::Value = serde_json::from_str(&text).ok()?;
        let version = lock.get("format_version")?.as_u64()?;
        let same_name = lock.get("name")?.as_str()? == self.cfg.name;
        (same_name && version < u64::from(MIX_FORMAT_VERSION)).then_some(version)
    }

    /// `force` over a mix of another identity: drop the corpora its lock names that this
    /// build does not make (packing replaces the others). Only what a build created.
    fn drop_other_mix(&self, out: &Path) -> Result<()> {
        let text = std::fs::read_to_string(out.join(LOCK_NAME)).unwrap_or_default();
        let old: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let names = old
            .get("corpora")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name")?.as_str());
        for name in names {
            let plain =
                !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
            if plain && !self.cfg.corpora.iter().any(|c| c.name == name) {
                let dir = out.join("corpora").join(name);
                if dir.join("manifest.json").is_file() {
                    std::fs::remove_dir_all(&dir).ctx(&dir)?;
                }
            }
        }
        // And the branch schedules it locked that this build does not (the others are
        // rewritten): the schedule file, then its dir if nothing else is in it.
        let branches = old.get("branches").and_then(|b| b.as_object());
        for name in branches.into_iter().flat_map(|b| b.keys()) {
            let plain =
                !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
            if plain && !self.cfg.branches.iter().any(|b| &b.name == name) {
                let dir = out.join("branches").join(name);
                let file = dir.join("schedule.json");
                if file.is_file() {
                    std::fs::remove_file(&file).ctx(&file)?;
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        let _ = std::fs::remove_dir(out.join("branches"));
        Ok(())
    }

    /// A stage may only write into staging prepared for this very build: a process that sees
    /// other inputs (or another spec) than the one that prepared it must not mix its output in.
    pub fn check_staging(&self) -> Result<()> {
        let id_file = self.staging().join("identity");
        match std::fs::read_to_string(&id_file) {
            Ok(id) if id == self.identity => Ok(()),
            Ok(_) => Err(Error::Spec(format!(
                "{}: staging belongs to another build (the inputs, spec or tokenizer seen here \
                 differ from the ones the build was started with)",
                id_file.display()
            ))),
            // A stage before `prepare` (or on a machine that does not see the output dir).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Usage(format!(
                "{}: {e} (the build's staging was not prepared: call prepare first; or this \
                 process does not see the output dir)",
                id_file.display()
            ))),
            Err(e) => Err(Error::io(
                &id_file,
                format!("{e} (the build's staging was not prepared, or this process does not see the output dir)"),
            )),
        }
    }
}

/// The files `files` of corpus `corpus` in the order readers take them: largest first, so
/// the end of a stage is not one thread finishing one big file (ties: input order).
pub fn largest_first(files: &[source::Input]) -> Vec<usize> {
    let mut sized: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (std::cmp::Reverse(f.size), i))
        .collect();
    sized.sort();
    sized.into_iter().map(|(_, i)| i).collect()
}

impl Plan {
    /// What a per-file stage may hold in flight (see [`stream`]): the config's caps, each
    /// defaulting on its own.
    fn in_flight(&self) -> stream::InFlight {
        let default = stream::InFlight::default_for(self.cfg.workers);
        stream::InFlight {
            docs: self.cfg.in_flight_docs.unwrap_or(default.docs),
            bytes: self
                .cfg
                .in_flight_mb
                .map_or(default.bytes, |mb| mb.saturating_mul(1 << 20)),
        }
    }

    /// Run the per-file stage `stage` over input files `which` of corpus `corpus` (largest
    /// first, `workers` files at a time, every file spread over `pool`'s threads); each
    /// file's result, in the order of `which`.
    fn run_stage<S: stream::Stage>(
        &self,
        pool: &rayon::ThreadPool,
        corpus: usize,
        which: &[usize],
        stage: &S,
        progress: &Progress,
    ) -> Result<Vec<S::Done>> {
        let mut picked = Vec::with_capacity(which.len());
        for &i in which {
            picked.push(self.file(corpus, i)?.clone());
        }
        let order: Vec<usize> = largest_first(&picked)
            .into_iter()
            .map(|k| which[k])
            .collect();
        let (done, _) = stream::run(
            pool,
            stage,
            &order,
            self.cfg.workers,
            self.in_flight(),
            progress,
        )?;
        let mut by_index: HashMap<usize, S::Done> = done.into_iter().collect();
        Ok(which
            .iter()
            .map(|i| by_index.remove(i).expect("a result for every file run"))
            .collect())
    }
}

/// Fingerprint the input files `which` of corpus `corpus` into their committed stores (files
/// whose store is there are resumed), every file spread over `pool`'s threads, `workers`
/// files at a time. Returns what each did, in the order of `which`.
pub fn fingerprint_files(
    plan: &Plan,
    pool: &rayon::ThreadPool,
    corpus: usize,
    which: &[usize],
    progress: &Progress,
) -> Result<Vec<FileWork>> {
    let (c, dir) = plan.staged(corpus)?;
    let params = dedup_stage::params(&plan.cfg.dedup, c.dedup)?;
    let options = c.source_options();
    let stores = dir.join("fingerprints");
    let stage = dedup_stage::Fingerprint {
        files: plan.files(corpus),
        chain: &plan.chains[corpus],
        stores: &stores,
        options: &options,
        params: &params,
        resume: true,
        progress,
    };
    plan.run_stage(pool, corpus, which, &stage, progress)
}

/// [`fingerprint_files`] of one file (a Ray task).
pub fn fingerprint_one(
    plan: &Plan,
    pool: &rayon::ThreadPool,
    corpus: usize,
    file: usize,
    progress: &Progress,
) -> Result<FileWork> {
    Ok(fingerprint_files(plan, pool, corpus, &[file], progress)?[0])
}

/// Find corpus `corpus`'s duplicates from its fingerprint stores (all must be committed) and
/// commit the decision (removed rows + report) to staging, where the tokenize stage of any
/// process reads it. A no-op when the decision is committed; nothing to do without dedup.
///
/// `partitions: None` searches here, in one process (the local build). `Some(p)` resolves the
/// components from the committed outputs of [`dedup_exact`] and of [`dedup_bands`] for each
/// of [`band_ranges`]`(plan, corpus, p)` (the distributed build). Same bytes either way.
pub fn dedup_corpus(plan: &Plan, corpus: usize, partitions: Option<usize>) -> Result<DedupWork> {
    let (c, dir) = plan.staged(corpus)?;
    if c.dedup == DedupMode::None {
        return Ok(DedupWork::default());
    }
    let ranges = partitions
        .map(|p| band_ranges(plan, corpus, p))
        .transpose()?;
    let work = dedup_stage::decide(&plan.cfg, c, &dir, plan.files(corpus), ranges.as_deref())?;
    if !work.resumed {
        fault::committed("dedup");
    }
    Ok(work)
}

/// The band ranges of `partitions` band partitions of corpus `corpus` (none when the corpus
/// has no near-duplicate stage; at most one partition per band).
pub fn band_ranges(plan: &Plan, corpus: usize, partitions: usize) -> Result<Vec<Range<usize>>> {
    let c = plan.corpus(corpus)?;
    if c.dedup != DedupMode::Near {
        return Ok(Vec::new());
    }
    let params = dedup_stage::params(&plan.cfg.dedup, c.dedup)?;
    Ok(crate::dedup::band_partitions(params.bands, partitions))
}

/// The distributed build's exact-groups stage of corpus `corpus` (after all its fingerprints).
pub fn dedup_exact(plan: &Plan, corpus: usize) -> Result<PairsWork> {
    let (c, dir) = plan.staged(corpus)?;
    dedup_stage::decide_exact(&plan.cfg, c, &dir, plan.files(corpus))
}

/// The distributed build's band stage of corpus `corpus` for the bands `bands` (after
/// [`dedup_exact`]); partitions run independently, on any machines.
pub fn dedup_bands(plan: &Plan, corpus: usize, bands: Range<usize>) -> Result<PairsWork> {
    let (c, dir) = plan.staged(corpus)?;
    dedup_stage::decide_bands(&plan.cfg, c, &dir, plan.files(corpus), bands)
}

/// Tokenize the input files `which` of corpus `corpus` into their committed staged parts
/// (files whose part is there and verifies are resumed), skipping the rows the corpus's
/// committed dedup decision removed; every file spread over `pool`'s threads, `workers` files
/// at a time. Returns what each did, in the order of `which`.
pub fn tokenize_files(
    plan: &Plan,
    pool: &rayon::ThreadPool,
    corpus: usize,
    which: &[usize],
    progress: &Progress,
) -> Result<Vec<FileWork>> {
    let (c, dir) = plan.staged(corpus)?;
    let removed = |file: usize| match c.dedup {
        DedupMode::None => Ok(HashMap::new()),
        DedupMode::Exact | DedupMode::Near => dedup_stage::removed_rows(&dir, file),
    };
    let ctx = plan.ctx(progress);
    let stage = tokenize_stage::Tokenize {
        ctx: &ctx,
        chain: &plan.chains[corpus],
        corpus: c,
        dir: &dir,
        files: plan.files(corpus),
        removed: &removed,
    };
    let done = plan.run_stage(pool, corpus, which, &stage, progress)?;
    Ok(done
        .into_iter()
        .map(|(part, resumed)| FileWork {
            resumed,
            bytes: part.stats.bytes,
            docs: part.stats.docs_read,
            docs_kept: part.stats.docs_kept,
            tokens: part.stats.tokens,
        })
        .collect())
}

/// [`tokenize_files`] of one file (a Ray task).
pub fn tokenize_one(
    plan: &Plan,
    pool: &rayon::ThreadPool,
    corpus: usize,
    file: usize,
    progress: &Progress,
) -> Result<FileWork> {
    Ok(tokenize_files(plan, pool, corpus, &[file], progress)?[0])
}

/// The shard layout of corpus `corpus` (all its parts must be committed): what
/// [`pack_shard`] tasks write, one shard each, before [`finish`].
pub fn pack_layout(plan: &Plan, corpus: usize) -> Result<Vec<ShardPlan>> {
    let (c, dir) = plan.staged(corpus)?;
    let n = plan.files(corpus).len();
    for index in 0..n {
        read_part_stats(&dir, index)?;
    }
    pack::layout(&dir, n, plan.cfg.shard_tokens, c.holdout_docs)
}

/// What one [`pack_shard`] task did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PackWork {
    pub resumed: bool,
    pub docs: u64,
    pub tokens: u64,
}

/// Write shard `shard` of corpus `corpus`'s layout into staging (a no-op when it is there);
/// [`finish`] moves it into the mix. Shards are independent: any process can write any.
pub fn pack_shard(
    plan: &Plan,
    corpus: usize,
    shard: &ShardPlan,
    progress: &Progress,
) -> Result<PackWork> {
    let (_, dir) = plan.staged(corpus)?;
    let (entry, resumed) = pack::write_shard(&plan.ctx(progress), &dir, shard)?;
    Ok(PackWork {
        resumed,
        docs: entry.docs,
        tokens: entry.tokens,
    })
}

/// Pack every corpus's committed parts into shards + manifest, write the schedule, the
/// tokenizer and, last, the lock `mix.json`; then drop the staging. Every part must be there.
pub fn finish(plan: &Plan, progress: &Progress) -> Result<BuildSummary> {
    plan.check_staging()?;
    let cfg = &plan.cfg;
    let ctx = plan.ctx(progress);
    let out = &cfg.out;
    let staging = plan.staging();
    let mut summary = BuildSummary::default();
    let mut corpus_summaries = Vec::new();
    let mut sizes = Vec::new();
    for (i, corpus) in cfg.corpora.iter().enumerate() {
        let dir = staging.join(&corpus.name);
        let files = plan.files(i);
        let mut parts = Vec::with_capacity(files.len());
        for index in 0..files.len() {
            parts.push(read_part_stats(&dir, index)?);
        }
        let dropped: Vec<filter::report::DroppedRow> = parts
            .iter()
            .flat_map(|p| p.dropped.iter().cloned())
            .collect();
        let manifest = pack::pack(&ctx, corpus, &dir, parts)?;
        let has_filters = !plan.chains[i].is_empty();
        if has_filters {
            let path = out
                .join("corpora")
                .join(&corpus.name)
                .join("filter_report.parquet");
            filter::report::write_report(&path, &dropped)?;
        }
        if corpus.dedup != DedupMode::None {
            // Copied, not moved: a finish killed after this point must find it again.
            let staged = dedup_stage::report_path(&dir);
            let bytes = std::fs::read(&staged).ctx(&staged)?;
            let path = out
                .join("corpora")
                .join(&corpus.name)
                .join("dedup_report.parquet");
            write_atomic(&path, &bytes)?;
        }
        summary.docs_kept += manifest.totals.docs_kept;
        summary.tokens += manifest.totals.tokens;
        sizes.push(CorpusSize {
            name: corpus.name.clone(),
            tokens: manifest.totals.tokens,
        });
        corpus_summaries.push(serde_json::json!({
            "name": corpus.name,
            "docs": manifest.totals.docs_kept - manifest.totals.docs_holdout,
            "tokens": manifest.totals.tokens,
            "shards": manifest.shards.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        }));
    }
    let schedule = Schedule::new(cfg.seq_len, cfg.seed, sizes.clone(), plan.stages.clone())?;
    schedule.save(out.join("schedule.json"))?;
    // A family: one schedule per branch (the trunk's stages, then its own), beside the
    // trunk's; every corpus's shards serve them all.
    let mut branches = serde_json::Map::new();
    let mut branch_files = Vec::new();
    for b in &plan.branches {
        let whole = Schedule::new(cfg.seq_len, cfg.seed, sizes.clone(), b.stages.clone())
            .map_err(|e| Error::Spec(format!("branches.{}: {e}", b.name)))?;
        let rel = format!("branches/{}/schedule.json", b.name);
        let path = out.join(&rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ctx(dir)?;
        }
        whole.save(&path)?;
        branches.insert(
            b.name.clone(),
            serde_json::json!({
                "stages": b.own,
                "num_steps": whole.num_steps(),
                "schedule": rel,
                "epochs": whole.epochs(),
            }),
        );
        branch_files.push(rel);
    }
    for ((c, w), e) in corpus_summaries
        .iter_mut()
        .zip(schedule.windows())
        .zip(schedule.epochs())
    {
        c["windows"] = (*w).into();
        c["epochs"] = e.into();
    }
    write_atomic(
        &out.join("tokenizer.json"),
        &crate::tokenize::read_tokenizer_json(&cfg.tokenizer)?,
    )?;
    // Pin every metadata file the mix is read through (shards are pinned by the manifests).
    let mut pinned = vec!["schedule.json".to_string(), "tokenizer.json".to_string()];
    pinned.extend(branch_files);
    for (i, corpus) in cfg.corpora.iter().enumerate() {
        pinned.push(format!("corpora/{}/manifest.json", corpus.name));
        if !plan.chains[i].is_empty() {
            pinned.push(format!("corpora/{}/filter_report.parquet", corpus.name));
        }
        if corpus.dedup != DedupMode::None {
            pinned.push(format!("corpora/{}/dedup_report.parquet", corpus.name));
        }
    }
    let mut pins = serde_json::Map::new();
    for rel in pinned {
        let digest = manifest::sha256_file(&out.join(&rel))?;
        pins.insert(rel, digest.into());
    }
    let mut lock = serde_json::json!({
        "format": MIX_FORMAT,
        "format_version": MIX_FORMAT_VERSION,
        "identity": plan.identity,
        "name": cfg.name,
        "seed": cfg.seed,
        "seq_len": cfg.seq_len,
        "tokenizer": "tokenizer.json",
        "tokenizer_sha256": plan.tokenizer.sha256(),
        "vocab_size": plan.tokenizer.vocab_size(),
        "dtype": plan.dtype,
        "bos_id": plan.bos,
        "eos_id": plan.eos,
        "corpora": corpus_summaries,
        "dedup": cfg.dedup,
        "stages": cfg.stages,
        "num_steps": schedule.num_steps(),
        "schedule": "schedule.json",
    });
    if !plan.filter_settings.is_null() {
        lock["filters"] = plan.filter_settings.clone();
    }
    if !branches.is_empty() {
        // The trunk's last step + 1: every branch's batches equal the trunk's before it.
        lock["branch_step"] = schedule.num_steps().into();
        lock["branches"] = branches.into();
    }
    lock[PINS] = pins.into();
    manifest::seal(&mut lock);
    let text = serde_json::to_string_pretty(&lock).expect("lock serialises") + "\n";
    fault::committed("lock");
    write_atomic(&out.join(LOCK_NAME), text.as_bytes())?;
    fault::committed("mix-json");
    std::fs::remove_dir_all(&staging).ctx(&staging)?;
    Ok(summary)
}

/// The local build: the same stages as a distributed one, on a thread pool of `workers`.
pub fn build(cfg: &BuildConfig, progress: &Progress) -> Result<BuildSummary> {
    let plan = plan(cfg)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.workers.max(1))
        .build()
        .map_err(|e| Error::Spec(format!("workers: {e}")))?;
    let prepared = pool.install(|| plan.prepare_report())?;
    if prepared.up_to_date {
        return Ok(BuildSummary {
            up_to_date: true,
            ..Default::default()
        });
    }
    let (mut resumed, mut processed) = (0, 0);
    for (c, corpus) in cfg.corpora.iter().enumerate() {
        let n = plan.files(c).len();
        let all: Vec<usize> = (0..n).collect();
        let bytes = plan.files(c).iter().map(|f| f.size).sum();
        if corpus.dedup != DedupMode::None {
            progress.start_stage(&format!("fingerprint {}", corpus.name), n as u64, bytes);
            fingerprint_files(&plan, &pool, c, &all, progress)?;
            progress.start_stage(&format!("find duplicates {}", corpus.name), 0, 0);
            pool.install(|| dedup_corpus(&plan, c, None))?;
        }
        progress.start_stage(&format!("tokenize {}", corpus.name), n as u64, bytes);
        for work in tokenize_files(&plan, &pool, c, &all, progress)? {
            if work.resumed {
                resumed += 1;
            } else {
                processed += 1;
            }
        }
    }
    let mut summary = pool.install(|| finish(&plan, progress))?;
    summary.files_resumed = resumed;
    summary.files_processed = processed;
    summary.rebuilt = prepared.rebuilt;
    Ok(summary)
}

fn validate(cfg: &BuildConfig) -> Result<()> {
    if cfg.corpora.is_empty() {
        return Err(Error::Spec(
            "corpora: at least one corpus is required".into(),
        ));
    }
    if cfg.shard_tokens == 0 {
        return Err(Error::Spec("shard_tokens: must be > 0".into()));
    }
    Ok(())
}

/// The identity recorded in a complete mix's lock, if there is one.
fn completed_identity(out: &Path) -> Option<String> {
    let text = std::fs::read_to_string(out.join(LOCK_NAME)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("identity")?.as_str().map(str::to_string)
}

fn completed_name(out: &Path) -> Option<String> {
    let text = std::fs::read_to_string(out.join(LOCK_NAME)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("name")?.as_str().map(str::to_string)
}

/// Entries of an output dir that do not make it a mix dir, nor a foreign one: the build's
/// lock file and its log (neither is part of the mix).
const NOT_THE_MIX: [&str; 2] = [".lock", "build.log"];

/// Whether `out` may be built into: empty (but for [`NOT_THE_MIX`]), or a mix dir (it has a
/// `mix.json` or a `.staging`). Anything else is the user's and is refused untouched.
pub fn check_out_dir(out: &Path) -> Result<()> {
    if out.join(LOCK_NAME).exists() || out.join(".staging").exists() {
        return Ok(());
    }
    let entries = match std::fs::read_dir(out) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(out, e)),
    };
    let mut foreign = Vec::new();
    for entry in entries {
        let name = entry.ctx(out)?.file_name().to_string_lossy().into_owned();
        if !NOT_THE_MIX.contains(&name.as_str()) {
            foreign.push(name);
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let shown = foreign
        .iter()
        .take(3)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = if foreign.len() > 3 { ", ..." } else { "" };
    Err(Error::Spec(format!(
        "{}: not empty and not a mix dir (no mix.json, no .staging; it holds {shown}{more}): \
         mix build refuses to write into it (nothing was changed); choose a new or empty --out",
        out.display()
    )))
}

/// Keep staging made under the same identity (that is the resume); otherwise start afresh.
fn prepare_staging(staging: &Path, identity: &str) -> Result<()> {
    let id_file = staging.join("identity");
    let same = std::fs::read_to_string(&id_file)
        .map(|s| s == identity)
        .unwrap_or(false);
    if !same {
        if staging.exists() {
            std::fs::remove_dir_all(staging).ctx(staging)?;
        }
        std::fs::create_dir_all(staging).ctx(staging)?;
        write_atomic(&id_file, identity.as_bytes())?;
    }
    Ok(())
}

fn part_paths(dir: &Path, index: usize) -> (PathBuf, PathBuf) {
    let parts = dir.join("parts");
    (
        parts.join(format!("{index:06}.bin")),
        parts.join(format!("{index:06}.json")),
    )
}

/// A committed part's stats (its sidecar is written after the part, so it marks completion).
fn read_part_stats(dir: &Path, index: usize) -> Result<PartStats> {
    let (part, sidecar) = part_paths(dir, index);
    let text = std::fs::read_to_string(&sidecar).map_err(|e| {
        Error::io(
            &sidecar,
            format!("{e} (input file #{index} was not tokenized)"),
        )
    })?;
    if !part.exists() {
        return Err(Error::io(&part, "missing staged part"));
    }
    serde_json::from_str(&text).map_err(|e| Error::shard(&sidecar, e.to_string()))
}

/// Open staged part `part` and check it against its sidecar `stats`: the footer's checksum is
/// the sidecar's, and the checksum over every byte holds. The error names the part.
fn verified_part(part: &Path, stats: &PartStats) -> Result<crate::shard::Shard> {
    let shard = matching_part(part, stats)?;
    shard.verify().map_err(|e| {
        Error::integrity(
            part,
            format!("staged part is damaged ({e}): rerun `mix build` to redo it"),
        )
    })?;
    Ok(shard)
}

/// Staged part `index` under `dir` for packing: its sidecar's checksum is its footer's and,
/// with `full`, the checksum over every byte holds ([`verified_part`]). Packing lays out
/// every part with `full` (once, before any shard is written), then copies from them.
fn checked_part(dir: &Path, index: usize, full: bool) -> Result<crate::shard::Shard> {
    let stats = read_part_stats(dir, index)?;
    let part = part_paths(dir, index).0;
    if full {
        verified_part(&part, &stats)
    } else {
        matching_part(&part, &stats)
    }
}

/// Open staged part `part`; its footer's checksum must be the one its sidecar recorded.
fn matching_part(part: &Path, stats: &PartStats) -> Result<crate::shard::Shard> {
    let shard = crate::shard::Shard::open(part)?;
    if stats.checksum.is_empty() {
        return Err(Error::integrity(
            part,
            "staged part without a checksum in its sidecar (staged by an older tinyllama): \
             rerun `mix build` to redo it",
        ));
    }
    if shard.checksum_hex() != stats.checksum {
        return Err(Error::integrity(
            part,
            format!(
                "staged part's checksum {} is not the {} its sidecar recorded: rerun `mix \
                 build` to redo it",
                shard.checksum_hex(),
                stats.checksum
            ),
        ));
    }
    Ok(shard)
}
