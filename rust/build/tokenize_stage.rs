//! The tokenize stage: each input file -> one staged part (a shard of its kept documents, in
//! row order) plus a sidecar with its stats and skipped rows, written after the part, so its
//! presence marks the file done. Runs through [`stream`](super::stream): records are read on
//! a reader thread, batches are tokenized on every thread, and the part is written in row
//! order, so it is byte-identical whatever the threads. Rows the corpus's committed dedup
//! decision removed are counted, not tokenized; the others go through the corpus's filter
//! chain first (the same decisions the fingerprint stage made: a filter is a pure function
//! of the text), and a dropped one is counted per filter and recorded for the filter report.

use super::manifest::{FileStats, SkippedRow};
use super::stream::{Stage, Start};
use super::{fault, part_paths, verified_part, Ctx, PartStats};
use crate::build::config::CorpusConfig;
use crate::dedup::Kind;
use crate::error::{Error, Result};
use crate::filter::report::DroppedRow;
use crate::filter::FilterChain;
use crate::shard::{write_atomic, ShardWriter, Source};
use crate::source::{self, Digest, Input, Record};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

pub(super) struct Tokenize<'a> {
    pub ctx: &'a Ctx<'a>,
    pub chain: &'a FilterChain,
    pub corpus: &'a CorpusConfig,
    /// The corpus's staging dir.
    pub dir: &'a Path,
    pub files: &'a [Input],
    /// Removed rows of file `i` (empty without dedup).
    pub removed: &'a (dyn Fn(usize) -> Result<HashMap<u64, Kind>> + Sync),
}

pub(super) struct File {
    index: usize,
    shown: String,
    removed: HashMap<u64, Kind>,
    sidecar: PathBuf,
    bytes: u64,
    /// The input and the sha256 its reader computes while reading it (JSONL and zstd).
    input: Input,
    digest: Digest,
}

pub(super) struct Part {
    writer: ShardWriter,
    stats: FileStats,
    skipped: Vec<SkippedRow>,
    dropped: Vec<DroppedRow>,
}

/// A document the dedup decision kept, after the filters.
pub(super) enum Verdict {
    /// Its token ids, BOS/EOS included.
    Keep(Vec<u32>),
    /// Filter `.0` of the chain dropped it, for reason `.1`.
    Drop(usize, String),
}

impl Stage for Tokenize<'_> {
    type File = File;
    type Writer = Part;
    /// The verdict on each document of the batch that dedup kept, in order.
    type Mapped = Vec<Verdict>;
    /// The part's sidecar, and whether it was there already (resumed).
    type Done = (PartStats, bool);

    fn start(&self, index: usize) -> Result<Start<Self>> {
        let file = &self.files[index];
        let (part, sidecar) = part_paths(self.dir, index);
        let bytes = file.size;
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
        let shown = file.name.clone();
        let digest = Digest::default();
        let records = source::open_input(
            file,
            &self.corpus.source_options(),
            &progress.read,
            Some(digest.clone()),
        )?;
        Ok(Start::Work {
            records,
            file: File {
                index,
                shown: shown.clone(),
                removed: (self.removed)(index)?,
                sidecar,
                bytes,
                input: file.clone(),
                digest,
            },
            writer: Part {
                writer: ShardWriter::create(&part, self.ctx.dtype, self.ctx.fingerprint)?,
                stats: FileStats {
                    path: shown,
                    bytes,
                    ..Default::default()
                },
                skipped: Vec::new(),
                dropped: Vec::new(),
            },
        })
    }

    fn map(&self, file: &File, batch: &[Record]) -> Result<Vec<Verdict>> {
        let mut verdicts = Vec::new();
        let mut texts = Vec::new();
        for r in batch {
            if let Record::Doc { row, text } = r {
                if file.removed.contains_key(row) {
                    continue;
                }
                match self.chain.judge(text) {
                    Some((i, reason)) => verdicts.push(Verdict::Drop(i, reason)),
                    None => {
                        verdicts.push(Verdict::Keep(Vec::new()));
                        texts.push(text.as_str());
                    }
                }
            }
        }
        let mut encoded = self.ctx.tokenizer.encode_batch(&texts, false)?.into_iter();
        for v in &mut verdicts {
            if let Verdict::Keep(ids) = v {
                let doc = encoded.next().expect("one encoding per kept document");
                ids.reserve(doc.len() + 2);
                ids.extend(self.ctx.bos);
                ids.extend_from_slice(&doc);
                ids.extend(self.ctx.eos);
            }
        }
        Ok(verdicts)
    }

    fn sink(
        &self,
        file: &File,
        part: &mut Part,
        batch: Vec<Record>,
        verdicts: Vec<Verdict>,
    ) -> Result<()> {
        let stats = &mut part.stats;
        let (docs_before, tokens_before) = (stats.docs_read, stats.tokens);
        let mut verdicts = verdicts.into_iter();
        for record in batch {
            stats.docs_read += 1;
            match record {
                Record::Doc { row, .. } => match file.removed.get(&row) {
                    Some(Kind::Exact) => stats.exact_duplicates += 1,
                    Some(Kind::Near) => stats.near_duplicates += 1,
                    None => match verdicts.next().expect("one verdict per document") {
                        Verdict::Keep(doc) => {
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
                        Verdict::Drop(i, reason) => {
                            let filter = self.chain.filters()[i].name().to_string();
                            stats.docs_filtered += 1;
                            *stats.filtered_by.entry(filter.clone()).or_default() += 1;
                            part.dropped.push(DroppedRow {
                                source: file.shown.clone(),
                                row,
                                filter,
                                reason,
                            });
                        }
                    },
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

    fn finish(&self, file: &File, mut part: Part) -> Result<(PartStats, bool)> {
        // Read to its end, the file's digest is there; parquet (and a stream stopped early)
        // takes one more sequential pass.
        part.stats.sha256 = match file.digest.complete(file.bytes) {
            Some(digest) => digest,
            None => file.input.sha256()?,
        };
        let checksum = part.writer.finish()?;
        let done = PartStats {
            stats: part.stats,
            skipped: part.skipped,
            checksum,
            dropped: part.dropped,
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
