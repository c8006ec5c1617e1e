//! Tokenizer bindings: `Tokenizer` and `read_tokenizer_json`. The tokenizer module owns how a
//! tokenizer file is read and which ids are special; Python asks it, never re-derives them.

use super::{interruptible, without_gil, SIGNAL_POLL};
use crate::build::Progress;
use crate::tokenize;
use numpy::{IntoPyArray, PyArray1};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::path::PathBuf;

/// Above this many texts an `encode_batch` answers Ctrl-C (when the batch ends: encoding
/// has no cancel point); below it a thread and a signal poll are not worth it.
const LONG_BATCH: usize = 4096;

/// A Hugging Face `tokenizer.json`, encoded by the Rust core.
#[pyclass(module = "tinyllama._core", name = "Tokenizer", frozen)]
pub struct PyTokenizer {
    inner: tokenize::Tokenizer,
}

#[pymethods]
impl PyTokenizer {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = without_gil(py, || tokenize::Tokenizer::from_file(&path))?;
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

    /// (bos, eos, unk) ids, each None when the tokenizer has none: the ids a build writes
    /// around documents, an export declares and generation starts with.
    fn special_ids(&self) -> (Option<u32>, Option<u32>, Option<u32>) {
        (
            self.inner.bos_id(),
            self.inner.eos_id(),
            self.inner.unk_id(),
        )
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
        let ids = without_gil(py, || self.inner.encode(&text, add_special_tokens))?;
        Ok(ids.into_pyarray(py))
    }

    #[pyo3(signature = (texts, add_special_tokens = false))]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        add_special_tokens: bool,
    ) -> PyResult<Vec<Bound<'py, PyArray1<u32>>>> {
        let work = || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            self.inner.encode_batch(&refs, add_special_tokens)
        };
        let batch = if texts.len() >= LONG_BATCH {
            interruptible(py, &Progress::default(), SIGNAL_POLL, None, work)?
        } else {
            without_gil(py, work)?
        };
        Ok(batch.into_iter().map(|ids| ids.into_pyarray(py)).collect())
    }

    #[pyo3(signature = (ids, skip_special_tokens = true))]
    fn decode(&self, py: Python<'_>, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        without_gil(py, || self.inner.decode(&ids, skip_special_tokens))
    }
}

/// The tokenizer.json bytes of a tokenizer file, decompressed when it is zstd (by its magic
/// number, whatever its name): what a build copies into a mix and an export writes.
#[pyfunction]
pub fn read_tokenizer_json(py: Python<'_>, path: PathBuf) -> PyResult<Py<PyBytes>> {
    let bytes = without_gil(py, || tokenize::read_tokenizer_json(&path))?;
    Ok(PyBytes::new(py, &bytes).unbind())
}
