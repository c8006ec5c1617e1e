//! Tests on the committed real slice (`python/tests/data/corpora`), and on bad inputs made
//! from it by corrupting copies in a temporary directory. Expected values are computed here
//! independently (zstd crate + `serde_json::Value`; the parquet crate's row API).

use super::*;

use std::path::PathBuf;

fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tests/data/corpora")
}

const SLIM0: &str = "slimpajama/train/chunk1/example_train_0000.jsonl.zst";
const SLIM1: &str = "slimpajama/train/chunk1/example_train_0001.jsonl.zst";
const SKY: &str = "skypile/2023-04.jsonl";
const PROOF: &str = "proof-pile/train/proofpile_train_0000.jsonl.zst";
const STAR: &str = "starcoderdata/python/train-00000-of-00004.parquet";

fn opts(text: &str, on_error: OnError) -> SourceOptions {
    SourceOptions {
        text: text.into(),
        exclude: vec![],
        on_error,
        max_doc_bytes: 64 << 20,
    }
}

fn slim_opts(on_error: OnError) -> SourceOptions {
    SourceOptions {
        exclude: vec![(
            "meta.redpajama_set_name".into(),
            vec!["RedPajamaGithub".into()],
        )],
        ..opts("text", on_error)
    }
}

fn read_all(path: &Path, o: &SourceOptions) -> Vec<Result<Record>> {
    open(path, o).expect("open").collect()
}

/// The decompressed bytes of a corpus file (plain files as they are).
fn raw(rel: &str) -> Vec<u8> {
    let bytes = std::fs::read(corpora().join(rel)).expect("read slice file");
    if rel.ends_with(".zst") {
        zstd::decode_all(&bytes[..]).expect("slice decompresses")
    } else {
        bytes
    }
}

/// Independent reading of a JSONL file: (row, text or None if excluded).
fn expected_jsonl(rel: &str, exclude: Option<(&str, &str, &str)>) -> Vec<(u64, Option<String>)> {
    let data = raw(rel);
    let mut out = vec![];
    for (row, line) in data.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(line).expect("slice is valid JSON");
        let excluded = exclude.is_some_and(|(a, b, val)| v[a][b].as_str() == Some(val));
        let text = v["text"].as_str().expect("text").to_string();
        out.push((row as u64, (!excluded).then_some(text)));
    }
    out
}

fn as_pairs(records: Vec<Result<Record>>) -> Vec<(u64, Option<String>)> {
    records
        .into_iter()
        .map(|r| match r.expect("no error on the clean slice") {
            Record::Doc { row, text } => (row, Some(text)),
            Record::Filtered { row } => (row, None),
            Record::Skipped { row, reason } => panic!("unexpected skip at {row}: {reason}"),
        })
        .collect()
}

// ---------------------------------------------------------------- discover

fn paths(inputs: &[Input]) -> Vec<PathBuf> {
    inputs
        .iter()
        .map(|i| i.path().unwrap().to_path_buf())
        .collect()
}

fn names(inputs: &[Input]) -> Vec<&str> {
    inputs.iter().map(|i| i.name.as_str()).collect()
}

