//! English words and sentences exactly as datatrove splits them: datatrove's English word
//! tokenizer is spaCy's blank `en` tokenizer (`SpaCyTokenizer("en")`, its sentences from the
//! `sentencizer` pipe), so this is a port of spaCy's `Tokenizer.__call__` (whitespace spans,
//! then special cases, prefixes, suffixes, URL match, infixes) and `Sentencizer.predict`.
//!
//! Contract: [`tokens`] returns the byte ranges of spaCy's tokens, whitespace tokens
//! included; [`words`] is datatrove's `split_into_words` (the tokens that are not only
//! whitespace); [`sentences`] is datatrove's `split_into_sentences` ([`count_sentences`] its
//! length). The rules are spaCy's own and are not part of this repository: they are read at
//! run time ([`load`]) from a folder that `tinyllama/data/word_rules.py` writes from the
//! installed spaCy and datatrove (regexes rewritten only in their `\u` escapes, the special
//! cases verbatim, datatrove's punctuation sets) together with Python's character predicates
//! (`str.isspace`, `str.isalpha`, category P), so decisions match CPython's Unicode tables.
//! A heuristic filter cannot be built before they are loaded ([`require`]); the lock records
//! their digest ([`digest`]), so another spaCy is another build.
//! spaCy's second pass (`_apply_special_cases`: special cases that the affix rules split
//! over several tokens, like `IS''` or `word:)`, are merged back) is ported too.
//! A thread-local cache keeps each distinct span's split (as spaCy itself caches), which
//! changes speed only: the split is a pure function of the span. Measured: identical words to
//! datatrove's `split_into_words` on all 16,587 docs (4.83 M tokens) of the English shared
//! corpus; the parity test (python/tests/test_filters.py) keeps the filters honest.

use crate::error::{Error, Result};
use ahash::AHashMap;
use regex::Regex;
use std::cell::RefCell;
use std::path::Path;
use std::sync::OnceLock;

/// The files of a rules folder (what `word_rules.py` writes).
const FILES: [&str; 7] = [
    "tables.json",
    "specials.jsonl",
    "punct_chars.json",
    "prefix.re",
    "suffix.re",
    "infix.re",
    "url.re",
];

// Set once per process by `load`, in this order (the rules are built with the tables);
// `DIGEST` last, so it says both are there.
static TABLES: OnceLock<Tables> = OnceLock::new();
static RULES: OnceLock<Rules> = OnceLock::new();
static DIGEST: OnceLock<String> = OnceLock::new();
static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Load the English word rules from `dir` (once per process; loading the same rules again is
/// a no-op, other rules are refused). Returns their digest: xxh3-128 over the files, in hex.
pub fn load(dir: &Path) -> Result<String> {
    let mut texts = Vec::with_capacity(FILES.len());
    let mut bytes = Vec::new();
    for name in FILES {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::io(
                &path,
                format!("{e} (the English word rules: see tinyllama/data/word_rules.py)"),
            )
        })?;
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(0);
        texts.push(text);
    }
    let digest = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes));
    let _one_at_a_time = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(done) = DIGEST.get() {
        if *done == digest {
            return Ok(digest);
        }
        return Err(Error::Usage(format!(
            "{}: other English word rules ({digest}) than the ones this process loaded ({done})",
            dir.display()
        )));
    }
    let damaged = |e: String| {
        Error::io(
            dir,
            format!("damaged English word rules ({e}): delete the folder, it is rewritten"),
        )
    };
    if TABLES.get().is_none() {
        let _ = TABLES.set(tables_from(&texts[0]).map_err(damaged)?);
    }
    // Malformed files (a damaged cache) must not panic across the FFI boundary.
    let rules = std::panic::catch_unwind(|| rules_from(&texts[1..]))
        .unwrap_or_else(|_| Err("a rule does not compile".into()))
        .map_err(damaged)?;
    let _ = RULES.set(rules);
    let _ = DIGEST.set(digest.clone());
    Ok(digest)
}

