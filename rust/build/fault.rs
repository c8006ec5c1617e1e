//! A test hook, compiled in always: `TINYLLAMA_ABORT_AFTER=<point>:<n>` makes the build abort
//! the process (`std::process::abort`: no unwinding, no cleanup, as a SIGKILL would leave it)
//! right after the `n`-th commit of `point` in this process, so tests can cut a build at an
//! exact stage boundary and check that a rerun resumes to the same bytes.
//! `TINYLLAMA_SIGNAL_AFTER=<point>:<n>:<SIGNAL>` (SIGINT, SIGTERM, SIGUSR1) instead raises that
//! signal in the process at that instant (Ctrl-C at a chosen file, not after a guessed delay).
//! The Python side (`tinyllama/fault.py`) reads the same variables and lists every point of
//! build, train, export and import in one place.
//!
//! Points, each fired after the output is committed (renamed into place):
//! `fingerprint` (a file's fingerprint store), `dedup` (a corpus's dedup decision), `part` (a
//! file's staged part), `shard` (a packed shard in staging), `manifest` (a corpus's manifest in
//! the output dir, during `finish`), `lock` (every file of the mix written but `mix.json`),
//! `mix-json` (`mix.json` written, `.staging` not yet removed). Resumed (already committed)
//! outputs do not count. `fingerprint-scratch`: a file's fingerprints written to the scratch
//! store of `dedup_files` (dedup outside a build: nothing is committed).
//! Unset, or set to anything unparsable, the hook does nothing.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub const ENV: &str = "TINYLLAMA_ABORT_AFTER";
pub const SIGNAL_ENV: &str = "TINYLLAMA_SIGNAL_AFTER";

/// `POINT:N` -> (point, n).
fn parse(v: &str) -> Option<(String, u64)> {
    let (point, n) = v.split_once(':')?;
    Some((point.to_string(), n.trim().parse().ok()?))
}

/// `POINT:N:SIGNAL` -> (point, n, signal number).
fn parse_signal(v: &str) -> Option<(String, u64, i32)> {
    let (at, name) = v.rsplit_once(':')?;
    let (point, n) = parse(at)?;
    let sig = match name.trim() {
        "SIGINT" | "INT" => libc::SIGINT,
        "SIGTERM" | "TERM" => libc::SIGTERM,
        "SIGUSR1" | "USR1" => libc::SIGUSR1,
        _ => return None,
    };
    Some((point, n, sig))
}

fn abort_target() -> &'static Option<(String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET.get_or_init(|| parse(&std::env::var(ENV).ok()?))
}

fn signal_target() -> &'static Option<(String, u64, i32)> {
    static TARGET: OnceLock<Option<(String, u64, i32)>> = OnceLock::new();
    TARGET.get_or_init(|| parse_signal(&std::env::var(SIGNAL_ENV).ok()?))
}

/// Count one commit of `point`; abort the process (or raise the signal) when it is the
/// configured one.
pub fn committed(point: &str) {
    let abort = abort_target().as_ref().filter(|(p, _)| p == point);
    let signal = signal_target().as_ref().filter(|(p, _, _)| p == point);
    if abort.is_none() && signal.is_none() {
        return;
    }
    static COUNTS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    let mut counts = COUNTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let count = counts.entry(point.to_string()).or_insert(0);
    *count += 1;
    if let Some((_, n, sig)) = signal {
        if *count == *n {
            eprintln!("{SIGNAL_ENV}: signal {sig} after {point} #{n}");
            // SAFETY: raise(3) has no preconditions; the handler is whatever the process installed.
            unsafe {
                libc::raise(*sig);
            }
        }
    }
    if let Some((_, n)) = abort {
        if *count == *n {
            eprintln!("{ENV}: aborting after {point} #{n}");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_points_and_signals() {
        assert_eq!(parse("lock:1"), Some(("lock".into(), 1)));
        assert_eq!(parse("mix-json: 2"), Some(("mix-json".into(), 2)));
        assert_eq!(parse("lock"), None);
        assert_eq!(parse("lock:x"), None);
        assert_eq!(
            parse_signal("fingerprint-scratch:3:SIGINT"),
            Some(("fingerprint-scratch".into(), 3, libc::SIGINT))
        );
        assert_eq!(
            parse_signal("part:1:TERM"),
            Some(("part".into(), 1, libc::SIGTERM))
        );
        assert_eq!(parse_signal("part:1:SIGKILL"), None);
        assert_eq!(parse_signal("part:1"), None);
    }
}
