//! Progress counters shared by the build's worker threads and whoever displays them.
//! Plain atomics: the build never waits on the display, and the display (Python, holding the
//! GIL for a moment every few hundred ms) never waits on the build.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default)]
pub struct Progress {
    stage: Mutex<String>,
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub docs: AtomicU64,
    pub tokens: AtomicU64,
    pub bytes: AtomicU64,
    cancel: AtomicBool,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub stage: String,
    pub files_total: u64,
    pub files_done: u64,
    pub docs: u64,
    pub tokens: u64,
    pub bytes: u64,
}

impl Progress {
    pub fn start_stage(&self, name: &str, files_total: u64) {
        *self.stage.lock().expect("progress lock") = name.to_string();
        self.files_total.store(files_total, Relaxed);
        self.files_done.store(0, Relaxed);
    }
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            stage: self.stage.lock().expect("progress lock").clone(),
            files_total: self.files_total.load(Relaxed),
            files_done: self.files_done.load(Relaxed),
            docs: self.docs.load(Relaxed),
            tokens: self.tokens.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
        }
    }
    pub fn cancel(&self) {
        self.cancel.store(true, Relaxed);
    }
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Relaxed)
    }
}