/// The loaded rules' digest, if loaded.
pub fn digest() -> Option<&'static str> {
    DIGEST.get().map(String::as_str)
}

/// What a heuristic filter's constructor checks first: the rules are loaded.
pub fn require(filter: &str) -> Result<&'static str> {
    digest().ok_or_else(|| {
        Error::Spec(format!(
            "filters.{filter}: needs the English word rules (spaCy's tokenizer rules and \
             datatrove's punctuation), which are read from the installed spaCy and datatrove: \
             install the `filters` extra (pip install 'tinyllama-forge[filters]')"
        ))
    })
}

struct Rules {
    prefix: Prefix,
    suffix: Suffix,
    infix: Infix,
    url: Url,
    /// special case -> byte lengths of its tokens
    specials: AHashMap<String, Vec<u32>>,
    punct_chars: Vec<char>,
    /// spaCy's `_special_matcher`: the special cases that contain an affix, as the token
    /// sequence the affix rules alone make of them, indexed by their first token.
    matcher: AHashMap<String, Vec<Vec<String>>>,
    /// Split without special cases (spaCy's `with_special_cases=False`), to build `matcher`.
    no_specials: bool,
}

/// Sorted, inclusive code point ranges of one of Python's character predicates.
pub(crate) struct CharTable(Vec<(u32, u32)>);

impl CharTable {
    fn from_json(v: &serde_json::Value) -> Self {
        let ranges = v
            .as_array()
            .expect("table")
            .iter()
            .map(|r| {
                (
                    r[0].as_u64().expect("lo") as u32,
                    r[1].as_u64().expect("hi") as u32,
                )
            })
            .collect();
        CharTable(ranges)
    }
    #[inline]
    pub(crate) fn contains(&self, c: char) -> bool {
        let c = c as u32;
        match self.0.binary_search_by(|&(lo, _)| lo.cmp(&c)) {
            Ok(_) => true,
            Err(0) => false,
            Err(i) => c <= self.0[i - 1].1,
        }
    }
}

pub(crate) struct Tables {
    isspace: CharTable,
    isalpha: CharTable,
    category_p: CharTable,
    /// datatrove's `PUNCTUATION_SET`
    pub(crate) punctuation: CharTable,
    /// datatrove's `TERMINAL_PUNCTUATION`, as strings
    pub(crate) terminal_punctuation: Vec<String>,
}

fn tables_from(text: &str) -> std::result::Result<Tables, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("tables.json: {e}"))?;
    Ok(Tables {
        isspace: CharTable::from_json(&v["isspace"]),
        isalpha: CharTable::from_json(&v["isalpha"]),
        category_p: CharTable::from_json(&v["category_p"]),
        punctuation: CharTable::from_json(&v["datatrove_punctuation"]),
        terminal_punctuation: v["datatrove_terminal_punctuation"]
            .as_array()
            .expect("terminal")
            .iter()
            .map(|s| s.as_str().expect("str").to_string())
            .collect(),
    })
}

/// The loaded tables (filters are only built after [`require`]).
pub(crate) fn tables() -> &'static Tables {
    TABLES
        .get()
        .expect("word rules are loaded before a filter is built")
}

/// Python's `str.isspace` for one character.
#[inline]
pub fn py_isspace(c: char) -> bool {
    if c.is_ascii() {
        return matches!(c, '\t'..='\r' | '\x1c'..='\x1f' | ' ');
    }
    tables().isspace.contains(c)
}

/// Python's `str.isalpha` for one character.
#[inline]
pub fn py_isalpha(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    tables().isalpha.contains(c)
}

/// spaCy's `is_punct`: every character is in a Unicode category P*.
fn is_punct(s: &str) -> bool {
    let t = tables();
    s.chars().all(|c| t.category_p.contains(c))
}

fn rules() -> &'static Rules {
    RULES
        .get()
        .expect("word rules are loaded before a filter is built")
}