#[test]
fn discover_sorts_dedups_and_supports_globs() {
    let base = corpora();
    let pats = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let files = discover(&base, &pats(&["slimpajama/train/**/*.jsonl.zst"])).unwrap();
    assert_eq!(paths(&files), vec![base.join(SLIM0), base.join(SLIM1)]);
    // Named under the pattern's base, sized as on disk.
    assert_eq!(
        names(&files),
        [
            "chunk1/example_train_0000.jsonl.zst",
            "chunk1/example_train_0001.jsonl.zst"
        ]
    );
    assert_eq!(
        files[0].size,
        std::fs::metadata(base.join(SLIM0)).unwrap().len()
    );

    // Overlapping patterns, `?`, `[..]`, `**` and an absolute pattern list each file once.
    let abs = format!("{}/skypile/*.jsonl", base.display());
    let files = discover(
        &base,
        &pats(&[
            "skypile/2023-0?.jsonl",
            "**/*.jsonl",
            "skypile/2023-0[14].jsonl",
            &abs,
        ]),
    )
    .unwrap();
    let mut expect: Vec<PathBuf> = std::fs::read_dir(base.join("skypile"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .map(|p| base.join(p.strip_prefix(&base).unwrap()))
        .collect();
    expect.sort();
    assert_eq!(paths(&files), expect);
    assert_eq!(files.len(), 2);
    // `**/*.jsonl`'s base is the spec dir: every name is under it.
    assert_eq!(
        names(&files),
        ["skypile/2023-01.jsonl", "skypile/2023-04.jsonl"]
    );

    let all = discover(&base, &pats(&["**/*"])).unwrap();
    let keys: Vec<String> = all.iter().map(|i| i.name.clone()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(keys.len(), 6, "{keys:?}");
    for (i, key) in all.iter().zip(&keys) {
        assert_eq!(i.path().unwrap(), base.join(key));
    }
}

/// Each file is named under its own pattern's base; a file found twice keeps its longest
/// name; two files with one name are refused, naming both.
#[test]
fn discover_names_inputs_under_their_patterns_base() {
    let base = corpora();
    let pats = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let files = discover(
        &base,
        &pats(&["slimpajama/train/chunk1/*.zst", "proof-pile/train/*.zst"]),
    )
    .unwrap();
    assert_eq!(
        names(&files),
        [
            "example_train_0000.jsonl.zst",
            "example_train_0001.jsonl.zst",
            "proofpile_train_0000.jsonl.zst",
        ]
    );
    let one = discover(&base, &pats(&[SKY])).unwrap();
    assert_eq!(names(&one), ["2023-04.jsonl"]);
    // Found as `2023-04.jsonl` and as `skypile/2023-04.jsonl`, whichever pattern comes first.
    for order in [[SKY, "sky*/*.jsonl"], ["sky*/*.jsonl", SKY]] {
        let both = discover(&base, &pats(&order)).unwrap();
        assert_eq!(
            names(&both),
            ["skypile/2023-01.jsonl", "skypile/2023-04.jsonl"]
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for sub in ["a", "b"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::fs::write(dir.path().join(sub).join("x.jsonl"), sub).unwrap();
    }
    let err = discover(dir.path(), &pats(&["a/*.jsonl", "b/*.jsonl"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a/x.jsonl") && err.contains("b/x.jsonl") && err.contains("'x.jsonl'"),
        "{err}"
    );
    let apart = discover(dir.path(), &pats(&["{a,b}/*.jsonl"])).unwrap();
    assert_eq!(names(&apart), ["a/x.jsonl", "b/x.jsonl"]);
}

#[test]
fn discover_errors_name_pattern_and_directory() {
    let base = corpora();
    for pat in [
        "nope/*.jsonl",
        "slimpajama/train/*",
        "skypile/2023-0[5-9].jsonl",
    ] {
        let err = discover(&base, &[pat.to_string()]).unwrap_err().to_string();
        assert!(err.contains(pat), "{err}");
        assert!(err.contains(&base.display().to_string()), "{err}");
    }
    let err = discover(&base, &["a/[".to_string()]).unwrap_err();
    assert!(matches!(err, Error::Spec(_)), "{err}");
}

// ---------------------------------------------------------------- clean slice

#[test]
fn slimpajama_docs_and_planted_github_rows() {
    let mut filtered = 0;
    for rel in [SLIM0, SLIM1] {
        let got = as_pairs(read_all(&corpora().join(rel), &slim_opts(OnError::Fail)));
        let want = expected_jsonl(rel, Some(("meta", "redpajama_set_name", "RedPajamaGithub")));
        assert_eq!(got, want, "{rel}");
        filtered += got.iter().filter(|(_, t)| t.is_none()).count();
    }
    assert!(filtered > 0, "the slice has planted RedPajamaGithub rows");
}

#[test]
fn skypile_and_proof_pile_match_an_independent_reading() {
    for rel in [SKY, "skypile/2023-01.jsonl", PROOF] {
        let got = as_pairs(read_all(&corpora().join(rel), &opts("text", OnError::Fail)));
        let want = expected_jsonl(rel, None);
        assert!(!want.is_empty());
        assert_eq!(got, want, "{rel}");
    }
}

#[test]
fn progress_counts_bytes() {
    let progress = Progress::new();
    let path = corpora().join(SLIM1);
    let n = open_with_progress(&path, &slim_opts(OnError::Fail), &progress)
        .unwrap()
        .count();
    assert!(n > 0);
    assert_eq!(progress.uncompressed_bytes(), raw(SLIM1).len() as u64);
    assert_eq!(
        progress.compressed_bytes(),
        std::fs::metadata(&path).unwrap().len()
    );
}

/// (content, max_stars_repo_name) of every row, by the parquet crate's record API.
fn expected_parquet() -> Vec<(String, String)> {
    use ::parquet::file::reader::{FileReader, SerializedFileReader};
    use ::parquet::record::RowAccessor;
    let file = std::fs::File::open(corpora().join(STAR)).unwrap();
    let reader = SerializedFileReader::new(file).unwrap();
    let names: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let content = names.iter().position(|n| n == "content").unwrap();
    let repo = names
        .iter()
        .position(|n| n == "max_stars_repo_name")
        .unwrap();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            (
                row.get_string(content).unwrap().clone(),
                row.get_string(repo).unwrap().clone(),
            )
        })
        .collect()
}

#[test]
fn starcoder_parquet_matches_record_api_and_filters() {
    let want = expected_parquet();
    assert_eq!(want.len(), 80);
    let got = as_pairs(read_all(
        &corpora().join(STAR),
        &opts("content", OnError::Fail),
    ));
    let want_pairs: Vec<(u64, Option<String>)> = want
        .iter()
        .enumerate()
        .map(|(i, (c, _))| (i as u64, Some(c.clone())))
        .collect();
    assert_eq!(got, want_pairs);

    // Exclude on a string column; a column the file lacks excludes nothing.
    let drop = want[0].1.clone();
    let o = SourceOptions {
        exclude: vec![
            ("max_stars_repo_name".into(), vec![drop.clone()]),
            ("no_such_column".into(), vec![String::new()]),
        ],
        ..opts("content", OnError::Fail)
    };
    let got = as_pairs(read_all(&corpora().join(STAR), &o));
    let want_pairs: Vec<(u64, Option<String>)> = want
        .iter()
        .enumerate()
        .map(|(i, (c, r))| (i as u64, (*r != drop).then(|| c.clone())))
        .collect();
    assert_eq!(got, want_pairs);
    assert!(got.iter().any(|(_, t)| t.is_none()));

    // Excluding on a non-string column is a spec error naming the column and file.
    let o = SourceOptions {
        exclude: vec![("max_stars_count".into(), vec!["1".into()])],
        ..opts("content", OnError::Fail)
    };
    let err = open(&corpora().join(STAR), &o)
        .err()
        .expect("spec error")
        .to_string();
    assert!(
        err.contains("max_stars_count") && err.contains("INT64"),
        "{err}"
    );
}

#[test]
fn unknown_extension_is_a_spec_error_naming_the_file() {
    let err = open(Path::new("/data/corpus.csv"), &opts("text", OnError::Fail))
        .err()
        .expect("error");
    assert!(matches!(err, Error::Spec(_)));
    assert!(err.to_string().contains("/data/corpus.csv"), "{err}");
}

// ---------------------------------------------------------------- bad inputs

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Read with Fail and Skip; check Fail ends with an error at `location` whose message
/// contains `msg`, and Skip reports the same reason at `row` and reads on.
/// Returns the Skip run's records.
fn check_bad(path: &Path, o: &SourceOptions, location: &str, row: u64, msg: &str) -> Vec<Record> {
    let fail = read_all(
        path,
        &SourceOptions {
            on_error: OnError::Fail,
            ..o.clone()
        },
    );
    let (last, before) = fail.split_last().expect("some records");
    assert!(
        before.iter().all(|r| r.is_ok()),
        "only the last item is an error"
    );
    match last {
        Err(Error::Input {
            path: p,
            location: l,
            msg: m,
        }) => {
            assert_eq!(p, &path.display().to_string());
            assert_eq!(l, location, "{m}");
            assert!(m.contains(msg), "{m:?} should contain {msg:?}");
        }
        other => panic!("expected an input error, got {other:?}"),
    }
    let err = last.as_ref().unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains(location),
        "{err}"
    );

    let skip: Vec<Record> = read_all(
        path,
        &SourceOptions {
            on_error: OnError::Skip,
            ..o.clone()
        },
    )
    .into_iter()
    .map(|r| r.expect("skip never errors on bad records"))
    .collect();
    let skipped: Vec<&Record> = skip
        .iter()
        .filter(|r| matches!(r, Record::Skipped { .. }))
        .collect();
    assert!(
        skipped.iter().any(|r| matches!(r, Record::Skipped { row: r0, reason } if *r0 == row && reason.contains(msg))),
        "no skip at row {row} with {msg:?}: {skipped:?}"
    );
    // Fail stopped exactly where Skip skipped: the records before it are the same.
    let first_skip = skip
        .iter()
        .position(|r| matches!(r, Record::Skipped { .. }))
        .unwrap();
    assert_eq!(before.len(), first_skip);
    skip
}

fn docs(records: &[Record]) -> usize {
    records
        .iter()
        .filter(|r| matches!(r, Record::Doc { .. }))
        .count()
}

/// The lines of a real JSONL file, with `edit` applied to line `at` (0-based).
fn edited_lines(rel: &str, at: usize, edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let data = raw(rel);
    let mut lines: Vec<Vec<u8>> = data.split(|&b| b == b'\n').map(|l| l.to_vec()).collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    edit(&mut lines[at]);
    let mut out = lines.join(&b'\n');
    out.push(b'\n');
    out
}

#[test]
fn non_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let total = expected_jsonl(SKY, None).len();
    let bytes = edited_lines(SKY, 2, |l| *l = b"{\"text\": this is not json}".to_vec());
    let path = write(&dir, "bad.jsonl", &bytes);
    let skip = check_bad(
        &path,
        &opts("text", OnError::Fail),
        "line 3",
        2,
        "invalid JSON",
    );
    assert_eq!(docs(&skip), total - 1);
    assert_eq!(skip.len(), total);

    let bytes = edited_lines(SKY, 4, |l| *l = b"[1, 2]".to_vec());
    let path = write(&dir, "array.jsonl", &bytes);
    check_bad(
        &path,
        &opts("text", OnError::Fail),
        "line 5",
        4,
        "expected a JSON object",
    );
}

#[test]
fn invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let total = expected_jsonl(SKY, None).len();
    // Break a multi-byte character in the middle of the Chinese text.
    let bytes = edited_lines(SKY, 6, |l| {
        let at = l.iter().position(|&b| b >= 0x80).unwrap();
        l[at] = 0xff;
    });
    let path = write(&dir, "bad.jsonl", &bytes);
    let skip = check_bad(
        &path,
        &opts("text", OnError::Fail),
        "line 7",
        6,
        "invalid UTF-8",
    );
    assert_eq!(docs(&skip), total - 1);
}

#[test]
fn missing_and_mistyped_text_field() {
    let dir = tempfile::tempdir().unwrap();
    let total = expected_jsonl(PROOF, None).len();
    let rename = |l: &mut Vec<u8>| {
        let s = String::from_utf8(l.clone())
            .unwrap()
            .replacen("\"text\"", "\"txet\"", 1);
        *l = s.into_bytes();
    };
    let path = write(&dir, "missing.jsonl", &edited_lines(PROOF, 9, rename));
    let skip = check_bad(
        &path,
        &opts("text", OnError::Fail),
        "line 10",
        9,
        "missing text field 'text'",
    );
    assert_eq!(docs(&skip), total - 1);

    let path = write(
        &dir,
        "number.jsonl",
        &edited_lines(PROOF, 0, |l| *l = b"{\"text\": 42}".to_vec()),
    );
    check_bad(
        &path,
        &opts("text", OnError::Fail),
        "line 1",
        0,
        "'text' is a number",
    );

    // Dotted paths name the full path; proof-pile has meta.file but no meta.body.
    let path = corpora().join(PROOF);
    let skip = check_bad(
        &path,
        &opts("meta.body", OnError::Fail),
        "line 1",
        0,
        "missing text field 'meta.body'",
    );
    assert_eq!(skip.len(), total);
    let got = as_pairs(read_all(&path, &opts("meta.file", OnError::Fail)));
    assert_eq!(got.len(), total);
}

#[test]
fn truncated_files() {
    let dir = tempfile::tempdir().unwrap();
    // Plain JSONL cut in the middle of its last line.
    let data = raw(SKY);
    let lines = expected_jsonl(SKY, None).len();
    let cut = data.len() - 20;
    let path = write(&dir, "cut.jsonl", &data[..cut]);
    let skip = check_bad(
        &path,
        &opts("text", OnError::Fail),
        &format!("line {lines}"),
        lines as u64 - 1,
        "truncated",
    );
    assert_eq!(docs(&skip), lines - 1);

    // A last line without its newline but complete is fine.
    let path = write(&dir, "nonl.jsonl", &data[..data.len() - 1]);
    assert_eq!(
        as_pairs(read_all(&path, &opts("text", OnError::Fail))).len(),
        lines
    );

    // A zstd file cut short.
    let zst = std::fs::read(corpora().join(SLIM0)).unwrap();
    let path = write(&dir, "cut.jsonl.zst", &zst[..zst.len() * 2 / 3]);
    let fail = read_all(&path, &slim_opts(OnError::Fail));
    let n_ok = fail.len() - 1;
    let msg = format!("corrupt zstd stream after line {n_ok}");
    check_bad(
        &path,
        &slim_opts(OnError::Fail),
        &format!("line {}", n_ok + 1),
        n_ok as u64,
        &msg,
    );
}

#[test]
fn corrupt_zstd_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut zst = std::fs::read(corpora().join(SLIM1)).unwrap();
    // Flip a run of bytes in the middle of the frame's compressed blocks.
    let mid = zst.len() / 2;
    for b in &mut zst[mid..mid + 16] {
        *b ^= 0x5a;
    }
    let path = write(&dir, "flipped.jsonl.zst", &zst);
    let skip: Vec<Record> = read_all(&path, &slim_opts(OnError::Skip))
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let Some(Record::Skipped { row, reason }) = skip.last() else {
        panic!("the stream must end with the corruption: {:?}", skip.last());
    };
    assert!(
        reason.starts_with(&format!("corrupt zstd stream after line {row}")),
        "{reason}"
    );
    let expected_lines = expected_jsonl(SLIM1, None).len() as u64;
    assert!(*row < expected_lines);
    check_bad(
        &path,
        &slim_opts(OnError::Fail),
        &format!("line {}", row + 1),
        *row,
        "corrupt zstd stream",
    );
}

#[test]
fn empty_files() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["empty.jsonl", "empty.jsonl.zst", "empty.parquet"] {
        let path = write(&dir, name, b"");
        let location = if name.ends_with("parquet") {
            "row 0"
        } else {
            "line 1"
        };
        let skip = check_bad(
            &path,
            &opts("text", OnError::Fail),
            location,
            0,
            "empty file",
        );
        assert_eq!(skip.len(), 1);
    }
    // A valid zstd frame holding nothing is as empty.
    let path = write(
        &dir,
        "nothing.jsonl.zst",
        &zstd::encode_all(&b""[..], 3).unwrap(),
    );
    check_bad(
        &path,
        &opts("text", OnError::Fail),
        "line 1",
        0,
        "empty file",
    );
    // Blank lines are no records but still count as lines.
    let path = write(&dir, "blank.jsonl", b"\n  \n{\"text\":\"a\"}\n\n");
    let got = as_pairs(read_all(&path, &opts("text", OnError::Fail)));
    assert_eq!(got, vec![(2, Some("a".to_string()))]);
    // A byte-order mark before the first record is not an error.
    let path = write(&dir, "bom.jsonl", b"\xEF\xBB\xBF{\"text\":\"b\"}\n");
    let got = as_pairs(read_all(&path, &opts("text", OnError::Fail)));
    assert_eq!(got, vec![(0, Some("b".to_string()))]);
}

