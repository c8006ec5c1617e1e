//! `tinyllama._core`: the Python bindings, and only the bindings. All logic lives in the plain
//! Rust modules below, each with its own `cargo test`s.
//!
//! Two rules hold for every function here:
//! * every call that can take long runs through [`release_gil`], so Python threads (progress
//!   bars, the trainer) keep running;
//! * every `Error` becomes a typed Python exception (see [`to_py_err`]); nothing panics across
//!   the FFI boundary (a panic inside a worker is caught and reported as `TinyllamaError`).

pub mod build;
pub mod dedup;
pub mod error;
pub mod mix;
pub mod shard;
pub mod source;
pub mod tokenize;

use error::Error;
use numpy::{IntoPyArray, PyArray1, PyArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use std::path::PathBuf;

create_exception!(
    _core,
    TinyllamaError,
    PyException,
    "Base class of every tinyllama error."
);
create_exception!(
    _core,
    InputError,
    TinyllamaError,
    "A bad record in an input corpus file (names the file and line/row)."
);
create_exception!(
    _core,
    SpecError,
    TinyllamaError,
    "An invalid spec or config (names the key)."
);
create_exception!(
    _core,
    TokenizerError,
    TinyllamaError,
    "A missing or unusable tokenizer."
);
create_exception!(
    _core,
    ShardError,
    TinyllamaError,
    "A corrupt shard or manifest (names the shard)."
);
create_exception!(
    _core,
    StorageError,
    TinyllamaError,
    "An OS-level read/write failure (names the path)."
);

fn to_py_err(err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::Io { .. } => StorageError::new_err(msg),
        Error::Input { .. } => InputError::new_err(msg),
        Error::Spec(_) => SpecError::new_err(msg),
        Error::Tokenizer { .. } => TokenizerError::new_err(msg),
        Error::Shard { .. } | Error::Integrity { .. } => ShardError::new_err(msg),
        Error::Interrupted => pyo3::exceptions::PyKeyboardInterrupt::new_err(msg),
    }
}

/// The one place where Rust work runs without the GIL. Panics are caught and turned into a
/// `TinyllamaError` instead of unwinding into the interpreter.
fn release_gil<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> error::Result<T> + Send,
    T: Send,
{
    let out = py.allow_threads(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    match out {
        Ok(res) => res.map_err(to_py_err),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(TinyllamaError::new_err(format!(
                "internal error (please report): {what}"
            )))
        }
    }
}

/// A Hugging Face `tokenizer.json`, encoded by the Rust core.
#[pyclass(module = "tinyllama._core", name = "Tokenizer", frozen)]
struct PyTokenizer {
    inner: tokenize::Tokenizer,
}

#[pymethods]
impl PyTokenizer {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = release_gil(py, || tokenize::Tokenizer::from_file(&path))?;
        Ok(PyTokenizer { inner })
    }

    #[getter]
    fn sha256(&self) -> String {
        self.inner.sha256().to_string()
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    #[pyo3(signature = (text, add_special_tokens = false))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        text: String,
        add_special_tokens: bool,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let ids = release_gil(py, || self.inner.encode(&text, add_special_tokens))?;
        Ok(ids.into_pyarray(py))
    }

    #[pyo3(signature = (texts, add_special_tokens = false))]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        add_special_tokens: bool,
    ) -> PyResult<Vec<Bound<'py, PyArray1<u32>>>> {
        let batch = release_gil(py, || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            self.inner.encode_batch(&refs, add_special_tokens)
        })?;
        Ok(batch.into_iter().map(|ids| ids.into_pyarray(py)).collect())
    }

    #[pyo3(signature = (ids, skip_special_tokens = true))]
    fn decode(&self, py: Python<'_>, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        release_gil(py, || self.inner.decode(&ids, skip_special_tokens))
    }
}