/// `files`: specials.jsonl, punct_chars.json, prefix.re, suffix.re, infix.re, url.re.
fn rules_from(files: &[String]) -> std::result::Result<Rules, String> {
    {
        let mut specials = AHashMap::new();
        for line in files[0].lines() {
            let (key, orths): (String, Vec<String>) =
                serde_json::from_str(line).map_err(|e| format!("specials.jsonl: {e}"))?;
            specials.insert(key, orths.iter().map(|o| o.len() as u32).collect());
        }
        let punct: Vec<String> =
            serde_json::from_str(&files[1]).map_err(|e| format!("punct_chars.json: {e}"))?;
        let mut r = Rules {
            prefix: Prefix::new(files[2].trim_end_matches('\n')),
            suffix: Suffix::new(files[3].trim_end_matches('\n')),
            infix: Infix::new(files[4].trim_end_matches('\n')),
            url: Url::new(files[5].trim_end_matches('\n')),
            specials,
            punct_chars: punct.iter().filter_map(|s| s.chars().next()).collect(),
            matcher: AHashMap::new(),
            no_specials: true,
        };
        // Tokenizer.add_special_case with faster_heuristics: only specials with an affix
        // (or a space) go to the matcher, as `_tokenize_affixes(string, False)`.
        let mut matcher: AHashMap<String, Vec<Vec<String>>> = AHashMap::new();
        let mut keys: Vec<&String> = r.specials.keys().collect();
        keys.sort();
        for key in keys {
            let has_affix = r.find_prefix(key) != 0
                || r.find_suffix(key) != 0
                || !r.infix.find_iter(key).is_empty()
                || key.contains(' ');
            if !has_affix {
                continue;
            }
            let mut toks = Vec::new();
            raw_tokens(&r, key, &mut toks);
            let pattern: Vec<String> = toks
                .iter()
                .map(|t| key[t.start..t.end].to_string())
                .collect();
            matcher.entry(pattern[0].clone()).or_default().push(pattern);
        }
        r.matcher = matcher;
        r.no_specials = false;
        Ok(r)
    }
}

// ---- spaCy's affix regexes on the `regex` crate -------------------------------------------
//
// spaCy's patterns use fixed-width lookbehinds and lookaheads, which a backtracking engine
// (CPython's `re`, fancy-regex) runs slowly. Each top-level alternative is split into an
// optional one-class lookbehind, a body and an optional one-class lookahead; bodies run on the
// `regex` crate (leftmost-first, i.e. the same preference order as a backtracking engine), the
// lookarounds are checked on the neighbouring character. The order in which Python tries the
// alternatives is kept, so the match is the one `re` returns.

