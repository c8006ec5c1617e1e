//! `decontaminate` filter: drop a training document that shares an n-gram with an item of an
//! evaluation task, with the reason `decontaminated: <task>#<item>: "<the n-gram>"`.
//!
//! Settings: `paths` (absolute paths of task files; the Python spec layer resolves them) and
//! `ngram` (n, default 13, as in GPT-3's and lm-eval's decontamination). The recorded
//! settings ([`DocFilter::settings`]) name each file by its file name, task and sha256, never
//! by its path, so a locked mix stays relocatable and still says exactly what it was cleaned
//! against.
//!
//! Files: `.jsonl` / `.json` (one object a line, or one JSON array), the same zstd-compressed
//! (`.zst`), or `.parquet`: the local task files `tinyllama eval --tasks` reads
//! (`DATA_DIR/<task>/<split>.jsonl`, in the Hugging Face dataset's schema; docs/eval.md) and
//! any file whose records have a `text` field. Task name: the file's stem, or, when the stem
//! is a split name (`train`, `validation`, `val`, `dev`, `test`), its folder's name
//! (`hellaswag/validation.jsonl` -> `hellaswag`). Item number: the record's 0-based index in
//! the file (lm_eval's `doc_id`).
//!
//! Which text of an item is indexed (the first rule whose fields the record has):
//!
//! ```text
//! text                         text                                  (any corpus-like file)
//! ctx + endings                ctx ⊕ each ending                     (hellaswag)
//! context + choices            context ⊕ each choice                 (tinyllama's own tasks)
//! question + choices[.text]    question ⊕ each choice                (arc_*, mmlu-like)
//! question_stem + choices.text question_stem ⊕ each choice           (openbookqa)
//! goal + sol1, sol2            goal ⊕ sol1, goal ⊕ sol2              (piqa)
//! sentence + option1, option2  sentence with `_` replaced by each    (winogrande)
//! passage + question           passage; question                     (boolq)
//! ```
//!
//! Each line of the right column is one *passage*; n-grams never span two passages. `p ⊕ c`
//! is two passages, `p + " " + c` and `p + c`: lm_eval joins prompt and answer with the
//! task's `target_delimiter`, a space by default and nothing in some tasks (ours), and the
//! two spellings normalise differently when neither side has the space. A prompt is always
//! indexed together with an answer, so a one-word answer ("yes") never stands alone.
//!
//! Normalisation (both sides): lowercase; a character that is neither a letter, a digit nor
//! whitespace (Unicode's Alphabetic / Numeric properties, Rust's `char::is_alphanumeric`:
//! letters, digits, also circled letters such as `ⓒ` and vowel signs) is deleted (lm-eval's janitor deletes punctuation too: `U.S.` = `US`, `don't`
//! = `dont`); whitespace splits words; a Han ideograph or kana is a word on its own, since
//! Chinese and Japanese put no spaces between words (13 characters then make an n-gram).
//! Every n consecutive words of a passage are indexed (128-bit hash -> first task and item
//! that has it, in file then record order); a passage shorter than n words contributes its
//! whole normalised text as one n-gram, which a document must then contain word for word
//! (so a `text` item of one word would drop every document holding that word: point `paths`
//! at benchmark items, not at word lists). Word for word means whole words: an item cut in
//! the middle of a word (our continuation task cuts at tokens) matches only up to its last
//! whole word, which for a short item means not at all.
//!
//! Judging: the document is normalised the same way and its windows are looked up from its
//! start; at each position the n-word window first, then the lengths of the short passages,
//! shortest first. The first hit names the reason, so the reason is a pure function of the
//! text and the files.

use super::{DocFilter, Params};
use crate::error::{Error, IoContext, Result};
use ahash::AHashMap;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use xxhash_rust::xxh3::xxh3_128;

/// Stems that name a split, not a task: the task is then the folder's name.
const SPLIT_NAMES: [&str; 5] = ["train", "validation", "val", "dev", "test"];

/// Words of a normalised text: `text` is the words joined by single spaces; `spans` their byte
/// ranges in it, so any run of words is one slice of `text`.
#[derive(Debug, Default, PartialEq)]
pub struct Words {
    pub text: String,
    pub spans: Vec<(usize, usize)>,
}

impl Words {
    pub fn len(&self) -> usize {
        self.spans.len()
    }
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
    /// Words `i .. i + k`, joined by single spaces.
    pub fn run(&self, i: usize, k: usize) -> &str {
        &self.text[self.spans[i].0..self.spans[i + k - 1].1]
    }
}