/// A real text of about `n` bytes: skypile's documents repeated.
fn big_text(n: usize) -> String {
    let texts: Vec<String> = expected_jsonl(SKY, None)
        .into_iter()
        .filter_map(|(_, t)| t)
        .collect();
    let mut out = String::with_capacity(n + 4096);
    for t in texts.iter().cycle() {
        if out.len() >= n {
            break;
        }
        out.push_str(t);
        out.push('\n');
    }
    out
}

#[test]
fn giant_line_is_bad_input_and_skipped_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let small = expected_jsonl(SKY, None);
    let line = |t: &str| serde_json::to_string(&serde_json::json!({ "text": t })).unwrap();
    let giant = line(&big_text(20 << 20));
    let mut data = String::new();
    data.push_str(&line(small[0].1.as_ref().unwrap()));
    data.push('\n');
    data.push_str(&giant);
    data.push('\n');
    data.push_str(&line(small[1].1.as_ref().unwrap()));
    data.push('\n');
    let o = SourceOptions {
        max_doc_bytes: 1 << 20,
        ..opts("text", OnError::Fail)
    };
    let msg = format!(
        "document of {} bytes exceeds max_doc_bytes={}",
        giant.len() + 1,
        1 << 20
    );
    let path = write(&dir, "giant.jsonl", data.as_bytes());
    let skip = check_bad(&path, &o, "line 2", 1, &msg);
    assert_eq!(docs(&skip), 2);
    assert_eq!(
        skip[2],
        Record::Doc {
            row: 2,
            text: small[1].1.clone().unwrap()
        }
    );

    let zpath = write(
        &dir,
        "giant.jsonl.zst",
        &zstd::encode_all(data.as_bytes(), 1).unwrap(),
    );
    check_bad(&zpath, &o, "line 2", 1, &msg);

    // The reader's buffer never grew past the cap while skipping the 20 MB line.
    let mut reader = jsonl::JsonlReader::open(
        &Input::local(&path).unwrap(),
        &SourceOptions {
            on_error: OnError::Skip,
            ..o.clone()
        },
        false,
        Progress::new(),
        None,
    )
    .unwrap();
    reader.next();
    reader.next();
    assert!(
        reader.line_capacity() <= (2 << 20),
        "{}",
        reader.line_capacity()
    );

    // A document just over the limit that fits the line cap is measured on its text.
    let over = line(
        &big_text((1 << 20) + 10)
            .chars()
            .take((1 << 20) + 10)
            .collect::<String>(),
    );
    let text_len = serde_json::from_str::<serde_json::Value>(&over).unwrap()["text"]
        .as_str()
        .unwrap()
        .len();
    assert!(over.len() as u64 <= (1 << 20) + LINE_SLACK);
    let path = write(&dir, "over.jsonl", format!("{over}\n").as_bytes());
    check_bad(
        &path,
        &o,
        "line 1",
        0,
        &format!("document of {text_len} bytes exceeds"),
    );
}