/// Top-level `|` alternatives of a Python pattern (outside groups and classes).
fn alternatives(p: &str) -> Vec<&str> {
    let b = p.as_bytes();
    let (mut out, mut start, mut depth, mut class, mut i) = (Vec::new(), 0, 0i32, false, 0);
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' if !class => class = true,
            b']' if class => class = false,
            b'(' if !class => depth += 1,
            b')' if !class => depth -= 1,
            b'|' if !class && depth == 0 => {
                out.push(&p[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&p[start..]);
    out
}

/// Byte index of the `)` closing the group opened at `open`.
fn group_end(p: &str, open: usize) -> usize {
    let b = p.as_bytes();
    let (mut depth, mut class, mut i) = (0i32, false, open);
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' if !class => class = true,
            b']' if class => class = false,
            b'(' if !class => depth += 1,
            b')' if !class => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unbalanced group in {p}")
}

/// One alternative: `(?<=lb)body(?=la)` / `body(?!nla)`, lookarounds optional.
struct Alt {
    lb: Option<String>,
    body: String,
    la: Option<String>,
    neg_la: Option<String>,
}

fn parse_alt(a: &str) -> Alt {
    let mut body = a;
    let mut lb = None;
    if body.starts_with("(?<=") {
        let e = group_end(body, 0);
        lb = Some(body[4..e].to_string());
        body = &body[e + 1..];
    }
    let (mut la, mut neg_la) = (None, None);
    for (tag, slot) in [("(?=", &mut la), ("(?!", &mut neg_la)] {
        if let Some(i) = body.find(tag) {
            let e = group_end(body, i);
            assert_eq!(e + 1, body.len(), "lookahead not at the end: {a}");
            *slot = Some(body[i + 3..e].to_string());
            body = &body[..i];
        }
    }
    assert!(
        !body.contains("(?<") && !body.contains("(?=") && !body.contains("(?!"),
        "unsupported lookaround in {a}"
    );
    Alt {
        lb,
        body: body.to_string(),
        la,
        neg_la,
    }
}

fn compile(src: &str) -> Regex {
    Regex::new(src).unwrap_or_else(|e| panic!("spaCy regex {src:.80}: {e}"))
}

/// The character of `s` ending at byte `at` / starting at byte `at`.
fn char_before(s: &str, at: usize) -> Option<&str> {
    let c = s[..at].chars().next_back()?;
    Some(&s[at - c.len_utf8()..at])
}
fn char_at(s: &str, at: usize) -> Option<&str> {
    let c = s[at..].chars().next()?;
    Some(&s[at..at + c.len_utf8()])
}

/// `prefix_search`: `^a1|^a2|...`, the first alternative (in order) that matches at 0.
struct Prefix {
    /// consecutive lookaround-free alternatives merged into one anchored regex, in order
    parts: Vec<(Regex, Option<Regex>)>,
}

impl Prefix {
    fn new(p: &str) -> Self {
        let mut parts: Vec<(Regex, Option<Regex>)> = Vec::new();
        let mut easy: Vec<String> = Vec::new();
        let flush = |easy: &mut Vec<String>, parts: &mut Vec<(Regex, Option<Regex>)>| {
            if !easy.is_empty() {
                parts.push((compile(&format!("^(?:{})", easy.join("|"))), None));
                easy.clear();
            }
        };
        for a in alternatives(p) {
            let a = a
                .strip_prefix('^')
                .expect("prefix alternatives start with ^");
            let alt = parse_alt(a);
            assert!(
                alt.lb.is_none() && alt.la.is_none(),
                "prefix lookaround {a}"
            );
            match alt.neg_la {
                None => easy.push(alt.body),
                Some(n) => {
                    flush(&mut easy, &mut parts);
                    parts.push((
                        compile(&format!("^(?:{})", alt.body)),
                        Some(compile(&format!("^(?:{n})"))),
                    ));
                }
            }
        }
        flush(&mut easy, &mut parts);
        Prefix { parts }
    }
    fn find(&self, s: &str) -> usize {
        for (re, neg) in &self.parts {
            if let Some(m) = re.find(s) {
                // (a body of several lengths before a negative lookahead does not occur here)
                if neg.as_ref().is_some_and(|n| n.is_match(&s[m.end()..])) {
                    continue;
                }
                return m.end();
            }
        }
        0
    }
}

/// `suffix_search`: `a1$|a2$|...`, searched: the match starting leftmost (all end at `$`).
struct Suffix {
    easy: Regex,
    /// `(?<=lb)body$` as `lb(body)$`: the body starts after the lookbehind character(s)
    hard: Vec<Regex>,
}

impl Suffix {
    fn new(p: &str) -> Self {
        let (mut easy, mut hard) = (Vec::new(), Vec::new());
        for a in alternatives(p) {
            let alt = parse_alt(a);
            assert!(
                alt.la.is_none() && alt.neg_la.is_none(),
                "suffix lookahead {a}"
            );
            match alt.lb {
                None => easy.push(alt.body),
                Some(lb) => {
                    let body = alt.body.strip_suffix('$').expect("suffix ends with $");
                    hard.push(compile(&format!("(?:{lb})({body})$")));
                }
            }
        }
        Suffix {
            easy: compile(&format!("(?:{})", easy.join("|"))),
            hard,
        }
    }
    fn find(&self, s: &str) -> usize {
        let mut start = self.easy.find(s).map_or(usize::MAX, |m| m.start());
        for re in &self.hard {
            if let Some(c) = re.captures(s) {
                start = start.min(c.get(1).expect("group").start());
            }
        }
        if start == usize::MAX {
            0
        } else {
            s.len() - start
        }
    }
}

/// `infix_finditer`: at each position (left to right, resuming after a match), the first
/// alternative in order whose lookbehind, body and lookahead all hold.
struct Infix {
    /// any body: finds the next position where some alternative may match
    any: Regex,
    alts: Vec<(Option<Regex>, Regex)>,
}

impl Infix {
    fn new(p: &str) -> Self {
        let mut bodies = Vec::new();
        let mut alts = Vec::new();
        for a in alternatives(p) {
            let alt = parse_alt(a);
            assert!(alt.neg_la.is_none(), "infix negative lookahead {a}");
            bodies.push(alt.body.clone());
            let one = |c: &str| compile(&format!("^(?:{c})$"));
            // `body(?=la)` as `^(body)la`: the lookahead may make the body backtrack to a
            // later alternative of its own (`-` then `--` before a letter), as in `re`.
            let body = match &alt.la {
                None => compile(&format!("^({})", alt.body)),
                Some(la) => compile(&format!("^({})(?:{la})", alt.body)),
            };
            alts.push((alt.lb.as_deref().map(one), body));
        }
        Infix {
            any: compile(&format!("(?:{})", bodies.join("|"))),
            alts,
        }
    }
    fn find_iter(&self, s: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut p = 0usize;
        while p < s.len() {
            let Some(m) = self.any.find_at(s, p) else {
                break;
            };
            let q = m.start();
            let mut found = None;
            for (lb, body) in &self.alts {
                if let Some(lb) = lb {
                    match char_before(s, q) {
                        Some(c) if lb.is_match(c) => {}
                        _ => continue,
                    }
                }
                if let Some(c) = body.captures(&s[q..]) {
                    found = Some(q + c.get(1).expect("group").end());
                    break;
                }
            }
            match found {
                Some(end) => {
                    out.push((q, end));
                    p = if end > q {
                        end
                    } else {
                        q + char_at(s, q).map_or(1, str::len)
                    };
                }
                None => p = q + char_at(s, q).map_or(1, str::len),
            }
        }
        out
    }
}

/// `url_match`: the pattern without its negative lookaheads (a superset) on `regex` first;
/// only what it accepts is checked with the full pattern (fancy-regex).
struct Url {
    superset: Regex,
    full: fancy_regex::Regex,
}

impl Url {
    fn new(p: &str) -> Self {
        let mut sup = p.to_string();
        while let Some(i) = sup.find("(?!") {
            let e = group_end(&sup, i);
            sup.replace_range(i..=e, "");
        }
        Url {
            superset: compile(&sup),
            full: fancy_regex::Regex::new(p).expect("url regex"),
        }
    }
    fn is_match(&self, s: &str) -> bool {
        self.superset.is_match(s) && matches!(self.full.is_match(s), Ok(true))
    }
}

impl Rules {
    fn find_prefix(&self, s: &str) -> usize {
        self.prefix.find(s)
    }
    fn find_suffix(&self, s: &str) -> usize {
        self.suffix.find(s)
    }
    fn special(&self, s: &str) -> Option<&Vec<u32>> {
        if self.no_specials {
            return None;
        }
        self.specials.get(s)
    }

    /// spaCy's `_tokenize` of one span without whitespace: token byte lengths into `out`.
    fn split_span(&self, span: &str, out: &mut Vec<u32>) {
        if let Some(p) = self.special(span) {
            out.extend_from_slice(p);
            return;
        }
        // _split_affixes
        let mut s = span;
        let mut prefixes: Vec<u32> = Vec::new();
        let mut suffixes: Vec<u32> = Vec::new();
        let mut last_size = usize::MAX;
        while !s.is_empty() && s.len() != last_size {
            if self.special(s).is_some() {
                break;
            }
            last_size = s.len();
            let pre_len = self.find_prefix(s);
            if pre_len != 0 {
                let minus_pre = &s[pre_len..];
                if !minus_pre.is_empty() && self.special(minus_pre).is_some() {
                    prefixes.push(pre_len as u32);
                    s = minus_pre;
                    break;
                }
            }
            let suf_len = self.find_suffix(&s[pre_len..]);
            if suf_len != 0 {
                let minus_suf = &s[..s.len() - suf_len];
                if !minus_suf.is_empty() && self.special(minus_suf).is_some() {
                    suffixes.push(suf_len as u32);
                    s = minus_suf;
                    break;
                }
            }
            // The suffix is searched in s[pre_len..], so both always fit side by side.
            if pre_len != 0 && suf_len != 0 {
                prefixes.push(pre_len as u32);
                suffixes.push(suf_len as u32);
                s = &s[pre_len..s.len() - suf_len];
            } else if pre_len != 0 {
                prefixes.push(pre_len as u32);
                s = &s[pre_len..];
            } else if suf_len != 0 {
                suffixes.push(suf_len as u32);
                s = &s[..s.len() - suf_len];
            }
        }
        // _attach_tokens
        out.extend_from_slice(&prefixes);
        if !s.is_empty() {
            if let Some(p) = self.special(s) {
                out.extend_from_slice(p);
            } else if self.url.is_match(s) {
                out.push(s.len() as u32);
            } else {
                let mut start = 0usize;
                for (m_start, m_end) in self.infix.find_iter(s) {
                    // spaCy skips an infix at the very start of the string
                    if m_start == 0 {
                        continue;
                    }
                    if m_start != start {
                        out.push((m_start - start) as u32);
                    }
                    if m_start != m_end {
                        out.push((m_end - m_start) as u32);
                    }
                    start = m_end;
                }
                if start < s.len() {
                    out.push((s.len() - start) as u32);
                }
            }
        }
        out.extend(suffixes.iter().rev());
    }
}

thread_local! {
    static CACHE: RefCell<AHashMap<Box<str>, Box<[u32]>>> = RefCell::new(AHashMap::new());
}
const CACHE_MAX: usize = 1 << 18;

/// Token lengths of one span without whitespace (cached per thread).
fn split_cached(span: &str, out: &mut Vec<u32>) {
    // Fast path: ASCII letters only and not a special case is one token (no prefix, suffix
    // or infix rule of spaCy matches a string of letters alone).
    let r = rules();
    if span.bytes().all(|b| b.is_ascii_alphabetic()) {
        match r.special(span) {
            Some(p) => out.extend_from_slice(p),
            None => out.push(span.len() as u32),
        }
        return;
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(p) = c.get(span) {
            out.extend_from_slice(p);
            return;
        }
        let at = out.len();
        r.split_span(span, out);
        if c.len() >= CACHE_MAX {
            c.clear();
        }
        c.insert(span.into(), out[at..].into());
    });
}

/// One token: byte range in the text, and whether it is a whitespace token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tok {
    pub start: usize,
    pub end: usize,
    pub space: bool,
}

