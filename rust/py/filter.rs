//! Bindings of the document filters (`filter/`): judge texts with a chain built from the
//! spec's settings, in parallel, without the GIL. For tests (datatrove parity) and
//! benchmarks; `mix build` runs the same chain inside its stages.

use super::{long, SpecError};
use crate::filter::{self, FilterChain};
use pyo3::prelude::*;
use rayon::prelude::*;

/// Judge `texts` with the chain `filters` (`[(name, settings JSON)]`, in the order given) on
/// `workers` threads (0 = all cores). One entry per text: `None` (kept) or `(filter, reason)`.
/// `filter_settings` gives each filter's resolved settings, as the lock records them.
#[pyfunction]
#[pyo3(signature = (filters, texts, workers = 0))]
pub fn judge_documents(
    py: Python<'_>,
    filters: Vec<(String, String)>,
    texts: Vec<String>,
    workers: usize,
) -> PyResult<Vec<Option<(String, String)>>> {
    let chain = chain(&filters)?;
    long(py, |progress| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .build()
            .map_err(|e| crate::error::Error::Usage(format!("workers: {e}")))?;
        let out = pool.install(|| {
            texts
                .par_iter()
                .map(|t| {
                    if progress.cancelled() {
                        return Err(crate::error::Error::Interrupted);
                    }
                    Ok(chain
                        .judge(t)
                        .map(|(i, reason)| (chain.filters()[i].name().to_string(), reason)))
                })
                .collect::<crate::error::Result<Vec<_>>>()
        })?;
        Ok(out)
    })
}

/// The resolved settings (JSON) of each filter of `filters`, as the lock records them.
#[pyfunction]
pub fn filter_settings(filters: Vec<(String, String)>) -> PyResult<Vec<String>> {
    let chain = chain(&filters)?;
    Ok(chain
        .filters()
        .iter()
        .map(|f| f.settings().to_string())
        .collect())
}

fn chain(filters: &[(String, String)]) -> PyResult<FilterChain> {
    let mut built = Vec::with_capacity(filters.len());
    for (name, settings) in filters {
        let value: serde_json::Value = serde_json::from_str(settings)
            .map_err(|e| SpecError::new_err(format!("filters.{name}: invalid JSON: {e}")))?;
        built.push(filter::filter(name, &value)?);
    }
    Ok(FilterChain::new(built))
}

/// The language of each of `texts` as `(ISO 639-1 code, confidence 0..1)`, as the `language`
/// filter sees it (`("und", 0.0)` for a text without letters); in parallel, without the GIL.
#[pyfunction]
pub fn detect_language(py: Python<'_>, texts: Vec<String>) -> PyResult<Vec<(String, f64)>> {
    long(py, |progress| {
        texts
            .par_iter()
            .map(|t| {
                if progress.cancelled() {
                    return Err(crate::error::Error::Interrupted);
                }
                let (code, score) = filter::language::detect(t);
                Ok((code.to_string(), score))
            })
            .collect()
    })
}

/// Load the English word rules the heuristic filters split with (`gopher_*`, `c4`,
/// `fineweb`) from `dir` (as `tinyllama/data/word_rules.py` writes them from the installed
/// spaCy and datatrove); once per process. Returns their digest.
#[pyfunction]
pub fn load_word_rules(py: Python<'_>, dir: std::path::PathBuf) -> PyResult<String> {
    super::without_gil(py, || crate::filter::heuristics::words::load(&dir))
}
