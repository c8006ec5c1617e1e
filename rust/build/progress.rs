//! Progress counters shared by the build's worker threads and whoever displays them.
//! Plain atomics: the build never waits on the display, and the display (Python, holding the
//! GIL for a moment every few hundred ms) never waits on the build.
//!
//! Counts are per stage: [`Progress::start_stage`] starts every counter afresh, with the
//! input bytes the stage will read (files whose output is already committed are taken off
//! as they are found, so the ETA is for the work left). Bytes count as the readers read them
//! (compressed bytes from disk, through `source::Progress`), not when a file ends, so one big
//! file shows its real rate from the first second.
//!
//! It is also the work's cancellation token: the bindings' interruptible helper sets it on
//! Ctrl-C, and every stage (fingerprint, dedup of loose files, tokenize, pack) looks at it at
//! file / batch granularity and stops with `Error::Interrupted`, committing nothing partial.

use crate::source;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

pub struct Progress {
    stage: Mutex<Stage>,
    /// The last snapshot of every stage that has ended, not yet taken by the display (a fast
    /// stage can start and end between two polls; its final counts must still be shown).
    finished: Mutex<Vec<Snapshot>>,
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub docs: AtomicU64,
    pub tokens: AtomicU64,
    /// Input bytes this stage will read (less what resumed files need not).
    pub bytes_total: AtomicU64,
    /// Every reader of the build counts into this (monotonic across stages).
    pub read: source::Progress,
    cancel: AtomicBool,
}

struct Stage {
    name: String,
    started: Instant,
    /// `read`'s count when the stage started.
    read_base: u64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            stage: Mutex::new(Stage {
                name: String::new(),
                started: Instant::now(),
                read_base: 0,
            }),
            finished: Mutex::new(Vec::new()),
            files_total: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            docs: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            read: source::Progress::new(),
            cancel: AtomicBool::new(false),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub stage: String,
    pub files_total: u64,
    pub files_done: u64,
    pub docs: u64,
    pub tokens: u64,
    /// Input bytes read by this stage so far, and its total (see the module docs).
    pub bytes: u64,
    pub bytes_total: u64,
    /// Seconds since the stage started.
    pub seconds: f64,
}

impl Progress {
    /// A new stage over `files_total` files holding `bytes_total` input bytes; every counter
    /// starts from zero (the last stage's final counts go to [`Progress::take_finished`]).
    pub fn start_stage(&self, name: &str, files_total: u64, bytes_total: u64) {
        let mut stage = self.stage.lock().expect("progress lock");
        if !stage.name.is_empty() {
            let last = self.snapshot_of(&stage);
            self.finished.lock().expect("progress lock").push(last);
        }
        *stage = Stage {
            name: name.to_string(),
            started: Instant::now(),
            read_base: self.read.compressed_bytes(),
        };
        self.files_total.store(files_total, Relaxed);
        self.files_done.store(0, Relaxed);
        self.docs.store(0, Relaxed);
        self.tokens.store(0, Relaxed);
        self.bytes_total.store(bytes_total, Relaxed);
    }
    /// A file of the stage needed no work (its output was committed): it is done, and its
    /// bytes are not part of the work left.
    pub fn file_resumed(&self, bytes: u64) {
        self.files_done.fetch_add(1, Relaxed);
        let _ = self
            .bytes_total
            .fetch_update(Relaxed, Relaxed, |t| Some(t.saturating_sub(bytes)));
    }
    fn snapshot_of(&self, stage: &Stage) -> Snapshot {
        Snapshot {
            stage: stage.name.clone(),
            files_total: self.files_total.load(Relaxed),
            files_done: self.files_done.load(Relaxed),
            docs: self.docs.load(Relaxed),
            tokens: self.tokens.load(Relaxed),
            bytes: self.read.compressed_bytes().saturating_sub(stage.read_base),
            bytes_total: self.bytes_total.load(Relaxed),
            seconds: stage.started.elapsed().as_secs_f64(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_per_stage_and_resumed_files_leave_the_total() {
        let p = Progress::default();
        p.start_stage("fingerprint web", 3, 300);
        p.docs.fetch_add(10, Relaxed);
        p.file_resumed(100);
        let s = p.snapshot();
        assert_eq!((s.docs, s.files_done, s.bytes_total), (10, 1, 200));
        p.start_stage("tokenize web", 3, 300);
        let s = p.snapshot();
        assert_eq!(
            (
                s.stage.as_str(),
                s.docs,
                s.files_done,
                s.bytes,
                s.bytes_total
            ),
            ("tokenize web", 0, 0, 0, 300)
        );
        let done = p.take_finished();
        assert_eq!(done.len(), 1);
        assert_eq!(
            (done[0].stage.as_str(), done[0].docs),
            ("fingerprint web", 10)
        );
    }
}