/// Run `mix build` from a resolved JSON config. `progress`, if given, is called about every
/// `interval` seconds as `progress(stage, files_done, files_total, docs, tokens, bytes)`;
/// Ctrl-C cancels the build cleanly (committed parts stay, so a rerun resumes).
#[pyfunction]
#[pyo3(signature = (config_json, progress = None, interval = 0.25))]
fn build_mix(
    py: Python<'_>,
    config_json: &str,
    progress: Option<PyObject>,
    interval: f64,
) -> PyResult<PyObject> {
    let cfg: build::BuildConfig = serde_json::from_str(config_json)
        .map_err(|e| SpecError::new_err(format!("spec: invalid build config: {e}")))?;
    let counters = build::Progress::default();
    let mut interrupt: Option<PyErr> = None;
    let result = py.allow_threads(|| {
        std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    build::build(&cfg, &counters)
                }))
            });
            let tick = std::time::Duration::from_secs_f64(interval.max(0.01));
            // Every ended stage's final counts, then the current stage's (after the build
            // ends: the last stage's final counts).
            let report = |py: Python<'_>, interrupt: &mut Option<PyErr>| {
                let Some(cb) = &progress else { return };
                let mut snaps = counters.take_finished();
                snaps.push(counters.snapshot());
                for snap in snaps {
                    let args = (
                        snap.stage,
                        snap.files_done,
                        snap.files_total,
                        snap.docs,
                        snap.tokens,
                        snap.bytes,
                    );
                    if let Err(e) = cb.call1(py, args) {
                        counters.cancel();
                        interrupt.get_or_insert(e);
                        return;
                    }
                }
            };
            while !worker.is_finished() {
                std::thread::sleep(tick);
                Python::with_gil(|py| {
                    if let Err(e) = py.check_signals() {
                        counters.cancel();
                        interrupt.get_or_insert(e);
                    }
                    report(py, &mut interrupt);
                });
            }
            let out = worker.join().unwrap_or_else(Err);
            if interrupt.is_none() && matches!(out, Ok(Ok(_))) {
                Python::with_gil(|py| report(py, &mut interrupt));
            }
            out
        })
    });
    if let Some(e) = interrupt {
        return Err(e);
    }
    let summary = match result {
        Ok(r) => r.map_err(to_py_err)?,
        Err(_) => {
            return Err(TinyllamaError::new_err(
                "internal error in mix build (please report)",
            ))
        }
    };
    let d = pyo3::types::PyDict::new(py);
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
struct PyBuildPlan {
    plan: build::Plan,
    pool: rayon::ThreadPool,
}

impl PyBuildPlan {
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&build::Plan) -> error::Result<T> + Send,
    ) -> PyResult<T> {
        release_gil(py, || self.pool.install(|| f(&self.plan)))
    }
}

fn work_dict(py: Python<'_>, w: build::FileWork) -> PyResult<PyObject> {
    let d = pyo3::types::PyDict::new(py);
    d.set_item("resumed", w.resumed)?;
    d.set_item("bytes", w.bytes)?;
    d.set_item("docs", w.docs)?;
    d.set_item("docs_kept", w.docs_kept)?;
    d.set_item("tokens", w.tokens)?;
    Ok(d.into_any().unbind())
}

fn pairs_dict(py: Python<'_>, w: build::PairsWork) -> PyResult<PyObject> {
    let d = pyo3::types::PyDict::new(py);
    d.set_item("resumed", w.resumed)?;
    d.set_item("docs", w.docs)?;
    d.set_item("pairs", w.pairs)?;
    Ok(d.into_any().unbind())
}

#[pymethods]
impl PyBuildPlan {
    #[new]
    fn new(py: Python<'_>, config_json: &str) -> PyResult<Self> {
        let cfg: build::BuildConfig = serde_json::from_str(config_json)
            .map_err(|e| SpecError::new_err(format!("spec: invalid build config: {e}")))?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.workers.max(1))
            .build()
            .map_err(|e| SpecError::new_err(format!("spec: workers: {e}")))?;
        let plan = release_gil(py, || build::plan(&cfg))?;
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

    /// Ready the output dir (run once, by the driver). True when the mix is already complete.
    fn prepare(&self, py: Python<'_>) -> PyResult<bool> {
        self.run(py, |p| p.prepare())
    }

    /// `prepare`, also saying why: (up to date, why a complete mix of this identity is
    /// rebuilt — a file its lock names was missing or did not verify — or None).
    fn prepare_report(&self, py: Python<'_>) -> PyResult<(bool, Option<String>)> {
        let p = self.run(py, |p| p.prepare_report())?;
        Ok((p.up_to_date, p.rebuilt))
    }

    fn fingerprint(&self, py: Python<'_>, corpus: usize, file: usize) -> PyResult<PyObject> {
        let w = self.run(py, |p| {
            build::fingerprint_one(p, corpus, file, &build::Progress::default())
        })?;
        work_dict(py, w)
    }

    /// The band ranges `(start, end)` of `partitions` band partitions of corpus `corpus`
    /// (empty when it has no near-duplicate stage).
    fn band_ranges(&self, corpus: usize, partitions: usize) -> PyResult<Vec<(usize, usize)>> {
        let ranges = build::band_ranges(&self.plan, corpus, partitions).map_err(to_py_err)?;
        Ok(ranges.into_iter().map(|r| (r.start, r.end)).collect())
    }

