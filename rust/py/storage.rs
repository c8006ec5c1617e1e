//! Storage bindings: `Bucket`, the Python face of `storage::Bucket` (the one layer every bucket
//! reader and writer goes through). Every call runs without the GIL; failures are
//! `StorageError` naming the URL.

use super::without_gil;
use crate::storage;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::path::PathBuf;

/// A bucket, opened from the standard AWS environment: `Bucket("s3://bucket/prefix")`. Keys
/// are relative to the bucket (`prefix` is the key the URL named: `Bucket.prefix`).
#[pyclass(module = "tinyllama._core", name = "Bucket", frozen)]
pub struct PyBucket {
    inner: storage::Bucket,
    prefix: String,
}

type Listed = (String, u64, Option<String>);

fn listed(o: storage::Object) -> Listed {
    (o.key, o.size, o.etag)
}

#[pymethods]
impl PyBucket {
    #[new]
    fn new(py: Python<'_>, url: String) -> PyResult<Self> {
        let (inner, prefix) = without_gil(py, || storage::Bucket::open(&url))?;
        Ok(PyBucket { inner, prefix })
    }

    /// The key the URL named (no leading or trailing `/`).
    #[getter]
    fn prefix(&self) -> String {
        self.prefix.clone()
    }

    fn url(&self, key: &str) -> String {
        self.inner.url(key)
    }

    /// (key, size, etag) of every object under the key prefix, sorted by key.
    fn list(&self, py: Python<'_>, prefix: String) -> PyResult<Vec<Listed>> {
        let found = without_gil(py, || self.inner.list(&prefix))?;
        Ok(found.into_iter().map(listed).collect())
    }

    fn head(&self, py: Python<'_>, key: String) -> PyResult<Option<Listed>> {
        Ok(without_gil(py, || self.inner.head(&key))?.map(listed))
    }

    #[pyo3(signature = (key, etag = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: String,
        etag: Option<String>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = without_gil(py, || self.inner.get(&key, etag.as_deref()))?;
        Ok(PyBytes::new(py, &bytes))
    }

    fn put(&self, py: Python<'_>, key: String, data: Vec<u8>) -> PyResult<Listed> {
        Ok(listed(without_gil(py, || self.inner.put(&key, data))?))
    }

    fn put_if_absent(&self, py: Python<'_>, key: String, data: Vec<u8>) -> PyResult<bool> {
        without_gil(py, || self.inner.put_if_absent(&key, data))
    }

    fn put_if_match(
        &self,
        py: Python<'_>,
        key: String,
        data: Vec<u8>,
        etag: String,
    ) -> PyResult<bool> {
        without_gil(py, || self.inner.put_if_match(&key, data, &etag))
    }

    fn delete(&self, py: Python<'_>, key: String) -> PyResult<()> {
        without_gil(py, || self.inner.delete(&key))
    }

    fn upload(&self, py: Python<'_>, path: PathBuf, key: String) -> PyResult<Listed> {
        Ok(listed(without_gil(py, || self.inner.upload(&path, &key))?))
    }

    /// Downloads `key` to `path` (through `path.part`, renamed when complete); given the
    /// (size, etag) it was listed with, checks it is still that object, whole.
    #[pyo3(signature = (key, path, size = None, etag = None))]
    fn download(
        &self,
        py: Python<'_>,
        key: String,
        path: PathBuf,
        size: Option<u64>,
        etag: Option<String>,
    ) -> PyResult<u64> {
        let want = size.map(|size| storage::Object {
            key: key.clone(),
            size,
            etag,
        });
        without_gil(py, || self.inner.download(&key, &path, want.as_ref()))
    }
}