/// Han ideographs (with extensions and compatibility forms) and kana: scripts written without
/// spaces, so each character is a word.
pub(super) fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // hiragana, katakana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // compatibility ideographs
        | 0x20000..=0x3134F) // extensions B..G
}

/// Lowercase, delete everything but letters, digits and whitespace, split on whitespace, and
/// make each Han / kana character a word.
pub fn normalise(text: &str) -> Words {
    let mut w = Words {
        text: String::with_capacity(text.len()),
        spans: Vec::new(),
    };
    let mut start: Option<usize> = None;
    let close = |w: &mut Words, start: &mut Option<usize>| {
        if let Some(s) = start.take() {
            w.spans.push((s, w.text.len()));
        }
    };
    for c in text.chars() {
        if c.is_whitespace() {
            close(&mut w, &mut start);
        } else if c.is_alphanumeric() {
            let cjk = is_cjk(c);
            if cjk {
                close(&mut w, &mut start);
            }
            if start.is_none() {
                if !w.text.is_empty() {
                    w.text.push(' ');
                }
                start = Some(w.text.len());
            }
            w.text.extend(c.to_lowercase());
            if cjk {
                close(&mut w, &mut start);
            }
        }
        // Anything else (punctuation, symbols, marks) is deleted without splitting the word.
    }
    close(&mut w, &mut start);
    w
}

/// One task file as recorded in the lock.
#[derive(Debug, Clone)]
struct TaskFile {
    name: String,
    task: String,
    sha256: String,
    items: usize,
}

/// The `decontaminate` filter: the n-gram index of every item of every task file.
pub struct Decontaminate {
    n: usize,
    tasks: Vec<String>,
    /// n-gram hash -> (task index, item index) of the first item that has it.
    index: AHashMap<u128, (u32, u32)>,
    /// Word counts (< n) of short passages, ascending: the other window lengths to look up.
    short: Vec<usize>,
    files: Vec<TaskFile>,
}

impl Decontaminate {
    pub fn new(params: &Value) -> Result<Self> {
        let mut p = Params::new("decontaminate", params)?;
        let paths = p.strings("paths", &[])?;
        let n = p.usize("ngram", 13)?;
        p.finish()?;
        if n == 0 {
            return Err(Error::Spec(
                "filters.decontaminate.ngram: expected a whole number >= 1".into(),
            ));
        }
        if paths.is_empty() {
            return Err(Error::Spec(
                "filters.decontaminate.paths: expected at least one task file".into(),
            ));
        }
        let mut d = Decontaminate {
            n,
            tasks: Vec::new(),
            index: AHashMap::new(),
            short: Vec::new(),
            files: Vec::new(),
        };
        for path in &paths {
            d.add_file(Path::new(path))?;
        }
        d.short.sort_unstable();
        d.short.dedup();
        Ok(d)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let shown = path.display();
        if !path.is_absolute() {
            return Err(Error::Spec(format!(
                "filters.decontaminate.paths: {shown}: expected an absolute path (the spec \
                 layer resolves relative ones)"
            )));
        }
        if !path.is_file() {
            return Err(Error::Spec(format!(
                "filters.decontaminate.paths: {shown}: no such file"
            )));
        }
        let bytes = std::fs::read(path).ctx(path)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let task = task_name(path);
        let records = read_records(path, &name, bytes)?;
        let task_ix = self.tasks.len() as u32;
        for (item, (location, record)) in records.iter().enumerate() {
            let passages = passages(record).ok_or_else(|| {
                Error::input(
                    path,
                    location.clone(),
                    "no text field (expected `text`, or a task schema: ctx+endings, \
                     context+choices, question+choices, question_stem+choices, goal+sol1+sol2, \
                     sentence+option1+option2, passage+question)",
                )
            })?;
            for passage in passages {
                self.index_passage(&passage, task_ix, item as u32);
            }
        }
        self.tasks.push(task.clone());
        self.files.push(TaskFile {
            name,
            task,
            sha256,
            items: records.len(),
        });
        Ok(())
    }

    fn index_passage(&mut self, passage: &str, task: u32, item: u32) {
        let words = normalise(passage);
        let (k, windows) = if words.len() >= self.n {
            (self.n, words.len() - self.n + 1)
        } else if !words.is_empty() {
            self.short.push(words.len());
            (words.len(), 1)
        } else {
            return;
        };
        for i in 0..windows {
            let h = xxh3_128(words.run(i, k).as_bytes());
            self.index.entry(h).or_insert((task, item));
        }
    }

