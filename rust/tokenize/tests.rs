//! Parity of the fast path with the `tokenizers` crate (the same code as the Python package)
//! on every document of the committed real-data slice, plus hand-picked hard strings.

use super::*;
use std::io::BufRead;
use std::path::PathBuf;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tests/data")
}

fn tok_path() -> PathBuf {
    data_dir().join("tokenizers/llama2/tokenizer.json.zst")
}

fn load() -> Tokenizer {
    let t = Tokenizer::from_file(&tok_path()).expect("test tokenizer loads");
    assert!(t.fast.is_some(), "fast path off: {:?}", t.slow_reason);
    t
}

fn json_bytes() -> Vec<u8> {
    zstd::decode_all(std::fs::read(tok_path()).expect("read").as_slice()).expect("zstd")
}

/// Every document of the slice: the `text` of each JSON line, the `content` of each parquet row.
fn slice_docs() -> Vec<String> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(data_dir().join("corpora"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let name = f.to_string_lossy().to_string();
        if name.ends_with(".parquet") {
            use parquet::file::reader::{FileReader, SerializedFileReader};
            use parquet::record::RowAccessor;
            let file = std::fs::File::open(&f).expect("open parquet");
            let reader = SerializedFileReader::new(file).expect("parquet reader");
            let schema = reader.metadata().file_metadata().schema_descr_ptr();
            let col = (0..schema.num_columns())
                .find(|&i| schema.column(i).name() == "content")
                .expect("content column");
            for row in reader.get_row_iter(None).expect("rows") {
                docs.push(row.expect("row").get_string(col).expect("content").clone());
            }
        } else if name.ends_with(".jsonl") || name.ends_with(".jsonl.zst") {
            let bytes = std::fs::read(&f).expect("read corpus");
            let bytes = if name.ends_with(".zst") {
                zstd::decode_all(bytes.as_slice()).expect("zstd corpus")
            } else {
                bytes
            };
            for line in bytes.lines() {
                let line = line.expect("utf-8 line");
                let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
                docs.push(v["text"].as_str().expect("text field").to_string());
            }
        }
    }
    assert!(docs.len() > 100, "slice has {} docs", docs.len());
    docs
}

fn tricky() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        " ",
        "  ",
        "a",
        "Hello world",
        " leading space",
        "   three leading",
        "trailing space ",
        "multiple   spaces    here",
        "tab\there\t\tand\n\nnewlines\r\n",
        "\n",
        "\n\nstarts with newlines",
        "<s>",
        "</s>",
        "<unk>",
        "<s>Hello</s>",
        "a<s>b",
        "a <s> b",
        " <s> ",
        "<s><s></s>",
        "<s <s>> </s</s>",
        "<<s>>",
        "literal ▁ mark ▁▁ and▁ ▁x",
        "▁",
        "▁▁▁",
        "emoji 😀🎉 👩‍👩‍👧 and flags 🇫🇷",
        "rare CJK 𠀋𡈽𡌛 and common 中文字符 ",
        "combining e\u{301} a\u{308} \u{300}\u{301}",
        "zero\u{200b}width\u{feff}bom",
        "\u{0}\u{1}\u{7f} controls",
        "nbsp\u{a0}here\u{3000}ideographic",
        "ǅ ﬁ Ⅻ ① ㎏",
        "x ▁y",
        "def f(x):\n    return x  # comment\n\tpass\n",
        "مرحبا بالعالم",
        "Привет, мир!",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("a".repeat(5000));
    v.push(" ".repeat(300));
    v.push("中".repeat(3000));
    v.push("😀".repeat(500));
    v
}

fn assert_parity(t: &Tokenizer, docs: &[String]) {
    for (i, d) in docs.iter().enumerate() {
        for special in [false, true] {
            let fast = t.encode(d, special).expect("encode");
            let slow = t.encode_slow(d, special).expect("slow encode");
            assert!(
                fast == slow,
                "doc {i} (add_special_tokens={special}, {} bytes, starts {:?}) differs",
                d.len(),
                d.chars().take(60).collect::<String>()
            );
        }
    }
}

#[test]
fn parity_on_slice() {
    let t = load();
    assert_parity(&t, &slice_docs());
}

#[test]
fn parity_on_tricky_strings() {
    let t = load();
    assert_parity(&t, &tricky());
}

