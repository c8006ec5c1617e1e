//! The Python face of the core: the exception types, `Error -> PyErr`, and the helpers every
//! binding runs its work through. The bindings themselves are split by concept:
//! [`tokenizer`] (Tokenizer, read_tokenizer_json), [`build`] (build_mix, BuildPlan,
//! dedup_files) and [`mix`] (MixSampler, Loader, Slot, verify_*). They only convert: every
//! decision is made in the plain Rust modules, which have their own `cargo test`s.
//!
//! Two rules hold for every binding:
//! * work that can take long runs through [`interruptible`]: without the GIL (Python threads
//!   such as progress bars and the trainer keep running), answering Ctrl-C (the work sees a
//!   cancel flag and stops with `Error::Interrupted`; the caller gets `KeyboardInterrupt`);
//!   short work runs through [`without_gil`];
//! * nothing panics across the FFI boundary: a panic in the work is caught on this side and
//!   raised as `TinyllamaError` with its message; every `Error` becomes a typed exception
//!   (`impl From<Error> for PyErr`, so bindings just use `?`).

pub mod build;
pub mod filter;
pub mod mix;
pub mod storage;
pub mod tokenizer;

use crate::build::Progress;
use crate::error::Error;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::prelude::*;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

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
create_exception!(
    _core,
    UsageError,
    TinyllamaError,
    "An API called the wrong way: a build stage before `prepare`, a corpus or file index out \
     of range, a step past the schedule, a rank outside the world."
);

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let msg = err.to_string();
        match err {
            Error::Io { .. } | Error::Remote { .. } => StorageError::new_err(msg),
            Error::Input { .. } => InputError::new_err(msg),
            Error::Spec(_) => SpecError::new_err(msg),
            Error::Usage(_) => UsageError::new_err(msg),
            Error::Tokenizer { .. } => TokenizerError::new_err(msg),
            Error::Shard { .. } | Error::Integrity { .. } => ShardError::new_err(msg),
            Error::Interrupted => PyKeyboardInterrupt::new_err(msg),
        }
    }
}

/// The exception types, for the module.
pub fn add_exceptions(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TinyllamaError", py.get_type::<TinyllamaError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("SpecError", py.get_type::<SpecError>())?;
    m.add("TokenizerError", py.get_type::<TokenizerError>())?;
    m.add("ShardError", py.get_type::<ShardError>())?;
    m.add("StorageError", py.get_type::<StorageError>())?;
    m.add("UsageError", py.get_type::<UsageError>())?;
    Ok(())
}

/// A caught panic's message (`panic!` carries a `String` or a `&str`).
fn panic_message(panic: Box<dyn std::any::Any + Send>) -> PyErr {
    let what = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    TinyllamaError::new_err(format!("internal error (please report): {what}"))
}

/// Short work (a tokenizer call, opening a mix): without the GIL, panics caught. Not worth a
/// thread and a signal poll; anything that reads a corpus or a whole shard uses
/// [`interruptible`].
pub fn without_gil<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> crate::error::Result<T> + Send,
    T: Send,
{
    py.allow_threads(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .map_err(panic_message)?
        .map_err(PyErr::from)
}

/// How often the waiting thread looks at Python's signals (Ctrl-C is answered within this).
pub const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// What [`interruptible`] runs with the GIL every `interval` (a progress display).
pub type OnTick<'a> = dyn FnMut(Python<'_>) -> PyResult<()> + Send + 'a;

/// The one helper for long work. `work` runs on a scoped thread without the GIL, observing
/// `progress`'s cancel flag (at file / batch granularity: see `build::Progress`). The calling
/// thread waits for it, taking the GIL for a moment every [`SIGNAL_POLL`] to run
/// `py.check_signals()`: on Ctrl-C (or any exception a signal handler raises) it sets the
/// cancel flag, waits for the work to stop, and raises that exception, whatever the work
/// returned. `on_tick`, if given, runs with the GIL about every `interval` and once after the
/// work succeeded (a progress display); an exception it raises cancels the work the same way.
/// A panic in the work is raised as `TinyllamaError` with its message.
pub fn interruptible<T, F>(
    py: Python<'_>,
    progress: &Progress,
    interval: Duration,
    mut on_tick: Option<&mut OnTick<'_>>,
    work: F,
) -> PyResult<T>
where
    F: FnOnce() -> crate::error::Result<T> + Send,
    T: Send,
{
    let mut raised: Option<PyErr> = None;
    let out = py.allow_threads(|| {
        std::thread::scope(|scope| {
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let worker = scope.spawn(move || {
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
                drop(done_tx); // wakes the waiting thread at once, panic or not
                out
            });
            let poll = SIGNAL_POLL.min(interval.max(Duration::from_millis(1)));
            let mut last_tick = std::time::Instant::now();
            let cancel = |e: PyErr, raised: &mut Option<PyErr>| {
                progress.cancel();
                raised.get_or_insert(e);
            };
            // Woken at once when the work ends (its sender drops), else every `poll`.
            while let Err(RecvTimeoutError::Timeout) = done_rx.recv_timeout(poll) {
                Python::with_gil(|py| {
                    if let Err(e) = py.check_signals() {
                        cancel(e, &mut raised);
                    }
                    if last_tick.elapsed() >= interval && raised.is_none() {
                        last_tick = std::time::Instant::now();
                        if let Some(Err(e)) = on_tick.as_mut().map(|f| f(py)) {
                            cancel(e, &mut raised);
                        }
                    }
                });
            }
            let out = worker.join().unwrap_or_else(Err);
            if raised.is_none() && matches!(out, Ok(Ok(_))) {
                Python::with_gil(|py| {
                    if let Some(Err(e)) = on_tick.as_mut().map(|f| f(py)) {
                        raised = Some(e);
                    }
                });
            }
            out
        })
    });
    if let Some(e) = raised {
        return Err(e);
    }
    out.map_err(panic_message)?.map_err(PyErr::from)
}

/// [`interruptible`] with no progress display: the usual form for a long binding.
pub fn long<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    F: FnOnce(&Progress) -> crate::error::Result<T> + Send,
    T: Send,
{
    let progress = Progress::default();
    interruptible(py, &progress, SIGNAL_POLL, None, || work(&progress))
}
