//! Packing: a corpus's staged parts (one per input file, in file order) -> fixed-size training
//! shards, holdout shards and the manifest.
//!
//! Two steps, so the copying can be spread over threads or machines:
//! 1. [`layout`] verifies every part against the checksum its sidecar recorded (a damaged part
//!    is an error naming it, never packed), walks the parts' document lengths and cuts the
//!    document sequence into shards: the last `holdout_docs` kept documents go to `holdout-*`
//!    shards, the rest to `shard-*` shards, and a shard is closed when the next document would
//!    take it past `shard_tokens`. The layout is a pure function of the parts.
//! 2. [`write_shard`] writes one shard of the layout from its part slices into
//!    `staging/<corpus>/packed/` (committed atomically; a no-op when a staged shard with the
//!    same documents is there). Shards are independent: any thread or Ray task can write any.
//!
//! [`pack`] (the end of every build) writes whatever staged shard is missing, on the calling
//! rayon pool, then moves them all into the corpus's output dir and writes its manifest. A
//! shard's bytes depend only on its documents, so the result does not depend on who wrote what.

use super::manifest::{CorpusManifest, ShardEntry, Totals};
use super::{checked_part, Ctx, PartStats};
use crate::error::{Error, IoContext, Result};
use crate::shard::{Shard, ShardWriter, Source};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

/// One output shard of a corpus's layout: its file name and the documents it holds, as
/// `(part, first doc, end doc)` slices of staged parts, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    pub name: String,
    pub slices: Vec<(usize, usize, usize)>,
    pub docs: u64,
    pub tokens: u64,
}

/// Cuts one document sequence (training or holdout) into shards.
struct Cutter {
    prefix: &'static str,
    shard_tokens: u64,
    done: Vec<ShardPlan>,
    current: Option<ShardPlan>,
}

impl Cutter {
    fn new(prefix: &'static str, shard_tokens: u64) -> Self {
        Cutter {
            prefix,
            shard_tokens,
            done: Vec::new(),
            current: None,
        }
    }

    fn push(&mut self, part: usize, doc: usize, tokens: u64) {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.tokens > 0 && c.tokens + tokens > self.shard_tokens)
        {
            self.done.extend(self.current.take());
        }
        let index = self.done.len();
        let prefix = self.prefix;
        let c = self.current.get_or_insert_with(|| ShardPlan {
            name: format!("{prefix}-{index:05}.bin"),
            slices: Vec::new(),
            docs: 0,
            tokens: 0,
        });
        match c.slices.last_mut() {
            Some(s) if s.0 == part && s.2 == doc => s.2 += 1,
            _ => c.slices.push((part, doc, doc + 1)),
        }
        c.docs += 1;
        c.tokens += tokens;
    }

    fn finish(mut self) -> Vec<ShardPlan> {
        self.done.extend(self.current.take());
        self.done
    }
}

/// A staged part whose footer matches its sidecar's checksum (cheap: the footer only).
fn open_part(dir: &Path, index: usize) -> Result<Shard> {
    checked_part(dir, index, false)
}

/// The shard layout of the `n_parts` staged parts under `dir`: training shards, then holdout
/// shards (see the module doc).
pub fn layout(
    dir: &Path,
    n_parts: usize,
    shard_tokens: u64,
    holdout_docs: u64,
) -> Result<Vec<ShardPlan>> {
    // Every part is verified (its checksum over every byte, against its sidecar) before
    // anything is packed from it: a damaged part is never copied into a shard.
    let parts: Vec<Shard> = (0..n_parts)
        .into_par_iter()
        .map(|i| checked_part(dir, i, true))
        .collect::<Result<_>>()?;
    let total: u64 = parts.iter().map(|p| p.n_docs() as u64).sum();
    let holdout_from = total.saturating_sub(holdout_docs);
    let mut train = Cutter::new("shard", shard_tokens);
    let mut holdout = Cutter::new("holdout", shard_tokens);
    let mut k = 0u64;
    for (p, part) in parts.iter().enumerate() {
        for d in 0..part.n_docs() {
            let tokens = part.doc_range(d).len() as u64;
            let cutter = if k >= holdout_from {
                &mut holdout
            } else {
                &mut train
            };
            cutter.push(p, d, tokens);
            k += 1;
        }
    }
    let mut shards = train.finish();
    shards.extend(holdout.finish());
    Ok(shards)
}