    /// The first (task, item, n-gram) `text` shares with the index, in document order.
    pub fn first_hit(&self, text: &str) -> Option<(&str, u32, String)> {
        let words = normalise(text);
        for i in 0..words.len() {
            let left = words.len() - i;
            let lens = std::iter::once(self.n).chain(self.short.iter().copied());
            for k in lens.filter(|&k| k <= left) {
                let gram = words.run(i, k);
                if let Some(&(task, item)) = self.index.get(&xxh3_128(gram.as_bytes())) {
                    return Some((&self.tasks[task as usize], item, gram.to_string()));
                }
            }
        }
        None
    }
}

impl DocFilter for Decontaminate {
    fn name(&self) -> &str {
        "decontaminate"
    }

    fn judge(&self, text: &str) -> Option<String> {
        self.first_hit(text)
            .map(|(task, item, gram)| format!("decontaminated: {task}#{item}: \"{gram}\""))
    }

    fn settings(&self) -> Value {
        let files: Vec<Value> = self
            .files
            .iter()
            .map(|f| json!({"name": f.name, "task": f.task, "sha256": f.sha256, "items": f.items}))
            .collect();
        json!({"files": files, "ngram": self.n})
    }
}

/// `hellaswag/validation.jsonl` -> `hellaswag`; `continuation.jsonl` -> `continuation`.
fn task_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.split('.').next().unwrap_or_default().to_string();
    if SPLIT_NAMES.contains(&stem.to_ascii_lowercase().as_str()) {
        if let Some(dir) = path.parent().and_then(Path::file_name) {
            return dir.to_string_lossy().into_owned();
        }
    }
    stem
}

/// Every record of a task file with its location (`line N`, `item N`, `row N`) for errors.
fn read_records(path: &Path, name: &str, bytes: Vec<u8>) -> Result<Vec<(String, Value)>> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".parquet") {
        return read_parquet(path);
    }
    let bytes = if lower.ends_with(".zst") {
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(bytes.as_slice())
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(|e| Error::input(path, "zstd", e.to_string()))?;
        out
    } else if lower.ends_with(".jsonl") || lower.ends_with(".json") {
        bytes
    } else {
        return Err(Error::Spec(format!(
            "filters.decontaminate.paths: {}: unsupported file type (expected .jsonl, .json, \
             .jsonl.zst, .json.zst or .parquet)",
            path.display()
        )));
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| Error::input(path, "file", format!("invalid UTF-8: {e}")))?;
    if text.trim_start().starts_with('[') {
        // One JSON array of records (what `datasets.Dataset.to_json(lines=False)` writes).
        let all: Vec<Value> = serde_json::from_str(text)
            .map_err(|e| Error::input(path, "file", format!("invalid JSON array: {e}")))?;
        return Ok(all
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("item {i}"), v))
            .collect());
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| Error::input(path, format!("line {}", i + 1), e.to_string()))?;
        out.push((format!("line {}", i + 1), v));
    }
    Ok(out)
}

fn read_parquet(path: &Path) -> Result<Vec<(String, Value)>> {
    use parquet::file::reader::FileReader;
    use parquet::file::serialized_reader::SerializedFileReader;
    let file = std::fs::File::open(path).ctx(path)?;
    // The parquet crate asserts on some malformed files: a panic here is bad input, not a bug.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let reader = SerializedFileReader::new(file).map_err(|e| ("footer".to_string(), e))?;
        let mut rows = Vec::new();
        for (i, row) in reader
            .get_row_iter(None)
            .map_err(|e| ("schema".to_string(), e))?
            .enumerate()
        {
            let row = row.map_err(|e| (format!("row {i}"), e))?;
            rows.push((format!("row {i}"), row_json(&row)));
        }
        Ok(rows)
    }));
    match read {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err((location, e))) => Err(Error::input(path, location, e.to_string())),
        Err(_) => Err(Error::input(path, "file", "corrupt parquet file")),
    }
}