#[test]
fn wrong_parquet_schema() {
    let path = corpora().join(STAR);
    let skip = check_bad(&path, &opts("text", OnError::Fail), "schema", 0, "wrong parquet schema: no column 'text'; available columns: max_stars_repo_path, max_stars_repo_name, max_stars_count, id, content");
    assert_eq!(skip.len(), 80, "every row is counted as skipped");
    check_bad(
        &path,
        &opts("max_stars_count", OnError::Fail),
        "schema",
        0,
        "column 'max_stars_count' is INT64",
    );
}

#[test]
fn corrupt_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let data = std::fs::read(corpora().join(STAR)).unwrap();
    // Footer gone: not a parquet file.
    let path = write(&dir, "cut.parquet", &data[..data.len() / 2]);
    check_bad(
        &path,
        &opts("content", OnError::Fail),
        "footer",
        0,
        "not a readable parquet file",
    );

    // Flipped bytes inside the `content` pages of the second row group.
    use ::parquet::file::reader::{FileReader, SerializedFileReader};
    let reader =
        SerializedFileReader::new(std::fs::File::open(corpora().join(STAR)).unwrap()).unwrap();
    let rg0 = reader.metadata().row_group(0).num_rows() as u64;
    let rg1 = reader.metadata().row_group(1);
    let col = rg1
        .columns()
        .iter()
        .find(|c| c.column_path().string() == "content")
        .unwrap();
    let (start, len) = col.byte_range();
    let mut bad = data.clone();
    let mid = (start + len / 2) as usize;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0xa5;
    }
    let path = write(&dir, "flipped.parquet", &bad);
    let skip = check_bad(
        &path,
        &opts("content", OnError::Fail),
        &format!("row {rg0}"),
        rg0,
        "corrupt parquet data in row group 1",
    );
    // The rows of the damaged row group are each counted; the others are read.
    let n_skipped = skip
        .iter()
        .filter(|r| matches!(r, Record::Skipped { .. }))
        .count() as u64;
    assert_eq!(n_skipped, rg1.num_rows() as u64);
    assert_eq!(skip.len(), 80);
}