/// spaCy's tokens of `text` (whitespace tokens included), appended to `out`.
pub fn tokens(text: &str, out: &mut Vec<Tok>) {
    let r = rules();
    let at = out.len();
    raw_tokens(r, text, out);
    apply_special_cases(r, text, out, at);
}

/// spaCy's `_tokenize_affixes`: whitespace spans, then each span's split.
fn raw_tokens(r: &Rules, text: &str, out: &mut Vec<Tok>) {
    let Some(first) = text.chars().next() else {
        return;
    };
    let mut lens = Vec::new();
    let mut emit = |start: usize, end: usize, space: bool, out: &mut Vec<Tok>| {
        if space {
            // no spaCy rule matches inside a whitespace run: it is one token
            out.push(Tok { start, end, space });
            return;
        }
        lens.clear();
        if r.no_specials {
            r.split_span(&text[start..end], &mut lens);
        } else {
            split_cached(&text[start..end], &mut lens);
        }
        let mut at = start;
        for &l in &lens {
            out.push(Tok {
                start: at,
                end: at + l as usize,
                space: false,
            });
            at += l as usize;
        }
    };
    let mut in_ws = py_isspace(first);
    let mut start = 0usize;
    for (i, c) in text.char_indices() {
        if py_isspace(c) != in_ws {
            if start < i {
                emit(start, i, in_ws, out);
            }
            // a single ' ' after a token belongs to it (spaCy's `spacy` flag)
            start = if c == ' ' { i + 1 } else { i };
            in_ws = !in_ws;
        }
    }
    if start < text.len() {
        emit(start, text.len(), in_ws, out);
    }
}