fn staged_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("packed").join(name)
}

/// A shard name of a layout: `shard-NNNNN.bin` or `holdout-NNNNN.bin`, nothing that could
/// point outside the staging dir.
fn check_name(name: &str) -> Result<()> {
    let ok = ["shard-", "holdout-"].iter().any(|p| {
        name.strip_prefix(p)
            .and_then(|rest| rest.strip_suffix(".bin"))
            .is_some_and(|n| n.len() >= 5 && n.bytes().all(|b| b.is_ascii_digit()))
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Spec(format!(
            "pack: {name:?} is not a shard name of a layout"
        )))
    }
}

/// Whether the staged shard at `path` holds exactly `plan`'s documents: counts, its checksum,
/// and the provenance of its first and last documents against the parts'.
fn staged_matches(dir: &Path, path: &Path, plan: &ShardPlan) -> Option<Shard> {
    let shard = Shard::open(path).ok()?;
    if shard.n_docs() as u64 != plan.docs || shard.n_tokens() as u64 != plan.tokens {
        return None;
    }
    shard.verify().ok()?; // a damaged staged shard is rewritten, not moved into the mix
    let source = |p: usize, d: usize| -> Option<Source> {
        let part = open_part(dir, p).ok()?;
        (d < part.n_docs()).then(|| part.doc_source(d))
    };
    let (first, last) = (plan.slices.first()?, plan.slices.last()?);
    let ok = shard.n_docs() > 0
        && source(first.0, first.1)? == shard.doc_source(0)
        && source(last.0, last.2.checked_sub(1)?)? == shard.doc_source(shard.n_docs() - 1);
    ok.then_some(shard)
}

/// Write shard `plan` of the corpus staged under `dir` into `dir/packed/` (a no-op when a
/// staged shard with these documents is there). Returns its manifest entry and whether it was
/// already there.
pub fn write_shard(ctx: &Ctx, dir: &Path, plan: &ShardPlan) -> Result<(ShardEntry, bool)> {
    check_name(&plan.name)?;
    let path = staged_path(dir, &plan.name);
    let entry = |checksum: String| ShardEntry {
        name: plan.name.clone(),
        docs: plan.docs,
        tokens: plan.tokens,
        checksum,
    };
    if let Some(shard) = staged_matches(dir, &path, plan) {
        ctx.progress.files_done.fetch_add(1, Relaxed);
        return Ok((entry(shard.checksum_hex()), true));
    }
    if ctx.progress.cancelled() {
        return Err(Error::Interrupted);
    }
    std::fs::create_dir_all(dir.join("packed")).ctx(dir.join("packed"))?;
    let mut writer = ShardWriter::create(&path, ctx.dtype, ctx.fingerprint)?;
    for &(p, start, end) in &plan.slices {
        let part = open_part(dir, p)?;
        if start > end || end > part.n_docs() {
            return Err(Error::Spec(format!(
                "pack: {} asks for documents {start}..{end} of a part with {}",
                plan.name,
                part.n_docs()
            )));
        }
        writer.push_docs_from(&part, start..end)?;
    }
    if (writer.n_docs() as u64, writer.n_tokens()) != (plan.docs, plan.tokens) {
        return Err(Error::Spec(format!(
            "pack: {} came out with {} docs / {} tokens, its layout says {} / {}",
            plan.name,
            writer.n_docs(),
            writer.n_tokens(),
            plan.docs,
            plan.tokens
        )));
    }
    let checksum = writer.finish()?;
    ctx.progress.files_done.fetch_add(1, Relaxed);
    super::fault::committed("shard");
    Ok((entry(checksum), false))
}