#[test]
fn parity_on_a_5mb_document() {
    let t = load();
    let docs = slice_docs();
    let mut big = String::new();
    let mut k = 0;
    while big.len() < 5 << 20 {
        big.push_str(&docs[k % docs.len()]);
        big.push_str(if k % 7 == 0 { "</s><s>" } else { "\n" });
        k += 37;
    }
    // Also one long stretch with no hard boundary at all.
    big.push_str(&"字".repeat(400_000));
    let fast = t.encode(&big, true).expect("encode");
    let slow = t.encode_slow(&big, true).expect("slow");
    assert_eq!(fast.len(), slow.len());
    assert!(fast == slow, "5 MB document differs");
}

#[test]
fn batch_is_ordered_and_thread_count_independent() {
    let t = load();
    let docs = slice_docs();
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
            .install(|| t.encode_batch(&refs, false).expect("batch"))
    };
    let one = run(1);
    assert_eq!(one, run(3));
    for (d, ids) in refs.iter().zip(&one).step_by(97) {
        assert_eq!(&t.encode(d, false).expect("encode"), ids);
    }
}

#[test]
fn special_ids_bos_and_decode() {
    let t = load();
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.eos_id(), Some(2));
    assert_eq!(t.vocab_size(), 32000);
    let ids = t.encode("Hello world", true).expect("encode");
    assert_eq!(ids[0], 1);
    assert_eq!(&ids[1..], t.encode("Hello world", false).expect("encode"));
    assert_eq!(t.decode(&ids, true).expect("decode"), "Hello world");
    assert!(t.encode("", false).expect("encode").is_empty());
    assert_eq!(t.encode("", true).expect("encode"), vec![1]);
}

#[test]
fn zst_and_plain_have_the_same_fingerprint() {
    let dir = tempfile::tempdir().expect("tmp");
    let plain = dir.path().join("tokenizer.json");
    std::fs::write(&plain, json_bytes()).expect("write");
    let a = Tokenizer::from_file(&plain).expect("plain");
    let b = load();
    assert_eq!(a.sha256(), b.sha256());
    assert_eq!(a.sha256().len(), 64);
    assert_eq!(
        a.encode("same ids either way", false).expect("a"),
        b.encode("same ids either way", false).expect("b")
    );
}

#[test]
fn missing_and_garbage_files_name_the_path() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("nope.json");
    let err = Tokenizer::from_file(&missing)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("nope.json") && err.contains("cannot read"),
        "{err}"
    );

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, b"{not json").expect("write");
    let err = Tokenizer::from_file(&garbage).err().expect("must fail");
    assert!(matches!(err, Error::Tokenizer { .. }));
    assert!(err.to_string().contains("garbage.json"), "{err}");

    let bad_zst = dir.path().join("bad.json.zst");
    let mut bytes = ZSTD_MAGIC.to_vec();
    bytes.extend_from_slice(b"truncated");
    std::fs::write(&bad_zst, bytes).expect("write");
    let err = Tokenizer::from_file(&bad_zst)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("bad.json.zst") && err.contains("zstd"),
        "{err}"
    );
}

/// Edit the test tokenizer's JSON and load the result.
fn with_edit(edit: impl FnOnce(&mut serde_json::Value)) -> Tokenizer {
    let mut v: serde_json::Value = serde_json::from_slice(&json_bytes()).expect("json");
    edit(&mut v);
    let bytes = serde_json::to_vec(&v).expect("to json");
    Tokenizer::from_json_bytes(&bytes, Path::new("edited.json")).expect("edited loads")
}

#[test]
fn a_merge_across_a_space_boundary_disables_the_fast_path() {
    let t = with_edit(|v| {
        v["model"]["vocab"]["s▁"] = serde_json::json!(32000);
        let merges = v["model"]["merges"].as_array_mut().expect("merges");
        merges.insert(0, serde_json::json!(["s", "▁"]));
    });
    assert!(t.fast.is_none());
    assert!(t.slow_reason.as_deref().unwrap_or("").contains("crosses"));
    // Still encodes (through the crate), and the new merge is used.
    let ids = t.encode("is it", false).expect("encode");
    assert!(ids.contains(&32000), "{ids:?}");
}

#[test]
fn other_shapes_fall_back_to_the_crate() {
    let t = with_edit(|v| {
        v["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
    });
    assert!(t.fast.is_none());
    let docs = tricky();
    for d in &docs {
        let direct = t.inner.encode_fast(d.as_str(), false).expect("crate");
        assert_eq!(t.encode(d, false).expect("encode"), direct.get_ids());
    }
    let t = with_edit(|v| v["added_tokens"][1]["normalized"] = serde_json::json!(true));
    assert!(t.fast.is_none());
    assert_eq!(t.bos_id(), Some(1));
}
