//! Mix bindings: `MixSampler` (step -> rank's slice), `Loader` and its `Slot` (the ring
//! buffer, zero-copy), `ShardCache` (a bucket mix's shards, fetched on first use),
//! `verify_mix` and `verify_shard`. The gather itself is `mix::gather`;
//! these only convert. A step past the schedule or a rank outside the world is `UsageError`.

use super::{long, without_gil, TinyllamaError};
use crate::{build, error, mix, shard};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;

/// Check a shard's structure and checksum (against `checksum`, its manifest's hex, when
/// given) and, given `vocab_size`, that every token id is below it; raises `ShardError`
/// naming the shard (and the document, for an id) when it is not so.
#[pyfunction]
#[pyo3(signature = (path, vocab_size = None, checksum = None))]
pub fn verify_shard(
    py: Python<'_>,
    path: PathBuf,
    vocab_size: Option<u64>,
    checksum: Option<String>,
) -> PyResult<()> {
    long(py, |_| {
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
pub fn verify_mix(
    py: Python<'_>,
    mix_dir: PathBuf,
    deep: bool,
    workers: Option<usize>,
) -> PyResult<()> {
    if !deep {
        return without_gil(py, || build::manifest::open_lock(&mix_dir).map(|_| ()));
    }
    long(py, |_| {
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

/// The shard cache of a mix in a bucket (`mix::shard_cache`): `mix_dir` holds its pinned
/// files (fetched by `cached_mix`), shards are fetched into it on first use, verified, and
/// evicted least recently used past `cache_bytes` (shards of every mix in `mix_dir`'s parent).
#[pyclass(module = "tinyllama._core", name = "ShardCache", frozen)]
pub struct PyShardCache {
    inner: Arc<mix::ShardCache>,
}

#[pymethods]
impl PyShardCache {
    #[new]
    #[pyo3(signature = (mix_dir, url, cache_bytes = None))]
    fn new(
        py: Python<'_>,
        mix_dir: PathBuf,
        url: String,
        cache_bytes: Option<u64>,
    ) -> PyResult<Self> {
        let inner = without_gil(py, || mix::ShardCache::open(&mix_dir, &url, cache_bytes))?;
        Ok(PyShardCache {
            inner: Arc::new(inner),
        })
    }

    /// The local path of shard `name` of `corpus` (training or holdout), fetched and verified
    /// first if the cache does not hold it.
    fn fetch(&self, py: Python<'_>, corpus: String, name: String) -> PyResult<PathBuf> {
        long(py, |_| {
            let entry = self.inner.entry(&corpus, &name)?;
            self.inner.path(&corpus, &entry)
        })
    }

    /// Shards this cache object downloaded (a shard another rank fetched is not counted).
    #[getter]
    fn downloads(&self) -> u64 {
        self.inner.downloads()
    }
}

fn cache_of(cache: Option<&Bound<'_, PyShardCache>>) -> Option<Arc<mix::ShardCache>> {
    cache.map(|c| Arc::clone(&c.get().inner))
}

/// The sampler of a built mix: step -> that rank's slice of the global batch.
#[pyclass(module = "tinyllama._core", name = "MixSampler", frozen)]
pub struct PyMixSampler {
    schedule: Arc<mix::Schedule>,
    source: Arc<mix::ShardSource>,
}

#[pymethods]
impl PyMixSampler {
    /// `branch`: a branch of a family mix; None: the trunk (a plain mix's whole schedule).
    /// `cache`: the mix is a bucket's (its shards read through the cache).
    #[new]
    #[pyo3(signature = (mix_dir, branch = None, cache = None))]
    fn new(
        py: Python<'_>,
        mix_dir: PathBuf,
        branch: Option<String>,
        cache: Option<&Bound<'_, PyShardCache>>,
    ) -> PyResult<Self> {
        let cache = cache_of(cache);
        let (schedule, source) = without_gil(py, || {
            mix::open_mix_cached(&mix_dir, branch.as_deref(), cache.as_ref())
        })?;
        Ok(PyMixSampler { schedule, source })
    }

    fn num_steps(&self) -> u64 {
        self.schedule.num_steps()
    }
    fn seq_len(&self) -> u32 {
        self.schedule.seq_len()
    }
    fn batch_sequences(&self, step: u64) -> PyResult<u64> {
        Ok(self.schedule.batch_sequences(step)?)
    }
    fn tokens_before(&self, step: u64) -> PyResult<u64> {
        Ok(self.schedule.tokens_before(step)?)
    }
    fn stage_of(&self, step: u64) -> PyResult<usize> {
        Ok(self.schedule.stage_of(step)?)
    }
    fn weights_at(&self, step: u64) -> PyResult<Vec<f64>> {
        Ok(self.schedule.weights_at(step)?)
    }
    fn counts_at(&self, step: u64) -> PyResult<Vec<u64>> {
        Ok(self.schedule.counts_at(step)?)
    }
    fn cursors_at(&self, step: u64) -> PyResult<Vec<u64>> {
        Ok(self.schedule.cursors_at(step)?)
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
        let batch = without_gil(py, || self.schedule.rank_batch(step, rank, world))?;
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
        let width = self.schedule.seq_len() as usize + 1;
        // First touch of a shard verifies it (a full read): long enough to want Ctrl-C.
        let (tokens, samples) = long(py, |_| {
            mix::gather(&self.schedule, self.source.as_ref(), step, rank, world)
        })?;
        let array = numpy::ndarray::Array2::from_shape_vec((samples.len(), width), tokens)
            .map_err(|e| TinyllamaError::new_err(e.to_string()))?;
        let corpora = samples.iter().map(|s| s.corpus).collect();
        Ok((numpy::PyArray2::from_owned_array(py, array), corpora))
    }
}

/// The ring-buffer loader: Rust threads gather rank's batches ahead of the trainer.
#[pyclass(module = "tinyllama._core", name = "Loader", frozen)]
pub struct PyLoader {
    inner: mix::Loader,
    seq_len: usize,
}

#[pymethods]
impl PyLoader {
    #[new]
    #[pyo3(signature = (mix_dir, rank = 0, world = 1, start_step = 0, end_step = None, slots = 4, threads = 1, branch = None, cache = None))]
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
        branch: Option<String>,
        cache: Option<&Bound<'_, PyShardCache>>,
    ) -> PyResult<Self> {
        let cache = cache_of(cache);
        without_gil(py, || {
            let (schedule, source) =
                mix::open_mix_cached(&mix_dir, branch.as_deref(), cache.as_ref())?;
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
        let slot = without_gil(py, || self.inner.next_slot())?;
        Ok(slot.map(|s| PySlot {
            slot: s,
            width: self.seq_len + 1,
        }))
    }

    fn seek(&self, py: Python<'_>, step: u64) -> PyResult<()> {
        without_gil(py, || self.inner.seek(step))
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
pub struct PySlot {
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
        use numpy::PyArrayMethods;
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