/// A parquet file (written with the parquet crate) whose optional `content` column holds real
/// code and one null: the null is a bad record at its row.
#[test]
fn parquet_null_text() {
    use ::parquet::data_type::{ByteArray, ByteArrayType};
    use ::parquet::file::properties::WriterProperties;
    use ::parquet::file::writer::SerializedFileWriter;
    use ::parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    let texts: Vec<String> = expected_parquet()
        .into_iter()
        .take(5)
        .map(|(c, _)| c)
        .collect();
    let schema = parse_message_type(
        "message schema { optional binary id (UTF8); optional binary content (UTF8); }",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nulls.parquet");
    let file = std::fs::File::create(&path).unwrap();
    let mut writer = SerializedFileWriter::new(
        file,
        Arc::new(schema),
        Arc::new(WriterProperties::builder().build()),
    )
    .unwrap();
    let mut group = writer.next_row_group().unwrap();
    // Row 3 of `content` is null.
    let def = [1i16, 1, 1, 0, 1, 1];
    let ids: Vec<ByteArray> = (0..6)
        .map(|i| ByteArray::from(format!("id{i}").as_str()))
        .collect();
    let contents: Vec<ByteArray> = texts.iter().map(|t| ByteArray::from(t.as_str())).collect();
    for values in [&ids, &contents] {
        let mut col = group.next_column().unwrap().unwrap();
        let levels = if values.len() == 6 { [1i16; 6] } else { def };
        col.typed::<ByteArrayType>()
            .write_batch(values, Some(&levels), None)
            .unwrap();
        col.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();

    let skip = check_bad(
        &path,
        &opts("content", OnError::Fail),
        "row 3",
        3,
        "null value in text column 'content'",
    );
    let got: Vec<Record> = skip;
    let mut want: Vec<Record> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Record::Doc {
            row: if i < 3 { i as u64 } else { i as u64 + 1 },
            text: t.clone(),
        })
        .collect();
    want.insert(3, got[3].clone());
    assert_eq!(got, want);
}

// ---------------------------------------------------------------- digests

fn sha256_of(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// A stream reader read to its end has hashed every byte of the file (no second read); one
/// stopped early has not, and says so; `Input::sha256` is the one-pass fallback.
#[test]
fn a_stream_read_to_its_end_gives_the_file_digest() {
    for rel in [SLIM0, SKY] {
        let path = corpora().join(rel);
        let input = Input::local(&path).unwrap();
        let digest = Digest::default();
        let (mut records, _) = open_input(
            &input,
            &slim_opts(OnError::Fail),
            &Progress::new(),
            Some(digest.clone()),
        )
        .unwrap();
        records.next().unwrap().unwrap();
        assert_eq!(
            digest.complete(input.size),
            None,
            "{rel}: read one line only"
        );
        assert!(records.count() > 0);
        assert_eq!(digest.complete(input.size), Some(sha256_of(&path)), "{rel}");
        assert_eq!(input.sha256().unwrap(), sha256_of(&path), "{rel}");
    }
}
