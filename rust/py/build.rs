//! Build bindings: `build_mix` (the local build), `BuildPlan` (its stages one by one, for the
//! Ray build) and `dedup_files` (dedup outside a build). Every call that reads corpora or
//! shards runs through [`interruptible`]: Ctrl-C stops it at the next file / batch boundary
//! (committed work stays, so a rerun resumes) and raises `KeyboardInterrupt`.

use super::{interruptible, long, without_gil, SpecError};
use crate::{build, source};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::time::Duration;

fn build_config(config_json: &str) -> PyResult<build::BuildConfig> {
    serde_json::from_str(config_json)
        .map_err(|e| SpecError::new_err(format!("spec: invalid build config: {e}")))
}

/// Run `mix build` from a resolved JSON config. `progress`, if given, is called about every
/// `interval` seconds as `progress(stage, files_done, files_total, docs, tokens, bytes,
/// bytes_total, seconds)` (the current stage's own counts, see `build::progress`);
/// Ctrl-C cancels the build cleanly (committed parts stay, so a rerun resumes).
#[pyfunction]
#[pyo3(signature = (config_json, progress = None, interval = 0.25))]
pub fn build_mix(
    py: Python<'_>,
    config_json: &str,
    progress: Option<PyObject>,
    interval: f64,
) -> PyResult<PyObject> {
    let cfg = build_config(config_json)?;
    let counters = build::Progress::default();
    // Every ended stage's final counts, then the current stage's (after the build ends: the
    // last stage's final counts).
    let mut report = |py: Python<'_>| -> PyResult<()> {
        let Some(cb) = &progress else { return Ok(()) };
        let mut snaps = counters.take_finished();
        snaps.push(counters.snapshot());
        for s in snaps {
            cb.call1(
                py,
                (
                    s.stage,
                    s.files_done,
                    s.files_total,
                    s.docs,
                    s.tokens,
                    s.bytes,
                    s.bytes_total,
                    s.seconds,
                ),
            )?;
        }
        Ok(())
    };
    let summary = interruptible(
        py,
        &counters,
        Duration::from_secs_f64(interval.max(0.01)),
        Some(&mut report),
        || build::build(&cfg, &counters),
    )?;
    let d = PyDict::new(py);
    d.set_item("up_to_date", summary.up_to_date)?;
    d.set_item("rebuilt", summary.rebuilt)?;
    d.set_item("files_resumed", summary.files_resumed)?;
    d.set_item("files_processed", summary.files_processed)?;
    d.set_item("docs_kept", summary.docs_kept)?;
    d.set_item("tokens", summary.tokens)?;
    Ok(d.into_any().unbind())
}

/// One build's plan, for running its stages separately (the Ray build: one task a file).
/// Loading it writes nothing; each process loads its own (tokenizer included) and keeps it
/// for its tasks. Each method runs one stage on a pool of the config's `workers` threads and
/// returns a dict of what it did; every stage commits atomically and is a no-op when its
/// output is committed, so a retried task neither duplicates nor loses documents.
#[pyclass(module = "tinyllama._core", name = "BuildPlan", frozen)]
pub struct PyBuildPlan {
    plan: build::Plan,
    pool: rayon::ThreadPool,
}

impl PyBuildPlan {
    /// Every stage: on the plan's pool, interruptible (the stage sees the cancel flag).
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&build::Plan, &build::Progress) -> crate::error::Result<T> + Send,
    ) -> PyResult<T> {
        long(py, |progress| self.pool.install(|| f(&self.plan, progress)))
    }
}

fn work_dict(py: Python<'_>, w: build::FileWork) -> PyResult<PyObject> {
    let d = PyDict::new(py);
    d.set_item("resumed", w.resumed)?;
    d.set_item("bytes", w.bytes)?;
    d.set_item("docs", w.docs)?;
    d.set_item("docs_kept", w.docs_kept)?;
    d.set_item("tokens", w.tokens)?;
    Ok(d.into_any().unbind())
}

fn pairs_dict(py: Python<'_>, w: build::PairsWork) -> PyResult<PyObject> {
    let d = PyDict::new(py);
    d.set_item("resumed", w.resumed)?;
    d.set_item("docs", w.docs)?;
    d.set_item("pairs", w.pairs)?;
    Ok(d.into_any().unbind())
}