    /// The exact-groups stage of corpus `corpus` (after all its fingerprints).
    fn dedup_exact(&self, py: Python<'_>, corpus: usize) -> PyResult<PyObject> {
        let w = self.run(py, |p| build::dedup_exact(p, corpus))?;
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
        let w = self.run(py, |p| build::dedup_bands(p, corpus, start..end))?;
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
        let w = self.run(py, |p| build::dedup_corpus(p, corpus, partitions))?;
        let d = pyo3::types::PyDict::new(py);
        d.set_item("resumed", w.resumed)?;
        d.set_item("exact_duplicates", w.exact)?;
        d.set_item("near_duplicates", w.near)?;
        Ok(d.into_any().unbind())
    }

    fn tokenize(&self, py: Python<'_>, corpus: usize, file: usize) -> PyResult<PyObject> {
        let w = self.run(py, |p| {
            build::tokenize_one(p, corpus, file, &build::Progress::default())
        })?;
        work_dict(py, w)
    }

    /// The shard layout of corpus `corpus` (after all its parts), one JSON object per shard:
    /// `{"name", "slices": [[part, start, end]...], "docs", "tokens"}`.
    fn pack_layout(&self, py: Python<'_>, corpus: usize) -> PyResult<Vec<String>> {
        let shards = self.run(py, |p| build::pack_layout(p, corpus))?;
        Ok(shards
            .iter()
            .map(|s| serde_json::to_string(s).expect("a shard plan serialises"))
            .collect())
    }

    /// Write one shard of the layout (a JSON object from `pack_layout`) into staging.
    fn pack_shard(&self, py: Python<'_>, corpus: usize, shard_json: &str) -> PyResult<PyObject> {
        let shard: build::ShardPlan = serde_json::from_str(shard_json)
            .map_err(|e| SpecError::new_err(format!("pack: invalid shard plan: {e}")))?;
        let w = self.run(py, |p| {
            build::pack_shard(p, corpus, &shard, &build::Progress::default())
        })?;
        let d = pyo3::types::PyDict::new(py);
        d.set_item("resumed", w.resumed)?;
        d.set_item("docs", w.docs)?;
        d.set_item("tokens", w.tokens)?;
        Ok(d.into_any().unbind())
    }

    /// Pack, write the schedule, the tokenizer and the lock; drop the staging.
    fn finish(&self, py: Python<'_>) -> PyResult<PyObject> {
        let s = self.run(py, |p| build::finish(p, &build::Progress::default()))?;
        let d = pyo3::types::PyDict::new(py);
        d.set_item("docs_kept", s.docs_kept)?;
        d.set_item("tokens", s.tokens)?;
        Ok(d.into_any().unbind())
    }
}

/// Dedup `paths` (in this order: the earliest duplicate is kept) outside a build, with the
/// spec's `[dedup]` table as JSON (defaults: SlimPajama's parameters) on `workers` threads.
/// Returns `{docs, exact, near, removed: [(file index, row)], fingerprint_seconds,
/// find_seconds, spilled_runs}`. Scratch files go under `work_dir` and are removed.
#[pyfunction]
#[pyo3(signature = (paths, text, params_json, work_dir, workers, max_doc_bytes = 64 << 20))]
fn dedup_files(
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
    let out = release_gil(py, || {
        let params = build::dedup_params(&table, build::DedupMode::Near)?;
        build::dedup_files(&paths, &options, &params, &work_dir, workers)
    })?;
    let removed: Vec<(u32, u64)> = out
        .result
        .removals
        .iter()
        .map(|r| (r.removed.file, r.removed.row))
        .collect();
    let d = pyo3::types::PyDict::new(py);
    d.set_item("docs", out.docs)?;
    d.set_item("exact", out.result.stats.exact)?;
    d.set_item("near", out.result.stats.near)?;
    d.set_item("removed", removed)?;
    d.set_item("spilled_runs", out.result.stats.spilled_runs)?;
    d.set_item("fingerprint_seconds", out.fingerprint_seconds)?;
    d.set_item("find_seconds", out.find_seconds)?;
    Ok(d.into_any().unbind())
}

/// Check a shard's structure and checksum (against `checksum`, its manifest's hex, when
/// given) and, given `vocab_size`, that every token id is below it; raises `ShardError`
/// naming the shard (and the document, for an id) when it is not so.
#[pyfunction]
#[pyo3(signature = (path, vocab_size = None, checksum = None))]
fn verify_shard(
    py: Python<'_>,
    path: PathBuf,
    vocab_size: Option<u64>,
    checksum: Option<String>,
) -> PyResult<()> {
    release_gil(py, || {
        let s = shard::Shard::open(&path)?;
        if let Some(want) = checksum.filter(|c| *c != s.checksum_hex()) {
            return Err(error::Error::integrity(
                &path,
                format!(
                    "checksum {} in its footer, its manifest says {want}: the shard was \
                     replaced after the build",
                    s.checksum_hex()
                ),
            ));
        }
        s.check(vocab_size)
    })
}

