//! A test hook, compiled in always: `TINYLLAMA_ABORT_AFTER=<point>:<n>` makes the build abort
//! the process (`std::process::abort`: no unwinding, no cleanup, as a SIGKILL would leave it)
//! right after the `n`-th commit of `point` in this process, so tests can cut a build at an
//! exact stage boundary and check that a rerun resumes to the same bytes.
//!
//! Points, each fired after the output is committed (renamed into place):
//! `fingerprint` (a file's fingerprint store), `dedup` (a corpus's dedup decision), `part` (a
//! file's staged part), `shard` (a packed shard in staging), `manifest` (a corpus's manifest in
//! the output dir, during `finish`). Resumed (already committed) outputs do not count.
//! Unset, or set to anything unparsable, the hook does nothing.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub const ENV: &str = "TINYLLAMA_ABORT_AFTER";

fn target() -> &'static Option<(String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        let (point, n) = v.split_once(':')?;
        Some((point.to_string(), n.trim().parse().ok()?))
    })
}

/// Count one commit of `point`; abort the process when it is the configured one.
pub fn committed(point: &str) {
    let Some((want, n)) = target() else { return };
    if want != point {
        return;
    }
    static COUNTS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    let mut counts = COUNTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let count = counts.entry(point.to_string()).or_insert(0);
    *count += 1;
    if *count == *n {
        eprintln!("{ENV}: aborting after {point} #{n}");
        std::process::abort();
    }
}