/// spaCy's `_apply_special_cases`: find the matcher's token sequences among the tokens
/// `out[at..]`, keep the longest non-overlapping ones (`_filter_special_spans`: by length,
/// then start; a span is dropped when its first or last token is in a span seen before) and
/// re-split those whose text (with the whitespace between its tokens) is a special case.
fn apply_special_cases(r: &Rules, text: &str, out: &mut Vec<Tok>, at: usize) {
    let toks = &out[at..];
    let s = |t: &Tok| &text[t.start..t.end];
    // (start, end) token index ranges of all matches
    let mut matches: Vec<(usize, usize)> = Vec::new();
    for i in 0..toks.len() {
        let Some(patterns) = r.matcher.get(s(&toks[i])) else {
            continue;
        };
        for p in patterns {
            if i + p.len() <= toks.len()
                && p.iter().zip(&toks[i..]).all(|(w, t)| w.as_str() == s(t))
            {
                matches.push((i, i + p.len()));
            }
        }
    }
    if matches.is_empty() {
        return;
    }
    matches.sort();
    matches.dedup();
    // longest first, then the earliest start
    matches.sort_by(|a, b| (b.1 - b.0).cmp(&(a.1 - a.0)).then(a.0.cmp(&b.0)));
    let mut seen = ahash::AHashSet::new();
    let mut kept: Vec<(usize, usize)> = Vec::new();
    for &(a, b) in &matches {
        if !seen.contains(&a) && !seen.contains(&(b - 1)) {
            kept.push((a, b));
        }
        seen.extend(a..b);
    }
    kept.sort();
    let mut replaced: Vec<Tok> = Vec::with_capacity(toks.len());
    let mut i = 0usize;
    let mut k = 0usize;
    while i < toks.len() {
        while k < kept.len() && kept[k].0 < i {
            k += 1;
        }
        if k < kept.len() && kept[k].0 == i {
            let (a, b) = kept[k];
            let (start, end) = (toks[a].start, toks[b - 1].end);
            if let Some(pieces) = r.specials.get(&text[start..end]) {
                let mut p = start;
                for &l in pieces {
                    let end = p + l as usize;
                    replaced.push(Tok {
                        start: p,
                        end,
                        space: text[p..end].chars().all(py_isspace),
                    });
                    p += l as usize;
                }
            } else {
                replaced.extend_from_slice(&toks[a..b]);
            }
            i = b;
        } else {
            replaced.push(toks[i]);
            i += 1;
        }
    }
    out.truncate(at);
    out.extend(replaced);
}

