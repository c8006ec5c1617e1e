//! Checks on the real slice in `python/tests/data/corpora`.

use super::normalize::normalize_into;
use super::*;
use crate::error::Error;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_128;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python/tests/data/corpora")
        .join(rel)
}

/// The `text` fields of a jsonl(.zst) file of the slice.
fn read_texts(rel: &str) -> Vec<String> {
    let path = data(rel);
    let file = std::fs::File::open(&path).unwrap();
    let reader: Box<dyn BufRead> = if rel.ends_with(".zst") {
        Box::new(BufReader::new(zstd::Decoder::new(file).unwrap()))
    } else {
        Box::new(BufReader::new(file))
    };
    reader
        .lines()
        .map(|l| l.unwrap())
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

fn slim(i: usize) -> Vec<String> {
    read_texts(&format!(
        "slimpajama/train/chunk1/example_train_000{i}.jsonl.zst"
    ))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Replaces `count` words of `text` with words from `vocab`: in one contiguous span
/// (`span = true`, a realistic local edit) or at scattered positions.
fn edit_words(text: &str, count: usize, span: bool, vocab: &[&str], rng: &mut Rng) -> String {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    let n = words.len();
    if span {
        let start = rng.below(n - count + 1);
        for w in &mut words[start..start + count] {
            *w = vocab[rng.below(vocab.len())];
        }
    } else {
        for _ in 0..count {
            let i = rng.below(n);
            words[i] = vocab[rng.below(vocab.len())];
        }
    }
    words.join(" ")
}

/// The exact Jaccard of two documents' word-`ngram` shingle sets (an implementation
/// independent of the MinHash path: 128-bit hashes of the word windows).
fn shingle_set(text: &str, ngram: usize) -> HashSet<u128> {
    let mut norm = String::new();
    let mut w = Vec::new();
    normalize_into(text, &mut norm, &mut w);
    let words: Vec<&str> = norm.split(' ').filter(|s| !s.is_empty()).collect();
    if words.is_empty() {
        return HashSet::new();
    }
    let g = ngram.min(words.len());
    words
        .windows(g)
        .map(|win| xxh3_128(win.join(" ").as_bytes()))
        .collect()
}

fn jaccard(a: &HashSet<u128>, b: &HashSet<u128>) -> f64 {
    let inter = a.intersection(b).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Fingerprints `files` (each a list of texts, row = index) into stores under `dir`.
fn write_stores(dir: &Path, files: &[Vec<String>], params: &DedupParams) -> Vec<PathBuf> {
    use rayon::prelude::*;
    files
        .iter()
        .enumerate()
        .map(|(f, texts)| {
            let fps: Vec<Fingerprint> = texts
                .par_iter()
                .map_init(|| Fingerprinter::new(params), |fp, t| fp.fingerprint(t))
                .collect();
            let path = dir.join(format!("{f:04}.fp"));
            let mut w = FingerprintWriter::create(&path, params).unwrap();
            for (row, fp) in fps.iter().enumerate() {
                w.push(row as u64, fp).unwrap();
            }
            assert_eq!(w.finish().unwrap(), texts.len() as u64);
            path
        })
        .collect()
}

fn run(files: &[Vec<String>], params: &DedupParams) -> DedupResult {
    let dir = tempfile::tempdir().unwrap();
    let stores = write_stores(dir.path(), files, params);
    find_duplicates(&stores, params, &dir.path().join("work")).unwrap()
}

/// kept[doc] for every doc (itself when not removed).
fn kept_map(result: &DedupResult) -> HashMap<DocId, DocId> {
    result
        .removals
        .iter()
        .map(|r| (r.removed, r.kept))
        .collect()
}

fn doc(file: u32, row: usize) -> DocId {
    DocId {
        file,
        row: row as u64,
    }
}

#[test]
fn bad_params_name_the_key() {
    let d = DedupParams::default;
    let cases: Vec<(DedupParams, &str)> = vec![
        (DedupParams { ngram: 0, ..d() }, "dedup.ngram"),
        (
            DedupParams {
                permutations: 0,
                ..d()
            },
            "dedup.permutations",
        ),
        (DedupParams { bands: 0, ..d() }, "dedup.bands"),
        (DedupParams { rows: 0, ..d() }, "dedup.rows"),
        (DedupParams { bands: 10, ..d() }, "dedup.bands"),
        (
            DedupParams {
                permutations: 100,
                ..d()
            },
            "dedup.bands",
        ),
        (
            DedupParams {
                threshold: 0.0,
                ..d()
            },
            "dedup.threshold",
        ),
        (
            DedupParams {
                threshold: 1.5,
                ..d()
            },
            "dedup.threshold",
        ),
        (
            DedupParams {
                threshold: f64::NAN,
                ..d()
            },
            "dedup.threshold",
        ),
        (
            DedupParams {
                memory_bytes: 0,
                ..d()
            },
            "dedup.memory_bytes",
        ),
    ];
    for (p, key) in cases {
        match p.validate() {
            Err(Error::Spec(msg)) => assert!(msg.starts_with(key), "{msg:?} should name {key}"),
            other => panic!("{p:?}: expected a spec error naming {key}, got {other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            find_duplicates(&[], &p, dir.path()),
            Err(Error::Spec(_))
        ));
    }
    assert!(DedupParams::default().validate().is_ok());
    assert!(DedupParams {
        threshold: 1.0,
        ..d()
    }
    .validate()
    .is_ok());
}

#[test]
fn exact_duplicates_keep_the_earliest() {
    let mut f0 = slim(0);
    let f1 = slim(1);
    // A copy of a later file's document at the end of an earlier file: the earlier file wins
    // although its row number is larger.
    let planted = f1[600].clone();
    f0.push(planted.clone());
    let files = vec![f0, f1];
    let params = DedupParams {
        near: false,
        ..Default::default()
    };
    let result = run(&files, &params);

    // Oracle: the first document (in input order) with each normalized text.
    let mut first: HashMap<String, DocId> = HashMap::new();
    let mut expect = Vec::new();
    for (f, texts) in files.iter().enumerate() {
        for (row, t) in texts.iter().enumerate() {
            let id = doc(f as u32, row);
            let k = *first.entry(super::normalize::normalize(t)).or_insert(id);
            if k != id {
                expect.push((id, k));
            }
        }
    }
    let got: Vec<(DocId, DocId)> = result
        .removals
        .iter()
        .map(|r| (r.removed, r.kept))
        .collect();
    assert_eq!(got, expect);
    assert!(
        expect.len() >= 50,
        "the slice has many exact duplicates ({})",
        expect.len()
    );
    assert!(result
        .removals
        .iter()
        .all(|r| r.kind == Kind::Exact && r.jaccard == 1.0 && r.kept < r.removed));
    let planted_id = doc(0, files[0].len() - 1);
    let copy = result
        .removals
        .iter()
        .find(|r| r.kept == planted_id)
        .expect("the later copy points at the planted earlier one");
    assert_eq!(files[1][copy.removed.row as usize], planted);
    assert_eq!(result.stats.exact, expect.len() as u64);
    assert_eq!(result.stats.near, 0);
}

/// The documents of file 1 that are first occurrences and have at least `min_words` words.
fn originals(texts: &[String], min_words: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    texts
        .iter()
        .filter(|t| t.split_whitespace().count() >= min_words)
        .filter(|t| seen.insert(super::normalize::normalize(t)))
        .cloned()
        .collect()
}

#[test]
fn planted_near_duplicates_are_caught_and_heavy_edits_kept() {
    let f1 = slim(1);
    let origs = originals(&f1, 200);
    let vocab_text = f1.join(" ");
    let vocab: Vec<&str> = vocab_text.split_whitespace().collect();
    let mut rng = Rng(7);
    let mut light = Vec::new();
    let mut heavy = Vec::new();
    for t in &origs {
        let n = t.split_whitespace().count();
        // "A few percent": 3 % of the words, in one contiguous span (a changed name, date or
        // paragraph, the common real-world near duplicate).
        light.push(edit_words(t, (n * 3 / 100).max(1), true, &vocab, &mut rng));
        heavy.push(edit_words(t, n * 40 / 100, false, &vocab, &mut rng));
    }
    let files = vec![origs.clone(), light.clone(), heavy.clone()];
    let params = DedupParams::default();
    let result = run(&files, &params);
    let kept = kept_map(&result);
    let root = |d: DocId| *kept.get(&d).unwrap_or(&d);

    let (mut caught, mut high, mut caught_high) = (0, 0, 0);
    for i in 0..origs.len() {
        let j = jaccard(&shingle_set(&origs[i], 13), &shingle_set(&light[i], 13));
        let hit = root(doc(1, i)) == root(doc(0, i)) && kept.contains_key(&doc(1, i));
        caught += hit as usize;
        if j >= 0.9 {
            high += 1;
            caught_high += hit as usize;
        }
        if j >= 0.95 {
            assert!(hit, "light edit #{i} (J = {j:.3}) not caught");
        }
    }
    eprintln!(
        "planted: {} originals, light edits caught {caught}, with J >= 0.9: {caught_high}/{high}",
        origs.len()
    );
    assert!(origs.len() >= 100);
    // 3 % in one span of a 200-word document leaves J ~ 0.87, where the 9 x 13 S-curve gives
    // P(candidate) ~ 0.78; longer documents keep J >= 0.9 (P >= 0.93).
    assert!(high >= 30, "enough edits keep J >= 0.9 ({high})");
    assert!(caught_high as f64 >= 0.9 * high as f64);
    assert!(caught as f64 >= 0.75 * origs.len() as f64);
    for i in 0..heavy.len() {
        let r = result.removals.iter().find(|r| r.removed == doc(2, i));
        assert!(r.is_none(), "heavily edited copy #{i} removed: {r:?}");
    }
    // Every near removal reports its estimate against the kept document.
    for r in result.removals.iter().filter(|r| r.kind == Kind::Near) {
        assert!(r.jaccard > 0.0 && r.jaccard <= 1.0, "{r:?}");
    }
}

#[test]
fn lsh_recall_and_precision_against_exact_jaccard() {
    // The real file 1 (licence / README families) plus copies of its long documents edited in
    // a span of 0-12 % of their words: J spread over the whole S-curve.
    let f1 = slim(1);
    let origs = originals(&f1, 100);
    let vocab_text = f1.join(" ");
    let vocab: Vec<&str> = vocab_text.split_whitespace().collect();
    let mut rng = Rng(11);
    let edited: Vec<String> = origs
        .iter()
        .map(|t| {
            let n = t.split_whitespace().count();
            let pct = rng.below(13);
            edit_words(t, (n * pct / 100).max(1), true, &vocab, &mut rng)
        })
        .collect();
    let files = vec![f1.clone(), edited.clone()];
    let params = DedupParams::default();
    let result = run(&files, &params);
    let kept = kept_map(&result);

    let docs: Vec<(DocId, &String)> = files
        .iter()
        .enumerate()
        .flat_map(|(f, t)| {
            t.iter()
                .enumerate()
                .map(move |(r, t)| (doc(f as u32, r), t))
        })
        .collect();
    let sets: Vec<HashSet<u128>> = docs.iter().map(|(_, t)| shingle_set(t, 13)).collect();
    let index: HashMap<DocId, usize> = docs.iter().enumerate().map(|(i, d)| (d.0, i)).collect();
    let root = |d: DocId| *kept.get(&d).unwrap_or(&d);

    // All pairs sharing at least one shingle, through an inverted index.
    let mut postings: HashMap<u128, Vec<u32>> = HashMap::new();
    for (i, s) in sets.iter().enumerate() {
        for &h in s {
            postings.entry(h).or_default().push(i as u32);
        }
    }
    let mut pairs: HashSet<(u32, u32)> = HashSet::new();
    for list in postings.values() {
        if list.len() > 400 {
            continue; // boilerplate shingles: their documents share others too
        }
        for (a, &x) in list.iter().enumerate() {
            for &y in &list[a + 1..] {
                pairs.insert((x, y));
            }
        }
    }
    let (mut above, mut found) = (0usize, 0usize);
    let mut buckets = [(0usize, 0usize); 10];
    for &(x, y) in &pairs {
        let j = jaccard(&sets[x as usize], &sets[y as usize]);
        if sets[x as usize] == sets[y as usize] {
            continue; // exact duplicates: not the LSH stage's business
        }
        let same = root(docs[x as usize].0) == root(docs[y as usize].0);
        let b = ((j * 10.0) as usize).min(9);
        buckets[b].0 += 1;
        buckets[b].1 += same as usize;
        if j >= 0.9 {
            above += 1;
            found += same as usize;
        }
    }
    for (b, (n, s)) in buckets.iter().enumerate() {
        let mid = (b as f64 + 0.5) / 10.0;
        eprintln!(
            "true J in [{:.1}, {:.1}): {n} pairs, {s} in one component (S-curve at {mid:.2}: {:.3})",
            b as f64 / 10.0,
            (b + 1) as f64 / 10.0,
            params.candidate_probability(mid)
        );
    }
    let recall = found as f64 / above as f64;

    // Precision: near removals whose true Jaccard with their kept document passes.
    let near: Vec<&Removal> = result
        .removals
        .iter()
        .filter(|r| r.kind == Kind::Near)
        .collect();
    let good = near
        .iter()
        .filter(|r| jaccard(&sets[index[&r.removed]], &sets[index[&r.kept]]) >= params.threshold)
        .count();
    let precision = good as f64 / near.len() as f64;
    eprintln!(
        "pairs with J >= 0.9: {above}, recall {recall:.3}; near removals {}, precision {precision:.3}",
        near.len()
    );
    // S-curve of 9 x 13: P(candidate) = 0.93 at J = 0.9 and rises to 1 (0.998 at 0.95);
    // verification at 0.8 drops a J >= 0.9 pair with probability < 1e-4 (3.8 sigma).
    assert!(above >= 50, "enough high-J pairs to measure ({above})");
    assert!(recall >= 0.9, "recall {recall:.3}");
    // Verification admits J < 0.8 only through estimate noise (sd 0.035) or chaining.
    assert!(near.len() >= 50);
    assert!(precision >= 0.9, "precision {precision:.3}");
}

#[test]
fn cjk_near_duplicates() {
    let texts = read_texts("skypile/2023-01.jsonl");
    let origs: Vec<String> = {
        let mut seen = HashSet::new();
        texts
            .iter()
            .filter(|t| t.chars().filter(|&c| super::normalize::is_cjk(c)).count() >= 300)
            .filter(|t| seen.insert(super::normalize::normalize(t)))
            .take(60)
            .cloned()
            .collect()
    };
    assert!(origs.len() >= 20, "{}", origs.len());
    let pool: Vec<char> = texts
        .iter()
        .flat_map(|t| t.chars())
        .filter(|&c| super::normalize::is_cjk(c))
        .take(5000)
        .collect();
    let mut rng = Rng(3);
    let edit = |t: &str, count: usize, rng: &mut Rng| -> String {
        let mut cs: Vec<char> = t.chars().collect();
        let cjk: Vec<usize> = (0..cs.len())
            .filter(|&i| super::normalize::is_cjk(cs[i]))
            .collect();
        let start = rng.below(cjk.len() - count);
        for &i in &cjk[start..start + count] {
            cs[i] = pool[rng.below(pool.len())];
        }
        cs.into_iter().collect()
    };
    let light: Vec<String> = origs.iter().map(|t| edit(t, 5, &mut rng)).collect();
    let result = run(&[origs.clone(), light], &DedupParams::default());
    let kept = kept_map(&result);
    let caught = (0..origs.len())
        .filter(|&i| kept.get(&doc(1, i)) == Some(&doc(0, i)))
        .count();
    eprintln!("CJK: {caught}/{} five-character edits caught", origs.len());
    assert!(caught as f64 >= 0.9 * origs.len() as f64);
    assert!(result.removals.iter().all(|r| r.removed.file == 1));
}

#[test]
fn same_result_with_1_or_2_threads_and_with_spills() {
    let f1 = slim(1);
    let origs = originals(&f1, 200);
    let vocab_text = f1.join(" ");
    let vocab: Vec<&str> = vocab_text.split_whitespace().collect();
    let mut rng = Rng(5);
    let edited: Vec<String> = origs
        .iter()
        .map(|t| {
            let n = t.split_whitespace().count();
            edit_words(t, n / 50, true, &vocab, &mut rng)
        })
        .collect();
    let files = vec![slim(0), f1, edited];
    let params = DedupParams::default();
    let with_threads = |n: usize, p: &DedupParams| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
            .install(|| run(&files, p))
    };
    let one = with_threads(1, &params);
    let two = with_threads(2, &params);
    let tiny = DedupParams {
        memory_bytes: 4096,
        ..params.clone()
    };
    let spilled = with_threads(2, &tiny);
    assert_eq!(one.stats.spilled_runs, 0);
    assert!(spilled.stats.spilled_runs > 10, "{:?}", spilled.stats);
    assert!(one.stats.exact > 0 && one.stats.near > 0, "{:?}", one.stats);
    assert_eq!(one.removals, two.removals);
    assert_eq!(one.removals, spilled.removals);

    // And the report bytes.
    let dir = tempfile::tempdir().unwrap();
    let sources: Vec<String> = (0..3).map(|i| format!("file-{i}.jsonl.zst")).collect();
    let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
    write_report(&a, &one.report_rows(&sources).unwrap()).unwrap();
    write_report(&b, &spilled.report_rows(&sources).unwrap()).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn report_reads_back() {
    let f1 = slim(1);
    let result = run(&[f1], &DedupParams::default());
    let sources = vec!["slimpajama/train/chunk1/example_train_0001.jsonl.zst".to_string()];
    let rows = result.report_rows(&sources).unwrap();
    assert!(!rows.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dedup.parquet");
    write_report(&path, &rows).unwrap();
    assert_eq!(read_report(&path).unwrap(), rows);
    assert!(!super::store::tmp_path(&path).exists());
    // An empty report is a valid file with the schema.
    write_report(&path, &[]).unwrap();
    assert!(read_report(&path).unwrap().is_empty());
    assert!(result.report_rows(&[]).is_err());
}

#[test]
fn store_roundtrip_and_corruption() {
    let texts = slim(0);
    let params = DedupParams::default();
    let dir = tempfile::tempdir().unwrap();
    let paths = write_stores(dir.path(), std::slice::from_ref(&texts), &params);
    let store = FingerprintStore::open(&paths[0], &params).unwrap();
    assert_eq!(store.len(), texts.len());
    let mut fp = Fingerprinter::new(&params);
    for i in [0, 7, texts.len() - 1] {
        assert_eq!(store.fingerprint(i), (i as u64, fp.fingerprint(&texts[i])));
    }
    // Other fingerprint parameters: refused.
    let other = DedupParams {
        seed: 1,
        ..params.clone()
    };
    assert!(matches!(
        FingerprintStore::open(&paths[0], &other),
        Err(Error::Shard { .. })
    ));
    // A flipped byte: checksum mismatch naming the file.
    let mut bytes = std::fs::read(&paths[0]).unwrap();
    bytes[1000] ^= 1;
    let bad = dir.path().join("bad.fp");
    std::fs::write(&bad, &bytes).unwrap();
    match FingerprintStore::open(&bad, &params) {
        Err(e @ Error::Shard { .. }) => assert!(e.to_string().contains("bad.fp"), "{e}"),
        other => panic!("{:?}", other.map(|s| s.len())),
    }
    // Truncated.
    std::fs::write(&bad, &bytes[..bytes.len() - 5]).unwrap();
    assert!(FingerprintStore::open(&bad, &params).is_err());
    // Rows must increase; an unfinished writer leaves no store behind.
    let unfinished = dir.path().join("unfinished.fp");
    let mut w = FingerprintWriter::create(&unfinished, &params).unwrap();
    let f = fp.fingerprint("some text");
    w.push(5, &f).unwrap();
    assert!(w.push(5, &f).is_err());
    drop(w);
    assert!(!unfinished.exists());
    assert!(!super::store::tmp_path(&unfinished).exists());
}

/// Two real files, exact and lightly span-edited copies of the second's long documents, and
/// chains of two edits.
fn files_with_near_and_exact_duplicates() -> Vec<Vec<String>> {
    let f1 = slim(1);
    let origs = originals(&f1, 200);
    let vocab_text = f1.join(" ");
    let vocab: Vec<&str> = vocab_text.split_whitespace().collect();
    let mut rng = Rng(11);
    let edited: Vec<String> = origs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let n = t.split_whitespace().count();
            // Every third one is an exact copy, the others edited by 1-4 %.
            if i % 3 == 0 {
                t.clone()
            } else {
                edit_words(t, n * (1 + i % 4) / 100, true, &vocab, &mut rng)
            }
        })
        .collect();
    // Chains a -> c -> b: c is a with one span edited, b is c with another; b comes before c
    // in input order. With edits around the threshold, J(a, c) and J(b, c) can pass while
    // J(a, b) does not: only the pair (b, c) joins b to the component.
    let (mut bs, mut cs) = (Vec::new(), Vec::new());
    for (i, a) in origs.iter().enumerate() {
        let n = a.split_whitespace().count();
        let k = n * (3 + i % 5) / 100;
        let c = edit_words(a, k, true, &vocab, &mut rng);
        bs.push(edit_words(&c, k, true, &vocab, &mut rng));
        cs.push(c);
    }
    vec![slim(0), f1, edited, bs, cs]
}

/// Exact groups, then every band partition on its own (in any order), then the components:
/// the same removals as the one-process run, whatever the partitioning, with or without spills.
#[test]
fn band_partitions_give_the_same_result() {
    let files = files_with_near_and_exact_duplicates();
    let params = DedupParams::default();
    let dir = tempfile::tempdir().unwrap();
    let stores = write_stores(dir.path(), &files, &params);
    let single = find_duplicates(&stores, &params, &dir.path().join("work")).unwrap();
    assert!(
        single.stats.exact > 0 && single.stats.near > 0,
        "{:?}",
        single.stats
    );
    let tiny = DedupParams {
        memory_bytes: 4096,
        ..params.clone()
    };
    for (p, partitions) in [(&params, 1), (&params, 2), (&params, 4), (&tiny, 9)] {
        let set = FingerprintSet::open(&stores, p).unwrap();
        let work = dir.path().join(format!("work-{partitions}"));
        let exact = exact_groups(&set, p, &work).unwrap();
        let ranges = band_partitions(p.bands, partitions);
        assert_eq!(ranges.len(), partitions);
        let mut edges = Vec::new();
        let mut spilled = 0;
        // Last partition first: the order of the partitions does not matter.
        for r in ranges.into_iter().rev() {
            let found = band_edges(&set, &exact, r, p, &work).unwrap();
            spilled += found.spilled_runs;
            edges.extend(found.edges);
        }
        let got = resolve(&set, &exact, edges, DedupStats::default()).unwrap();
        assert_eq!(got.removals, single.removals, "{partitions} partitions");
        assert_eq!(
            (got.stats.exact, got.stats.near),
            (single.stats.exact, single.stats.near)
        );
        if p.memory_bytes == 4096 {
            assert!(spilled > 9, "tiny budget should spill: {spilled}");
        }
    }
}

#[test]
fn band_partitions_cover_the_bands() {
    for bands in [1, 2, 9, 20] {
        for parts in [1, 2, 3, 9, 50] {
            let ranges = band_partitions(bands, parts);
            assert_eq!(ranges.len(), parts.min(bands));
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end, bands);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
            assert!(ranges.iter().all(|r| !r.is_empty()));
        }
    }
}

/// The definition, brute force: in every band, group the live documents by band key; in every
/// bucket, pair each member with each of the first `VERIFY_WINDOW` earlier members; a pair
/// with estimated Jaccard >= threshold is an edge. Components of (edges + exact pairs) keep
/// their earliest member. The engine's result must be exactly that.
#[test]
fn components_match_the_brute_force_definition() {
    use super::minhash::{band_key, estimate_jaccard};
    let files = files_with_near_and_exact_duplicates();
    let params = DedupParams::default();
    let dir = tempfile::tempdir().unwrap();
    let stores = write_stores(dir.path(), &files, &params);
    let got = find_duplicates(&stores, &params, &dir.path().join("work")).unwrap();

    let opened: Vec<FingerprintStore> = stores
        .iter()
        .map(|p| FingerprintStore::open(p, &params).unwrap())
        .collect();
    let docs: Vec<(DocId, super::store::FingerprintRef)> = opened
        .iter()
        .enumerate()
        .flat_map(|(f, s)| {
            (0..s.len()).map(move |i| {
                let r = s.get(i);
                (
                    DocId {
                        file: f as u32,
                        row: r.row,
                    },
                    r,
                )
            })
        })
        .collect();
    let n = docs.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            x = p[x];
        }
        x
    }
    let unite = |a: usize, b: usize, p: &mut [usize]| {
        let (ra, rb) = (root(p, a), root(p, b));
        p[ra.max(rb)] = ra.min(rb);
    };
    let mut first_of: HashMap<u128, usize> = HashMap::new();
    let mut live = vec![true; n];
    for (i, (_, r)) in docs.iter().enumerate() {
        match first_of.get(&r.exact) {
            Some(&f) => {
                unite(f, i, &mut parent);
                live[i] = false;
            }
            None => {
                first_of.insert(r.exact, i);
            }
        }
    }
    for b in 0..params.bands {
        let mut buckets: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, (_, r)) in docs.iter().enumerate() {
            if live[i] && r.shingles > 0 {
                buckets
                    .entry(band_key(r.minhash_le, b, params.rows))
                    .or_default()
                    .push(i);
            }
        }
        for members in buckets.values() {
            for j in 1..members.len() {
                for &i in &members[..j.min(components::VERIFY_WINDOW)] {
                    let jac = estimate_jaccard(docs[i].1.minhash_le, docs[members[j]].1.minhash_le);
                    if jac as f64 >= params.threshold {
                        unite(i, members[j], &mut parent);
                    }
                }
            }
        }
    }
    let mut expected = Vec::new();
    for i in 0..n {
        let r = root(&mut parent, i);
        if r != i {
            expected.push((docs[i].0, docs[r].0));
        }
    }
    let found: Vec<(DocId, DocId)> = got.removals.iter().map(|r| (r.removed, r.kept)).collect();
    assert!(
        expected.len() > 50,
        "too few duplicates to mean anything: {}",
        expected.len()
    );
    let differ: Vec<_> = found
        .iter()
        .zip(&expected)
        .filter(|(a, b)| a != b)
        .take(3)
        .collect();
    assert!(
        found.len() == expected.len() && differ.is_empty(),
        "engine {} removals, definition {}; first differences: {differ:?}",
        found.len(),
        expected.len()
    );
}