/// Pack a corpus: lay out its parts, write the missing staged shards (in parallel on the
/// current rayon pool), move them into the output dir and write the manifest.
pub fn pack(
    ctx: &Ctx,
    corpus: &super::CorpusConfig,
    dir: &Path,
    parts: Vec<PartStats>,
) -> Result<CorpusManifest> {
    let mut totals = Totals::default();
    for p in &parts {
        totals.add_file(&p.stats);
    }
    // Every filter of the corpus's chain, zeros included: "ran and dropped nothing" shows.
    if let Some(i) = ctx.cfg.corpora.iter().position(|c| c.name == corpus.name) {
        for f in ctx.chains[i].filters() {
            totals.filtered_by.entry(f.name().to_string()).or_default();
        }
    }
    let shards = layout(dir, parts.len(), ctx.cfg.shard_tokens, corpus.holdout_docs)?;
    let laid_out: u64 = shards.iter().map(|s| s.docs).sum();
    if laid_out != totals.docs_kept {
        return Err(Error::shard(
            dir.join("parts"),
            format!(
                "staged parts hold {laid_out} documents, their stats say {} (corrupt staging: \
                 delete it and rebuild)",
                totals.docs_kept
            ),
        ));
    }
    ctx.progress
        .start_stage(&format!("pack {}", corpus.name), shards.len() as u64, 0);
    let entries: Vec<ShardEntry> = shards
        .par_iter()
        .map(|s| write_shard(ctx, dir, s).map(|(e, _)| e))
        .collect::<Result<_>>()?;

    let out_dir = ctx.cfg.out.join("corpora").join(&corpus.name);
    if out_dir.exists() {
        std::fs::remove_dir_all(&out_dir).ctx(&out_dir)?;
    }
    std::fs::create_dir_all(&out_dir).ctx(&out_dir)?;
    for s in &shards {
        let to = out_dir.join(&s.name);
        std::fs::rename(staged_path(dir, &s.name), &to).ctx(&to)?;
    }
    if let Ok(d) = std::fs::File::open(&out_dir) {
        let _ = d.sync_all(); // make the renames durable (best effort, as everywhere)
    }
    let (train, holdout): (Vec<ShardEntry>, Vec<ShardEntry>) = entries
        .into_iter()
        .partition(|e| e.name.starts_with("shard-"));
    totals.docs_holdout = holdout.iter().map(|s| s.docs).sum();
    totals.tokens = train.iter().map(|s| s.tokens).sum();
    totals.holdout_tokens = holdout.iter().map(|s| s.tokens).sum();
    totals.shards = train.len() as u64;
    let (files, skipped): (Vec<_>, Vec<_>) =
        parts.into_iter().map(|p| (p.stats, p.skipped)).unzip();
    let manifest = CorpusManifest {
        name: corpus.name.clone(),
        totals,
        files,
        shards: train,
        holdout_shards: holdout,
        skipped: skipped.into_iter().flatten().collect(),
    };
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises") + "\n";
    crate::shard::write_atomic(&out_dir.join("manifest.json"), text.as_bytes())?;
    super::fault::committed("manifest");
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutter_closes_a_shard_before_it_overflows_and_merges_slices() {
        let mut c = Cutter::new("shard", 10);
        for (part, doc, tokens) in [
            (0, 0, 4),
            (0, 1, 4),
            (0, 2, 4),
            (1, 0, 20),
            (1, 1, 1),
            (2, 0, 9),
        ] {
            c.push(part, doc, tokens);
        }
        type Row = (String, Vec<(usize, usize, usize)>, u64, u64);
        let got: Vec<Row> = c
            .finish()
            .into_iter()
            .map(|s| (s.name, s.slices, s.docs, s.tokens))
            .collect();
        assert_eq!(
            got,
            vec![
                ("shard-00000.bin".into(), vec![(0, 0, 2)], 2, 8),
                ("shard-00001.bin".into(), vec![(0, 2, 3)], 1, 4),
                // A document longer than a shard gets a shard of its own.
                ("shard-00002.bin".into(), vec![(1, 0, 1)], 1, 20),
                ("shard-00003.bin".into(), vec![(1, 1, 2), (2, 0, 1)], 2, 10),
            ]
        );
    }

    #[test]
    fn shard_names_cannot_leave_the_staging_dir() {
        for ok in ["shard-00000.bin", "holdout-00012.bin", "shard-123456.bin"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "../x.bin",
            "shard-0.bin",
            "shard-00000.bin/..",
            "parts-00000.bin",
            "shard-0000a.bin",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