thread_local! {
    /// The last text split into words on this thread and its word ranges: a chain asks for
    /// the words of one document up to three times (gopher_quality, gopher_repetition,
    /// fineweb), as datatrove's `lru_cache` on `split_into_parts` spares it.
    static LAST: RefCell<(String, Vec<(usize, usize)>)> = const { RefCell::new((String::new(), Vec::new())) };
}

/// datatrove's `split_into_words(text, "en")`.
pub fn words(text: &str) -> Vec<&str> {
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != text {
            let mut toks = Vec::new();
            tokens(text, &mut toks);
            last.0.clear();
            last.0.push_str(text);
            last.1.clear();
            last.1
                .extend(toks.iter().filter(|t| !t.space).map(|t| (t.start, t.end)));
        }
        last.1.iter().map(|&(a, b)| &text[a..b]).collect()
    })
}

/// spaCy's sentencizer over `toks`: the index of each sentence's first token.
fn sentence_starts(text: &str, toks: &[Tok]) -> Vec<usize> {
    if toks.is_empty() {
        return Vec::new();
    }
    let punct = &rules().punct_chars;
    let mut starts = vec![0usize];
    let mut seen_period = false;
    for (i, t) in toks.iter().enumerate() {
        let s = &text[t.start..t.end];
        let mut cs = s.chars();
        let in_punct_chars = match (cs.next(), cs.next()) {
            (Some(c), None) => punct.contains(&c),
            _ => false,
        };
        if seen_period && !in_punct_chars && !is_punct(s) {
            if i != 0 {
                starts.push(i);
            }
            seen_period = false;
        } else if in_punct_chars {
            seen_period = true;
        }
    }
    starts
}