#[pymethods]
impl PyBuildPlan {
    #[new]
    fn new(py: Python<'_>, config_json: &str) -> PyResult<Self> {
        let cfg = build_config(config_json)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.workers.max(1))
            .build()
            .map_err(|e| SpecError::new_err(format!("spec: workers: {e}")))?;
        let plan = long(py, |_| build::plan(&cfg))?;
        Ok(PyBuildPlan { plan, pool })
    }

    #[getter]
    fn identity(&self) -> String {
        self.plan.identity().to_string()
    }

    /// (name, number of input files, whether it is deduplicated) of each corpus, in order.
    fn corpora(&self) -> Vec<(String, usize, bool)> {
        self.plan
            .config()
            .corpora
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    c.name.clone(),
                    self.plan.files(i).len(),
                    c.dedup != build::DedupMode::None,
                )
            })
            .collect()
    }

    /// (name, size) of each input file of corpus `corpus`, in the build's order: its path under
    /// the pattern's directory (the same from a directory and from a bucket).
    fn files(&self, corpus: usize) -> PyResult<Vec<(String, u64)>> {
        if corpus >= self.plan.config().corpora.len() {
            return Err(SpecError::new_err(format!(
                "corpora: no corpus #{corpus} (the spec has {})",
                self.plan.config().corpora.len()
            )));
        }
        Ok(self
            .plan
            .files(corpus)
            .iter()
            .map(|f| (f.name.clone(), f.size))
            .collect())
    }

    /// Ready the output dir (run once, by the driver). True when the mix is already complete.
    fn prepare(&self, py: Python<'_>) -> PyResult<bool> {
        self.run(py, |p, _| p.prepare())
    }

    /// `prepare`, also saying why: (up to date, why a complete mix of this identity is
    /// rebuilt — a file its lock names was missing or did not match — or None).
    fn prepare_report(&self, py: Python<'_>) -> PyResult<(bool, Option<String>)> {
        let p = self.run(py, |p, _| p.prepare_report())?;
        Ok((p.up_to_date, p.rebuilt))
    }

    fn fingerprint(&self, py: Python<'_>, corpus: usize, file: usize) -> PyResult<PyObject> {
        // Not inside `install`: the stage's reader feeds the pool (it may run from a pool
        // thread too, see `build::stream`, but needs not).
        let w = long(py, |progress| {
            build::fingerprint_one(&self.plan, &self.pool, corpus, file, progress)
        })?;
        work_dict(py, w)
    }

    /// The band ranges `(start, end)` of `partitions` band partitions of corpus `corpus`
    /// (empty when it has no near-duplicate stage).
    fn band_ranges(&self, corpus: usize, partitions: usize) -> PyResult<Vec<(usize, usize)>> {
        let ranges = build::band_ranges(&self.plan, corpus, partitions)?;
        Ok(ranges.into_iter().map(|r| (r.start, r.end)).collect())
    }

    /// The exact-groups stage of corpus `corpus` (after all its fingerprints).
    fn dedup_exact(&self, py: Python<'_>, corpus: usize) -> PyResult<PyObject> {
        let w = self.run(py, |p, _| build::dedup_exact(p, corpus))?;
        pairs_dict(py, w)
    }

    /// The band stage of corpus `corpus` for bands `start..end` (after its exact stage).
    fn dedup_bands(
        &self,
        py: Python<'_>,
        corpus: usize,
        start: usize,
        end: usize,
    ) -> PyResult<PyObject> {
        let w = self.run(py, |p, _| build::dedup_bands(p, corpus, start..end))?;
        pairs_dict(py, w)
    }

    /// Commit corpus `corpus`'s dedup decision: searched here when `partitions` is None,
    /// otherwise resolved from the committed exact and band-partition stages.
    #[pyo3(signature = (corpus, partitions = None))]
    fn dedup(
        &self,
        py: Python<'_>,
        corpus: usize,
        partitions: Option<usize>,
    ) -> PyResult<PyObject> {
        let w = self.run(py, |p, _| build::dedup_corpus(p, corpus, partitions))?;
        let d = PyDict::new(py);
        d.set_item("resumed", w.resumed)?;
        d.set_item("exact_duplicates", w.exact)?;
        d.set_item("near_duplicates", w.near)?;
        Ok(d.into_any().unbind())
    }

    fn tokenize(&self, py: Python<'_>, corpus: usize, file: usize) -> PyResult<PyObject> {
        let w = long(py, |progress| {
            build::tokenize_one(&self.plan, &self.pool, corpus, file, progress)
        })?;
        work_dict(py, w)
    }

    /// The shard layout of corpus `corpus` (after all its parts), one JSON object per shard:
    /// `{"name", "slices": [[part, start, end]...], "docs", "tokens"}`.
    fn pack_layout(&self, py: Python<'_>, corpus: usize) -> PyResult<Vec<String>> {
        let shards = self.run(py, |p, _| build::pack_layout(p, corpus))?;
        Ok(shards
            .iter()
            .map(|s| serde_json::to_string(s).expect("a shard plan serialises"))
            .collect())
    }

    /// Write one shard of the layout (a JSON object from `pack_layout`) into staging.
    fn pack_shard(&self, py: Python<'_>, corpus: usize, shard_json: &str) -> PyResult<PyObject> {
        let shard: build::ShardPlan = serde_json::from_str(shard_json)
            .map_err(|e| SpecError::new_err(format!("pack: invalid shard plan: {e}")))?;
        let w = self.run(py, |p, progress| {
            build::pack_shard(p, corpus, &shard, progress)
        })?;
        let d = PyDict::new(py);
        d.set_item("resumed", w.resumed)?;
        d.set_item("docs", w.docs)?;
        d.set_item("tokens", w.tokens)?;
        Ok(d.into_any().unbind())
    }

    /// Pack, write the schedule, the tokenizer and the lock; drop the staging.
    fn finish(&self, py: Python<'_>) -> PyResult<PyObject> {
        let s = self.run(py, build::finish)?;
        let d = PyDict::new(py);
        d.set_item("docs_kept", s.docs_kept)?;
        d.set_item("tokens", s.tokens)?;
        Ok(d.into_any().unbind())
    }
}