/// Check a built mix where it is opened: its lock's format and seal and the sha256 of every
/// file it pins (schedule, tokenizer, manifests, dedup reports). With `deep`, also every
/// shard the manifests name (footer against the manifest, checksum over every byte, token
/// ids against the vocabulary), on `workers` threads. Raises naming the first bad file.
#[pyfunction]
#[pyo3(signature = (mix_dir, deep = false, workers = None))]
fn verify_mix(
    py: Python<'_>,
    mix_dir: PathBuf,
    deep: bool,
    workers: Option<usize>,
) -> PyResult<()> {
    release_gil(py, || {
        if !deep {
            return build::manifest::open_lock(&mix_dir).map(|_| ());
        }
        let mut pool = rayon::ThreadPoolBuilder::new();
        if let Some(n) = workers {
            pool = pool.num_threads(n.max(1));
        }
        let pool = pool
            .build()
            .map_err(|e| error::Error::Spec(format!("workers: {e}")))?;
        pool.install(|| build::manifest::verify_mix(&mix_dir).map(|_| ()))
    })
}

/// The sampler of a built mix: step -> that rank's slice of the global batch.
#[pyclass(module = "tinyllama._core", name = "MixSampler", frozen)]
struct PyMixSampler {
    schedule: std::sync::Arc<mix::Schedule>,
    source: std::sync::Arc<mix::ShardSource>,
}

#[pymethods]
impl PyMixSampler {
    #[new]
    fn new(py: Python<'_>, mix_dir: PathBuf) -> PyResult<Self> {
        let (schedule, source) = release_gil(py, || mix::open_mix(&mix_dir))?;
        Ok(PyMixSampler { schedule, source })
    }

    fn num_steps(&self) -> u64 {
        self.schedule.num_steps()
    }
    fn seq_len(&self) -> u32 {
        self.schedule.seq_len()
    }
    fn batch_sequences(&self, step: u64) -> PyResult<u64> {
        self.schedule.batch_sequences(step).map_err(to_py_err)
    }
    fn tokens_before(&self, step: u64) -> PyResult<u64> {
        self.schedule.tokens_before(step).map_err(to_py_err)
    }
    fn stage_of(&self, step: u64) -> PyResult<usize> {
        self.schedule.stage_of(step).map_err(to_py_err)
    }
    fn weights_at(&self, step: u64) -> PyResult<Vec<f64>> {
        self.schedule.weights_at(step).map_err(to_py_err)
    }
    fn counts_at(&self, step: u64) -> PyResult<Vec<u64>> {
        self.schedule.counts_at(step).map_err(to_py_err)
    }
    fn cursors_at(&self, step: u64) -> PyResult<Vec<u64>> {
        self.schedule.cursors_at(step).map_err(to_py_err)
    }
    fn epochs(&self) -> Vec<u64> {
        self.schedule.epochs()
    }
    fn stage_steps(&self) -> Vec<(u64, u64)> {
        (0..self.schedule.stages().len())
            .filter_map(|i| self.schedule.stage_steps(i).map(|r| (r.start, r.end)))
            .collect()
    }

    /// (corpus index, epoch, window) of each sequence of rank's slice at `step`.
    #[pyo3(signature = (step, rank = 0, world = 1))]
    fn samples(
        &self,
        py: Python<'_>,
        step: u64,
        rank: u32,
        world: u32,
    ) -> PyResult<Vec<(u32, u64, u64)>> {
        let batch = release_gil(py, || self.schedule.rank_batch(step, rank, world))?;
        Ok(batch
            .into_iter()
            .map(|s| (s.corpus, s.epoch, s.window))
            .collect())
    }

    /// Rank's slice at `step`: (tokens uint32 [n, seq_len + 1], corpus index of each row).
    #[pyo3(signature = (step, rank = 0, world = 1))]
    fn batch<'py>(
        &self,
        py: Python<'py>,
        step: u64,
        rank: u32,
        world: u32,
    ) -> PyResult<(Bound<'py, numpy::PyArray2<u32>>, Vec<u32>)> {
        use mix::WindowSource;
        let width = self.schedule.seq_len() as usize + 1;
        let (tokens, corpora) = release_gil(py, || {
            let samples = self.schedule.rank_batch(step, rank, world)?;
            let mut tokens = vec![0u32; samples.len() * width];
            for (row, s) in tokens.chunks_mut(width).zip(&samples) {
                self.source.read_window(s.corpus, s.window, row)?;
            }
            Ok((tokens, samples.iter().map(|s| s.corpus).collect::<Vec<_>>()))
        })?;
        let rows = corpora.len();
        let array = numpy::ndarray::Array2::from_shape_vec((rows, width), tokens)
            .map_err(|e| TinyllamaError::new_err(e.to_string()))?;
        Ok((numpy::PyArray2::from_owned_array(py, array), corpora))
    }
}