/// The parts of a parquet row the passage rules read: strings, lists and groups (a struct
/// column such as arc's `choices`); every other value becomes `null`.
fn row_json(row: &parquet::record::Row) -> Value {
    use parquet::record::Field;
    fn field(f: &Field) -> Value {
        match f {
            Field::Str(s) => Value::String(s.clone()),
            Field::Group(r) => row_json(r),
            Field::ListInternal(l) => Value::Array(l.elements().iter().map(field).collect()),
            _ => Value::Null,
        }
    }
    Value::Object(
        row.get_column_iter()
            .map(|(k, v)| (k.clone(), field(v)))
            .collect(),
    )
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A list of strings, or an object whose `text` is one (`choices` of arc / openbookqa).
fn str_list(v: &Value, key: &str) -> Option<Vec<String>> {
    let v = v.get(key)?;
    let list = match v {
        Value::Object(m) => m.get("text")?,
        other => other,
    };
    list.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// `p + " " + c` and `p + c` for each choice (see the module docs).
fn joined(prompt: &str, choices: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(2 * choices.len());
    for c in choices {
        out.push(format!("{prompt} {c}"));
        out.push(format!("{prompt}{c}"));
    }
    if choices.is_empty() {
        out.push(prompt.to_string());
    }
    out
}

/// The passages of one task item, by the table in the module docs; `None`: no rule fits.
fn passages(r: &Value) -> Option<Vec<String>> {
    if let Some(t) = str_field(r, "text") {
        return Some(vec![t.to_string()]);
    }
    if let (Some(ctx), Some(endings)) = (str_field(r, "ctx"), str_list(r, "endings")) {
        return Some(joined(ctx, &endings));
    }
    for prompt in ["context", "question", "question_stem"] {
        if let (Some(p), Some(choices)) = (str_field(r, prompt), str_list(r, "choices")) {
            return Some(joined(p, &choices));
        }
    }
    if let (Some(goal), Some(a), Some(b)) = (
        str_field(r, "goal"),
        str_field(r, "sol1"),
        str_field(r, "sol2"),
    ) {
        return Some(joined(goal, &[a.to_string(), b.to_string()]));
    }
    if let (Some(s), Some(a), Some(b)) = (
        str_field(r, "sentence"),
        str_field(r, "option1"),
        str_field(r, "option2"),
    ) {
        return Some(vec![s.replacen('_', a, 1), s.replacen('_', b, 1)]);
    }
    if let (Some(passage), Some(q)) = (str_field(r, "passage"), str_field(r, "question")) {
        return Some(vec![passage.to_string(), q.to_string()]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn words(t: &str) -> Vec<String> {
        let w = normalise(t);
        (0..w.len()).map(|i| w.run(i, 1).to_string()).collect()
    }

    #[test]
    fn normalise_lowercases_deletes_punctuation_and_splits_cjk() {
        assert_eq!(
            words("The U.S. isn't  \"big\",\tok?"),
            ["the", "us", "isnt", "big", "ok"]
        );
        assert_eq!(
            words("9.5.17. 使用符号 link"),
            ["9517", "使", "用", "符", "号", "link"]
        );
        assert_eq!(words("  ...  "), Vec::<String>::new());
        let w = normalise("A b, C d!");
        assert_eq!(w.text, "a b c d");
        assert_eq!(w.run(1, 3), "b c d");
    }

    fn write(dir: &Path, rel: &str, body: &str) -> String {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::File::create(&p)
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        p.to_string_lossy().into_owned()
    }

    const ITEM: &str = "A man is sitting on a roof. He starts pulling up roofing on a roof";

    fn tasks(dir: &Path) -> Vec<String> {
        let hs = json!({"ctx": ITEM, "endings": [" and nails it down.", " and eats lunch."]});
        let piqa = json!({"goal": "How do I open a jar?", "sol1": "Use a towel.", "sol2": "Cry."});
        let wino = json!({"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
                          "option1": "Sarah", "option2": "Maria"});
        vec![
            write(
                dir,
                "hellaswag/validation.jsonl",
                &format!("{}\n{}\n", json!({"ctx": "x", "endings": ["y"]}), hs),
            ),
            write(dir, "piqa/validation.jsonl", &format!("{piqa}\n")),
            write(dir, "winogrande.json", &format!("[{wino}]")),
        ]
    }

    #[test]
    fn drops_shared_ngrams_names_task_and_item() {
        let dir = tempfile::tempdir().unwrap();
        let paths = tasks(dir.path());
        let f = Decontaminate::new(&json!({"paths": paths})).unwrap();
        // Verbatim inside a longer document.
        let doc = format!("Some intro text here. {ITEM} and nails it down. The end.");
        let reason = f.judge(&doc).unwrap();
        assert_eq!(
            reason,
            "decontaminated: hellaswag#1: \"a man is sitting on a roof he starts pulling up roofing on\""
        );
        // Case and punctuation changed.
        let doc = "blah: A MAN -- is sitting on a roof!! he starts, pulling UP roofing on a roof.";
        assert!(f
            .judge(doc)
            .unwrap()
            .starts_with("decontaminated: hellaswag#1: "));
        // Short passage (goal + solution, 9 words): matches only as a whole.
        let doc = "Q: how do I open a jar? Use a towel. Works every time.";
        assert_eq!(
            f.judge(doc).unwrap(),
            "decontaminated: piqa#0: \"how do i open a jar use a towel\""
        );
        assert_eq!(f.judge("How do I open a jar? No idea."), None);
        // Winogrande: the sentence with the blank filled.
        let doc =
            "Sarah was a much better surgeon than Maria so Maria always got the harder cases.";
        assert!(f
            .judge(doc)
            .unwrap()
            .starts_with("decontaminated: winogrande#0: "));
        // 12 shared words is not 13.
        assert_eq!(
            f.judge("a man is sitting on a roof he starts pulling up roofing and more"),
            None
        );
        // Relocatable settings: names and hashes, no paths.
        let s = f.settings();
        assert_eq!(s["ngram"], 13);
        assert_eq!(s["files"][0]["task"], "hellaswag");
        assert_eq!(s["files"][0]["name"], "validation.jsonl");
        assert_eq!(s["files"][0]["items"], 2);
        assert_eq!(s["files"][0]["sha256"].as_str().unwrap().len(), 64);
        assert!(!s.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn ngram_setting_changes_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let paths = tasks(dir.path());
        let f = Decontaminate::new(&json!({"paths": paths, "ngram": 5})).unwrap();
        assert!(f
            .judge("nothing but: pulling up roofing on a. fine")
            .is_some());
        assert_eq!(f.judge("pulling up roofing on nothing"), None);
    }

    #[test]
    fn errors_name_the_file_or_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.jsonl").display().to_string();
        let err = Decontaminate::new(&json!({"paths": [missing]}))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("filters.decontaminate.paths"),
            "{err}"
        );
        assert!(err.to_string().contains(&missing), "{err}");
        let bad = write(
            dir.path(),
            "bad.jsonl",
            "{\"text\": \"ok\"}\n{\"label\": 1}\n",
        );
        let err = Decontaminate::new(&json!({"paths": [bad]})).err().unwrap();
        assert!(matches!(err, Error::Input { .. }), "{err}");
        assert!(err.to_string().contains(&bad) && err.to_string().contains("line 2"));
        let broken = write(dir.path(), "broken.jsonl", "{\"text\": \n");
        let err = Decontaminate::new(&json!({"paths": [broken]}))
            .err()
            .unwrap();
        assert!(err.to_string().contains(&broken), "{err}");
        let pq = write(dir.path(), "t.parquet", "not parquet");
        let err = Decontaminate::new(&json!({"paths": [pq]})).err().unwrap();
        assert!(err.to_string().contains(&pq), "{err}");
        for (params, key) in [
            (
                json!({"paths": ["rel.jsonl"]}),
                "filters.decontaminate.paths",
            ),
            (json!({}), "filters.decontaminate.paths"),
            (
                json!({"paths": [bad], "ngram": 0}),
                "filters.decontaminate.ngram",
            ),
            (
                json!({"paths": [bad], "ngram": -1}),
                "filters.decontaminate.ngram",
            ),
            (json!({"paths": [bad], "n": 3}), "filters.decontaminate.n"),
        ] {
            let err = Decontaminate::new(&params).err().unwrap().to_string();
            assert!(err.contains(key), "{params}: {err}");
        }
    }

    #[test]
    fn reads_zstd_and_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let body = format!("{}\n", json!({"text": ITEM}));
        let zst = dir.path().join("items.jsonl.zst");
        std::fs::write(&zst, zstd::encode_all(body.as_bytes(), 3).unwrap()).unwrap();
        let f = Decontaminate::new(&json!({"paths": [zst]})).unwrap();
        assert!(f
            .judge(ITEM)
            .unwrap()
            .starts_with("decontaminated: items#0: "));
        // The test slice's starcoderdata file: a parquet whose rows have `content`, no `text`.
        let pq = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/tests/data/corpora/starcoderdata/python/train-00000-of-00004.parquet"
        );
        let err = Decontaminate::new(&json!({"paths": [pq]})).err().unwrap();
        assert!(
            matches!(err, Error::Input { .. }) && err.to_string().contains("row 0"),
            "{err}"
        );
    }
}