/// Number of sentences datatrove's `split_into_sentences(text, "en")` returns.
pub fn count_sentences(text: &str) -> usize {
    let mut toks = Vec::new();
    tokens(text, &mut toks);
    sentence_starts(text, &toks).len().max(1)
}

/// datatrove's `split_into_sentences(text, "en")`: contiguous pieces covering the text, each
/// ending where a spaCy sentence ends.
pub fn sentences(text: &str) -> Vec<&str> {
    let mut toks = Vec::new();
    tokens(text, &mut toks);
    let starts = sentence_starts(text, &toks);
    // sentence i ends at the end of the token before sentence i+1 starts
    let mut ends: Vec<usize> = starts.iter().skip(1).map(|&s| toks[s - 1].end).collect();
    if !toks.is_empty() {
        ends.push(toks.last().expect("non-empty").end);
    }
    // text[a:b] for a, b in zip([0] + ends[:-1], ends[:-1] + [len(text)])
    let mut out = Vec::with_capacity(ends.len().max(1));
    let mut a = 0usize;
    let n = ends.len();
    for (k, &e) in ends.iter().enumerate() {
        let b = if k + 1 == n { text.len() } else { e };
        out.push(&text[a..b]);
        a = e;
    }
    if out.is_empty() {
        out.push(text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_spacy_on_corpus_text() {
        crate::filter::heuristics::testdata::rules();
        // Expected tokens are spaCy 3.8 `spacy.blank("en")` output on these strings.
        assert_eq!(
            words("Don't worry, the U.S. team (led by Dr. Smith) won 3-2!"),
            vec![
                "Do", "n't", "worry", ",", "the", "U.S.", "team", "(", "led", "by", "Dr.", "Smith",
                ")", "won", "3", "-", "2", "!"
            ]
        );
        assert_eq!(
            words("see https://example.com/a?b=c for state-of-the-art results..."),
            vec![
                "see",
                "https://example.com/a?b=c",
                "for",
                "state",
                "-",
                "of",
                "-",
                "the",
                "-",
                "art",
                "results",
                "..."
            ]
        );
        assert_eq!(words("  two\n\nlines  here "), vec!["two", "lines", "here"]);
        // the second pass merges specials split by the affix rules: `''` and `:)`
        assert_eq!(
            words("CONTRIBUTORS ``AS IS'' AND"),
            vec!["CONTRIBUTORS", "`", "`", "AS", "IS", "''", "AND"]
        );
        assert_eq!(
            words("fine:) ok ' ' x"),
            vec!["fine", ":)", "ok", "'", "'", "x"]
        );
        assert_eq!(count_sentences("It rained. We stayed in! Did you? Yes"), 4);
        assert_eq!(count_sentences("Mr. Smith went home."), 1);
        assert_eq!(
            sentences("One. Two three.  Four"),
            vec!["One.", " Two three.", "  Four"]
        );
    }
}
