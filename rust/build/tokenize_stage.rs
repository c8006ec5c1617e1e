//! The tokenize stage: each input file -> one staged part (a shard of its kept documents, in
//! row order) plus a sidecar with its stats and skipped rows, written after the part, so its
//! presence marks the file done. Runs through [`stream`](super::stream): records are read on
//! a reader thread, batches are tokenized on every thread, and the part is written in row
//! order, so it is byte-identical whatever the threads. Rows the corpus's committed dedup
//! decision removed are counted, not tokenized.

use super::manifest::{FileStats, SkippedRow};
use super::stream::{Stage, Start};
use super::{display_path, fault, part_paths, verified_part, Ctx, PartStats};
use crate::build::config::CorpusConfig;
use crate::dedup::Kind;
use crate::error::{Error, IoContext, Result};
use crate::shard::{write_atomic, ShardWriter, Source};
use crate::source::{self, Record};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

pub(super) struct Tokenize<'a> {
    pub ctx: &'a Ctx<'a>,
    pub corpus: &'a CorpusConfig,
    /// The corpus's staging dir.
    pub dir: &'a Path,
    pub files: &'a [PathBuf],
    /// Removed rows of file `i` (empty without dedup).
    pub removed: &'a (dyn Fn(usize) -> Result<HashMap<u64, Kind>> + Sync),
}

pub(super) struct File {
    index: usize,
    shown: String,
    removed: HashMap<u64, Kind>,
    sidecar: PathBuf,
    bytes: u64,
}

pub(super) struct Part {
    writer: ShardWriter,
    stats: FileStats,
    skipped: Vec<SkippedRow>,
}

impl Stage for Tokenize<'_> {
    type File = File;
    type Writer = Part;
    /// The token ids (BOS/EOS included) of each kept document of the batch, in order.
    type Mapped = Vec<Vec<u32>>;
    /// The part's sidecar, and whether it was there already (resumed).
    type Done = (PartStats, bool);

    fn start(&self, index: usize) -> Result<Start<Self>> {
        let file = &self.files[index];
        let (part, sidecar) = part_paths(self.dir, index);
        let bytes = std::fs::metadata(file).ctx(file)?.len();
        let progress = self.ctx.progress;
        if let Ok(text) = std::fs::read_to_string(&sidecar) {
            if let Ok(done) = serde_json::from_str::<PartStats>(&text) {
                // Same size is our cheap guard against an input file edited between runs; a
                // part that does not verify against its sidecar is redone, never trusted.
                if done.stats.bytes == bytes && verified_part(&part, &done).is_ok() {
                    progress.file_resumed(bytes);
                    return Ok(Start::Done((done, true)));
                }
            }
        }
        if progress.cancelled() {
            return Err(Error::Interrupted);
        }
        let shown = display_path(self.corpus, file);
        let records =
            source::open_with_progress(file, &self.corpus.source_options(), &progress.read)?;
        Ok(Start::Work {
            records,
            file: File {
                index,
                shown: shown.clone(),
                removed: (self.removed)(index)?,
                sidecar,
                bytes,
            },
            writer: Part {
                writer: ShardWriter::create(&part, self.ctx.dtype, self.ctx.fingerprint)?,
                stats: FileStats {
                    path: shown,
                    bytes,
                    ..Default::default()
                },
                skipped: Vec::new(),
            },
        })
    }

    fn map(&self, file: &File, batch: &[Record]) -> Result<Vec<Vec<u32>>> {
        let texts: Vec<&str> = batch
            .iter()
            .filter_map(|r| match r {
                Record::Doc { row, text } if !file.removed.contains_key(row) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let encoded = self.ctx.tokenizer.encode_batch(&texts, false)?;
        Ok(encoded
            .into_iter()
            .map(|doc| {
                let mut ids = Vec::with_capacity(doc.len() + 2);
                ids.extend(self.ctx.bos);
                ids.extend_from_slice(&doc);
                ids.extend(self.ctx.eos);
                ids
            })
            .collect())
    }

    fn sink(
        &self,
        file: &File,
        part: &mut Part,
        batch: Vec<Record>,
        ids: Vec<Vec<u32>>,
    ) -> Result<()> {
        let stats = &mut part.stats;
        let (docs_before, tokens_before) = (stats.docs_read, stats.tokens);
        let mut ids = ids.into_iter();
        for record in batch {
            stats.docs_read += 1;
            match record {
                Record::Doc { row, .. } => match file.removed.get(&row) {
                    Some(Kind::Exact) => stats.exact_duplicates += 1,
                    Some(Kind::Near) => stats.near_duplicates += 1,
                    None => {
                        let doc = ids.next().expect("one encoding per kept document");
                        part.writer.push(
                            &doc,
                            Source {
                                file: file.index as u64,
                                row,
                            },
                        )?;
                        stats.docs_kept += 1;
                        stats.tokens += doc.len() as u64;
                    }
                },
                Record::Filtered { .. } => stats.docs_filtered += 1,
                Record::Skipped { row, reason } => {
                    stats.docs_skipped += 1;
                    part.skipped.push(SkippedRow {
                        file: file.shown.clone(),
                        row,
                        reason,
                    });
                }
            }
        }
        let progress = self.ctx.progress;
        progress
            .docs
            .fetch_add(stats.docs_read - docs_before, Relaxed);
        progress
            .tokens
            .fetch_add(stats.tokens - tokens_before, Relaxed);
        Ok(())
    }

    fn finish(&self, file: &File, part: Part) -> Result<(PartStats, bool)> {
        let checksum = part.writer.finish()?;
        let done = PartStats {
            stats: part.stats,
            skipped: part.skipped,
            checksum,
        };
        debug_assert_eq!(done.stats.bytes, file.bytes);
        write_atomic(
            &file.sidecar,
            &serde_json::to_vec(&done).expect("stats serialise"),
        )?;
        self.ctx.progress.files_done.fetch_add(1, Relaxed);
        fault::committed("part");
        Ok((done, false))
    }
}