/// Key indexes beside the stores (what the build writes): the same removals as from the
/// stores alone, whatever the partitioning; a corrupt section names the index file.
#[test]
fn key_indexes_give_the_same_result_and_are_checked() {
    let files = files_with_near_and_exact_duplicates();
    let params = DedupParams::default();
    let plain = tempfile::tempdir().unwrap();
    let stores = write_stores(plain.path(), &files, &params);
    let expected = find_duplicates(&stores, &params, &plain.path().join("work")).unwrap();

    let indexed = tempfile::tempdir().unwrap();
    let stores = write_stores(indexed.path(), &files, &params);
    for (path, texts) in stores.iter().zip(&files) {
        let mut w = KeyIndexWriter::new(keys_path(path), &params);
        let mut fp = Fingerprinter::new(&params);
        for t in texts {
            w.push(&fp.fingerprint(t));
        }
        assert_eq!(w.finish().unwrap(), texts.len() as u64);
    }
    let set = FingerprintSet::open(&stores, &params).unwrap();
    assert!(set.has_key_indexes());
    let work = indexed.path().join("work");
    let got = find_duplicates(&stores, &params, &work).unwrap();
    assert_eq!(got.removals, expected.removals);
    let exact = exact_groups(&set, &params, &work).unwrap();
    let mut edges = Vec::new();
    for r in band_partitions(params.bands, 3) {
        edges.extend(band_edges(&set, &exact, r, &params, &work).unwrap().edges);
    }
    let parts = resolve(&set, &exact, edges, DedupStats::default()).unwrap();
    assert_eq!(parts.removals, expected.removals);
    drop(set);

    // Flip one byte of band 5's keys in file 1's index: the partition reading band 5 fails
    // naming the file, the others do not read that section.
    let index = keys_path(&stores[1]);
    let n = files[1].len();
    let band5 = 48 + 16 * n + n.div_ceil(8) * 8 + 8 * n * 5 + 3;
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[band5] ^= 0x40;
    std::fs::write(&index, &bytes).unwrap();
    let set = FingerprintSet::open(&stores, &params).unwrap();
    let exact = exact_groups(&set, &params, &work).unwrap();
    band_edges(&set, &exact, 0..5, &params, &work).unwrap();
    let err = band_edges(&set, &exact, 3..6, &params, &work)
        .expect_err("a flipped key must be detected")
        .to_string();
    assert!(
        err.contains("0001.keys") && err.contains("checksum mismatch"),
        "{err}"
    );

    // An index made with other parameters is refused, not mixed in.
    let other = DedupParams {
        rows: 12,
        ..params.clone()
    };
    let err = match FingerprintSet::open(&stores, &other) {
        Ok(_) => panic!("an index of other parameters was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("other dedup parameters"), "{err}");
}