/// Dedup `paths` (in this order: the earliest duplicate is kept) outside a build, with the
/// spec's `[dedup]` table as JSON (defaults: SlimPajama's parameters) on `workers` threads.
/// Returns `{docs, exact, near, removed: [(file index, row)], fingerprint_seconds,
/// find_seconds, spilled_runs}`. Scratch files go under `work_dir` and are removed, also when
/// Ctrl-C stops it (`KeyboardInterrupt`).
#[pyfunction]
#[pyo3(signature = (paths, text, params_json, work_dir, workers, max_doc_bytes = 64 << 20))]
pub fn dedup_files(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    text: String,
    params_json: &str,
    work_dir: PathBuf,
    workers: usize,
    max_doc_bytes: u64,
) -> PyResult<PyObject> {
    let table: serde_json::Value = serde_json::from_str(params_json)
        .map_err(|e| SpecError::new_err(format!("dedup: invalid params JSON: {e}")))?;
    let options = source::SourceOptions {
        text,
        exclude: Vec::new(),
        on_error: source::OnError::Fail,
        max_doc_bytes,
    };
    let params = without_gil(py, || build::dedup_params(&table, build::DedupMode::Near))?;
    let out = long(py, |progress| {
        build::dedup_files(&paths, &options, &params, &work_dir, workers, progress)
    })?;
    let removed: Vec<(u32, u64)> = out
        .result
        .removals
        .iter()
        .map(|r| (r.removed.file, r.removed.row))
        .collect();
    let d = PyDict::new(py);
    d.set_item("docs", out.docs)?;
    d.set_item("exact", out.result.stats.exact)?;
    d.set_item("near", out.result.stats.near)?;
    d.set_item("removed", removed)?;
    d.set_item("spilled_runs", out.result.stats.spilled_runs)?;
    d.set_item("fingerprint_seconds", out.fingerprint_seconds)?;
    d.set_item("find_seconds", out.find_seconds)?;
    Ok(d.into_any().unbind())
}