/// The ring-buffer loader: Rust threads gather rank's batches ahead of the trainer.
#[pyclass(module = "tinyllama._core", name = "Loader", frozen)]
struct PyLoader {
    inner: mix::Loader,
    seq_len: usize,
}

#[pymethods]
impl PyLoader {
    #[new]
    #[pyo3(signature = (mix_dir, rank = 0, world = 1, start_step = 0, end_step = None, slots = 4, threads = 1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        mix_dir: PathBuf,
        rank: u32,
        world: u32,
        start_step: u64,
        end_step: Option<u64>,
        slots: usize,
        threads: usize,
    ) -> PyResult<Self> {
        release_gil(py, || {
            let (schedule, source) = mix::open_mix(&mix_dir)?;
            let seq_len = schedule.seq_len() as usize;
            let config = mix::LoaderConfig {
                rank,
                world,
                slots,
                threads,
                start_step,
                end_step,
            };
            Ok(PyLoader {
                inner: mix::Loader::new(schedule, source, config)?,
                seq_len,
            })
        })
    }

    /// The next step's slot (blocks until filled), or None past the last step.
    fn next(&self, py: Python<'_>) -> PyResult<Option<PySlot>> {
        let slot = release_gil(py, || self.inner.next_slot())?;
        Ok(slot.map(|s| PySlot {
            slot: s,
            width: self.seq_len + 1,
        }))
    }

    fn seek(&self, py: Python<'_>, step: u64) -> PyResult<()> {
        release_gil(py, || self.inner.seek(step))
    }

    #[getter]
    fn position(&self) -> u64 {
        self.inner.position()
    }

    /// (address, bytes) of each ring buffer, for page-locking them with cudaHostRegister.
    fn buffer_regions(&self) -> Vec<(usize, usize)> {
        self.inner.buffer_regions().to_vec()
    }
}

/// One filled ring slot. Its buffer returns to the ring only when this object is freed, and
/// every array viewing it holds a reference: a buffer Python still reads is never refilled.
#[pyclass(module = "tinyllama._core", name = "Slot", frozen)]
struct PySlot {
    slot: mix::Slot,
    width: usize,
}

#[pymethods]
impl PySlot {
    #[getter]
    fn step(&self) -> u64 {
        self.slot.step()
    }

    /// Corpus index of each row.
    #[getter]
    fn corpora(&self) -> Vec<u32> {
        self.slot.samples().iter().map(|s| s.corpus).collect()
    }

    /// The tokens as a read-only numpy uint32 array [rows, seq_len + 1] viewing the ring
    /// buffer itself (no copy).
    #[getter]
    fn tokens<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, numpy::PyArray2<u32>>> {
        let this = slf.get();
        let data = this.slot.tokens();
        let rows = data.len() / this.width;
        let view = numpy::ndarray::ArrayView2::from_shape((rows, this.width), data)
            .map_err(|e| TinyllamaError::new_err(e.to_string()))?;
        // SAFETY: the array's base is this Slot object, which owns the buffer and is frozen;
        // the buffer neither moves nor is written while the Slot is alive.
        let array = unsafe { numpy::PyArray2::borrow_from_array(&view, slf.clone().into_any()) };
        array.readwrite().make_nonwriteable();
        Ok(array)
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TinyllamaError", py.get_type::<TinyllamaError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("SpecError", py.get_type::<SpecError>())?;
    m.add("TokenizerError", py.get_type::<TokenizerError>())?;
    m.add("ShardError", py.get_type::<ShardError>())?;
    m.add("StorageError", py.get_type::<StorageError>())?;
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyMixSampler>()?;
    m.add_class::<PyLoader>()?;
    m.add_class::<PySlot>()?;
    m.add_class::<PyBuildPlan>()?;
    m.add_function(wrap_pyfunction!(build_mix, m)?)?;
    m.add_function(wrap_pyfunction!(dedup_files, m)?)?;
    m.add_function(wrap_pyfunction!(verify_shard, m)?)?;
    m.add_function(wrap_pyfunction!(verify_mix, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
