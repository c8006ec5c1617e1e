//! The loader against an in-memory source built from real documents of the test slice
//! (tokenized with the slice's Llama 2 tokenizer, wrapped in BOS/EOS, concatenated).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::loader::{Loader, LoaderConfig, WindowSource};
use super::schedule::{CorpusSize, Schedule, StageSpec};
use crate::error::{Error, Result};

const BOS: u32 = 1;
const EOS: u32 = 2;
const SEQ: u32 = 64;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tests/data")
}

fn read_texts(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).expect("slice file");
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "zst") {
        Box::new(zstd::Decoder::new(file).expect("zstd"))
    } else {
        Box::new(file)
    };
    BufReader::new(reader)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l.expect("line")).expect("json");
            v["text"].as_str().expect("text").to_string()
        })
        .collect()
}

/// Two real token streams: SlimPajama and SkyPile documents of the slice.
fn streams() -> &'static Vec<Vec<u32>> {
    static STREAMS: OnceLock<Vec<Vec<u32>>> = OnceLock::new();
    STREAMS.get_or_init(|| {
        let d = data_dir();
        let tok_bytes = zstd::decode_all(
            std::fs::File::open(d.join("tokenizers/llama2/tokenizer.json.zst")).expect("tok"),
        )
        .expect("zstd tokenizer");
        let tok = tokenizers::Tokenizer::from_bytes(tok_bytes).expect("tokenizer");
        let files = [
            d.join("corpora/slimpajama/train/chunk1/example_train_0000.jsonl.zst"),
            d.join("corpora/skypile/2023-04.jsonl"),
        ];
        files
            .iter()
            .map(|f| {
                let mut stream = Vec::new();
                for text in read_texts(f) {
                    let enc = tok.encode(text, false).expect("encode");
                    stream.push(BOS);
                    stream.extend_from_slice(enc.get_ids());
                    stream.push(EOS);
                }
                stream
            })
            .collect()
    })
}

struct VecSource {
    streams: Vec<Vec<u32>>,
    seq_len: u32,
    /// Fail on this (corpus, window), to test error delivery.
    poison: Option<(u32, u64)>,
}

impl WindowSource for VecSource {
    fn read_window(&self, corpus: u32, window: u64, out: &mut [u32]) -> Result<()> {
        if self.poison == Some((corpus, window)) {
            return Err(Error::shard("mem", format!("poisoned window {window}")));
        }
        let start = window as usize * self.seq_len as usize;
        let stream = &self.streams[corpus as usize];
        let src = stream
            .get(start..start + out.len())
            .ok_or_else(|| Error::shard("mem", format!("window {window} out of range")))?;
        out.copy_from_slice(src);
        Ok(())
    }
}

fn schedule() -> Arc<Schedule> {
    let s = streams();
    let corpora = vec![
        CorpusSize {
            name: "slimpajama".into(),
            tokens: s[0].len() as u64,
        },
        CorpusSize {
            name: "skypile".into(),
            tokens: s[1].len() as u64,
        },
    ];
    let w = |a: f64, b: f64| -> BTreeMap<String, f64> {
        [("slimpajama".to_string(), a), ("skypile".to_string(), b)]
            .into_iter()
            .filter(|(_, v)| *v > 0.0)
            .collect()
    };
    let stages = vec![
        StageSpec {
            name: "basic".into(),
            tokens: 20 * 8 * 64,
            batch_tokens: 8 * 64,
            weights: w(1.0, 0.0),
            ramp_tokens: 0,
        },
        StageSpec {
            name: "continual".into(),
            tokens: 30 * 8 * 64,
            batch_tokens: 8 * 64,
            weights: w(0.5, 0.5),
            ramp_tokens: 10 * 8 * 64,
        },
        StageSpec {
            name: "cooldown".into(),
            tokens: 10 * 32 * 64,
            batch_tokens: 32 * 64,
            weights: w(0.5, 0.5),
            ramp_tokens: 0,
        },
    ];
    Arc::new(Schedule::new(SEQ, 3407, corpora, stages).expect("schedule"))
}

fn source(poison: Option<(u32, u64)>) -> Arc<VecSource> {
    Arc::new(VecSource {
        streams: streams().clone(),
        seq_len: SEQ,
        poison,
    })
}

