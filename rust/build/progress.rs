//! Progress counters shared by the build's worker threads and whoever displays them.
//! Plain atomics: the build never waits on the display, and the display (Python, holding the
//! GIL for a moment every few hundred ms) never waits on the build.
//!
//! It is also the work's cancellation token: the bindings' interruptible helper sets it on
//! Ctrl-C, and every stage (fingerprint, dedup of loose files, tokenize, pack) looks at it at
//! file / batch granularity and stops with `Error::Interrupted`, committing nothing partial.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default)]
pub struct Progress {
    stage: Mutex<String>,
    /// The last snapshot of every stage that has ended, not yet taken by the display (a fast
    /// stage can start and end between two polls; its final counts must still be shown).
    finished: Mutex<Vec<Snapshot>>,
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
        let mut stage = self.stage.lock().expect("progress lock");
        if !stage.is_empty() {
            let last = self.snapshot_of(&stage);
            self.finished.lock().expect("progress lock").push(last);
        }
        *stage = name.to_string();
        self.files_total.store(files_total, Relaxed);
        self.files_done.store(0, Relaxed);
    }
    fn snapshot_of(&self, stage: &str) -> Snapshot {
        Snapshot {
            stage: stage.to_string(),
            files_total: self.files_total.load(Relaxed),
            files_done: self.files_done.load(Relaxed),
            docs: self.docs.load(Relaxed),
            tokens: self.tokens.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
        }
    }
    pub fn snapshot(&self) -> Snapshot {
        let stage = self.stage.lock().expect("progress lock");
        self.snapshot_of(&stage)
    }
    /// The final snapshots of the stages that ended since the last call, in order.
    pub fn take_finished(&self) -> Vec<Snapshot> {
        std::mem::take(&mut *self.finished.lock().expect("progress lock"))
    }
    pub fn cancel(&self) {
        self.cancel.store(true, Relaxed);
    }
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Relaxed)
    }
}
