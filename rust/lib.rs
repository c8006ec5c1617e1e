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
use numpy::{IntoPyArray, PyArray1};
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
        Error::Shard { .. } => ShardError::new_err(msg),
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
/// `interval` seconds with a dict of counters; Ctrl-C cancels the build cleanly (committed
/// parts stay, so a rerun resumes).
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
            while !worker.is_finished() {
                std::thread::sleep(tick);
                Python::with_gil(|py| {
                    if let Err(e) = py.check_signals() {
                        counters.cancel();
                        interrupt.get_or_insert(e);
                    }
                    if let Some(cb) = &progress {
                        let snap = counters.snapshot();
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
                        }
                    }
                });
            }
            worker.join().unwrap_or_else(|p| Err(p))
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
    d.set_item("files_resumed", summary.files_resumed)?;
    d.set_item("files_processed", summary.files_processed)?;
    d.set_item("docs_kept", summary.docs_kept)?;
    d.set_item("tokens", summary.tokens)?;
    Ok(d.into_any().unbind())
}

/// Check a shard's structure and checksum; raises `ShardError` naming it when corrupt.
#[pyfunction]
fn verify_shard(py: Python<'_>, path: PathBuf) -> PyResult<()> {
    release_gil(py, || shard::Shard::open(&path)?.verify())
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
    m.add_function(wrap_pyfunction!(build_mix, m)?)?;
    m.add_function(wrap_pyfunction!(verify_shard, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