fn config(rank: u32, world: u32, slots: usize, threads: usize) -> LoaderConfig {
    LoaderConfig {
        rank,
        world,
        slots,
        threads,
        start_step: 0,
        end_step: None,
    }
}

/// (step, corpus per row, tokens) for every step the loader delivers.
type Delivered = Vec<(u64, Vec<u32>, Vec<u32>)>;

fn drain(loader: &Loader) -> Delivered {
    let mut out = Vec::new();
    while let Some(slot) = loader.next_slot().expect("slot") {
        out.push((
            slot.step(),
            slot.samples().iter().map(|x| x.corpus).collect(),
            slot.tokens().to_vec(),
        ));
    }
    out
}

#[test]
fn slots_hold_the_sampled_windows_whatever_the_thread_count() {
    let s = schedule();
    assert!(
        s.windows()[0] > 100 && s.windows()[1] > 50,
        "{:?}",
        s.windows()
    );
    // SkyPile is small enough to wrap around: the loader crosses corpus epochs.
    assert!(s.epochs()[1] >= 2, "{:?}", s.epochs());
    let src = source(None);
    let reference = drain(&Loader::new(s.clone(), src.clone(), config(0, 1, 3, 1)).unwrap());
    assert_eq!(reference.len() as u64, s.num_steps());
    // Independent oracle: the sampler and the stream, without the loader.
    let row = SEQ as usize + 1;
    for (step, corpora, tokens) in &reference {
        let batch = s.batch(*step).unwrap();
        assert_eq!(corpora, &batch.iter().map(|x| x.corpus).collect::<Vec<_>>());
        for (i, x) in batch.iter().enumerate() {
            let start = x.window as usize * SEQ as usize;
            let want = &streams()[x.corpus as usize][start..start + row];
            assert_eq!(&tokens[i * row..(i + 1) * row], want, "step {step} row {i}");
        }
    }
    for threads in [2, 4] {
        for slots in [1, 2, 5] {
            let got =
                drain(&Loader::new(s.clone(), src.clone(), config(0, 1, slots, threads)).unwrap());
            assert_eq!(got, reference, "threads {threads} slots {slots}");
        }
    }
}

#[test]
fn ranks_reassemble_the_global_batch() {
    let s = schedule();
    let src = source(None);
    let whole = drain(&Loader::new(s.clone(), src.clone(), config(0, 1, 2, 2)).unwrap());
    for world in [2u32, 4, 8] {
        let per_rank: Vec<Delivered> = (0..world)
            .map(|r| drain(&Loader::new(s.clone(), src.clone(), config(r, world, 2, 2)).unwrap()))
            .collect();
        for (i, (step, corpora, tokens)) in whole.iter().enumerate() {
            let mut c = Vec::new();
            let mut t = Vec::new();
            for rank in &per_rank {
                assert_eq!(rank[i].0, *step);
                c.extend_from_slice(&rank[i].1);
                t.extend_from_slice(&rank[i].2);
            }
            assert_eq!((&c, &t), (corpora, tokens), "world {world} step {step}");
        }
    }
    // 8 sequences per step do not divide among 3 ranks: refused up front.
    assert!(matches!(
        Loader::new(s.clone(), src, config(0, 3, 2, 1)),
        Err(Error::Spec(m)) if m.contains("batch_tokens")
    ));
}

#[test]
fn seek_resumes_the_same_stream_and_held_slots_stay_intact() {
    let s = schedule();
    let src = source(None);
    let reference = drain(&Loader::new(s.clone(), src.clone(), config(0, 1, 4, 2)).unwrap());
    let loader = Loader::new(s.clone(), src, config(0, 1, 3, 2)).unwrap();
    let held = loader.next_slot().unwrap().unwrap();
    let held_ptr = held.tokens().as_ptr();
    let a = loader.next_slot().unwrap().unwrap();
    let b = loader.next_slot().unwrap().unwrap();
    // Every buffer is held: asking for more is an error, not a hang.
    assert!(matches!(loader.next_slot(), Err(Error::Spec(m)) if m.contains("slots are held")));
    drop((a, b));
    for _ in 0..5 {
        drop(loader.next_slot().unwrap().unwrap());
    }
    loader.seek(27).unwrap();
    assert_eq!(loader.position(), 27);
    let rest = drain(&loader);
    assert_eq!(rest, reference[27..].to_vec());
    // The slot held throughout was never overwritten while others cycled.
    assert_eq!(held.tokens(), &reference[0].2[..]);
    assert_eq!(held.tokens().as_ptr(), held_ptr);
    assert!(loader
        .buffer_regions()
        .iter()
        .any(|&(p, _)| p == held_ptr as usize));
    loader.seek(0).unwrap();
    assert_eq!(
        loader.next_slot().unwrap().unwrap().tokens(),
        &reference[0].2[..]
    );
    assert!(loader.seek(s.num_steps() + 1).is_err());
}

