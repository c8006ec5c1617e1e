//! `tinyllama._core`: the crate's module list and the Python module. All logic lives in the
//! plain Rust modules below, each with its own `cargo test`s; the bindings live in [`py`],
//! split by concept, and only convert (see `py/mod.rs` for the rules every binding follows:
//! long work without the GIL and answering Ctrl-C, typed exceptions, no panic across FFI).

pub mod build;
pub mod dedup;
pub mod error;
pub mod filter;
pub mod mix;
pub mod parquet_table;
pub mod shard;
pub mod source;
pub mod storage;
pub mod tokenize;

mod py;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    py::add_exceptions(m)?;
    m.add_class::<py::tokenizer::PyTokenizer>()?;
    m.add_function(wrap_pyfunction!(py::tokenizer::read_tokenizer_json, m)?)?;
    m.add_class::<py::mix::PyMixSampler>()?;
    m.add_class::<py::mix::PyLoader>()?;
    m.add_class::<py::mix::PySlot>()?;
    m.add_class::<py::mix::PyShardCache>()?;
    m.add_function(wrap_pyfunction!(py::mix::verify_shard, m)?)?;
    m.add_function(wrap_pyfunction!(py::mix::verify_mix, m)?)?;
    m.add_class::<py::build::PyBuildPlan>()?;
    m.add_function(wrap_pyfunction!(py::build::build_mix, m)?)?;
    m.add_function(wrap_pyfunction!(py::build::dedup_files, m)?)?;
    m.add_function(wrap_pyfunction!(py::filter::judge_documents, m)?)?;
    m.add_function(wrap_pyfunction!(py::filter::filter_settings, m)?)?;
    m.add_function(wrap_pyfunction!(py::filter::load_word_rules, m)?)?;
    m.add_function(wrap_pyfunction!(py::filter::detect_language, m)?)?;
    m.add_class::<py::storage::PyBucket>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