#[test]
fn source_errors_reach_the_consumer_at_their_step() {
    let s = schedule();
    let step = 25;
    let x = s.batch(step).unwrap()[3];
    let loader = Loader::new(
        s.clone(),
        source(Some((x.corpus, x.window))),
        config(0, 1, 3, 2),
    )
    .unwrap();
    for k in 0..s.num_steps() {
        let r = loader.next_slot();
        // The poisoned window may also be drawn at another step of another epoch.
        let poisoned = s
            .batch(k)
            .unwrap()
            .iter()
            .any(|y| (y.corpus, y.window) == (x.corpus, x.window));
        match r {
            Err(Error::Shard { msg, .. }) => {
                assert!(poisoned && msg.contains("poisoned"), "step {k}: {msg}");
            }
            Ok(Some(slot)) => assert!(!poisoned && slot.step() == k),
            other => panic!("step {k}: {:?}", other.map(|o| o.map(|s| s.step()))),
        }
        assert!(k != step || poisoned);
    }
    assert!(loader.next_slot().unwrap().is_none());
}

/// `gather` (what `MixSampler.batch` returns) is the sampled windows, row by row, the same
/// rows the loader's slots hold, and the ranks' gathers reassemble the global batch.
#[test]
fn gather_reads_the_sampled_windows_and_agrees_with_the_loader() {
    let s = schedule();
    let src = source(None);
    let row = SEQ as usize + 1;
    let delivered = drain(&Loader::new(s.clone(), src.clone(), config(0, 1, 2, 1)).unwrap());
    for (step, corpora, tokens) in &delivered {
        let (got, samples) = crate::mix::gather(&s, src.as_ref(), *step, 0, 1).unwrap();
        assert_eq!(samples, s.batch(*step).unwrap());
        assert_eq!(
            &samples.iter().map(|x| x.corpus).collect::<Vec<_>>(),
            corpora
        );
        assert_eq!(&got, tokens, "step {step}");
        for (i, x) in samples.iter().enumerate() {
            let start = x.window as usize * SEQ as usize;
            let want = &streams()[x.corpus as usize][start..start + row];
            assert_eq!(&got[i * row..(i + 1) * row], want, "step {step} row {i}");
        }
        let mut joined = Vec::new();
        for rank in 0..4 {
            joined.extend(
                crate::mix::gather(&s, src.as_ref(), *step, rank, 4)
                    .unwrap()
                    .0,
            );
        }
        assert_eq!(&joined, tokens, "4 ranks at step {step}");
    }
}

/// Misuse is `Error::Usage`, a source error passes through, a short buffer is refused.
#[test]
fn gather_refuses_misuse_and_passes_source_errors() {
    let s = schedule();
    let src = source(None);
    let last = s.num_steps();
    assert!(
        matches!(crate::mix::gather(&s, src.as_ref(), last, 0, 1), Err(Error::Usage(m)) if m.contains("past the end"))
    );
    assert!(matches!(
        crate::mix::gather(&s, src.as_ref(), 0, 2, 2),
        Err(Error::Usage(_))
    ));
    assert!(matches!(
        crate::mix::gather(&s, src.as_ref(), 0, 0, 0),
        Err(Error::Usage(_))
    ));
    let mut short = vec![0u32; 3];
    assert!(matches!(
        crate::mix::gather_into(&s, src.as_ref(), 0, 0, 1, &mut short),
        Err(Error::Usage(m)) if m.contains("buffer")
    ));
    let first = s.batch(0).unwrap()[0];
    let poisoned = source(Some((first.corpus, first.window)));
    assert!(matches!(
        crate::mix::gather(&s, poisoned.as_ref(), 0, 0, 1),
        Err(Error::Shard { msg, .. }) if msg.contains("poisoned")
    ));
}
