//! `language` filter: keep a document only when its detected language is one of `keep` (ISO
//! 639-1 codes, default `["en"]`) with a confidence of at least `min_score` (default 0.65);
//! otherwise drop it with the reason `language: <code> <score, 2 decimals>`.
//!
//! Detector: the `whatlang` crate (trigram profiles of 69 languages compiled into the crate,
//! no model file, no network, no unsafe, no global state). Chosen over `lingua` for speed and
//! size: lingua's n-gram models add tens of MB to the wheel and are an order of magnitude
//! slower per document; over fastText-style crates because those need an external model file
//! (datatrove's own filter downloads `lid.176.bin`), which breaks "works offline from the
//! crate". What whatlang does, and so what this filter does:
//! * it first finds the text's main script by character counts; a script with one language
//!   (Hangul, Greek, Thai, ...) gives that language with confidence 1.0; Han gives Mandarin
//!   (`zh`, 1.0) unless kana make up more than 2 % of the CJK characters (then Japanese, or
//!   Mandarin at 0.5); Latin, Cyrillic, Arabic, Devanagari... are told apart by an alphabet
//!   score blended with a trigram distance, and the confidence is the relative gap between
//!   the best and the second-best language (1.0 once the gap is clear for the text's length);
//! * one correction of ours: when Han / kana letters outweigh all other letters in UTF-8
//!   bytes, only those characters are given to whatlang (see [`cjk_dominates`]): by its
//!   character count, 45 % of the Chinese test slice (a Debian manual full of commands and
//!   paths) came out as English, French, Catalan...;
//! * a text with no letters at all (empty, digits, symbols) has no language: this filter
//!   labels it `und` with score 0.00, which `keep` cannot name, so it is always dropped;
//! * the decision is a pure function of the text: no randomness, no cut-off by time.
//!
//! Codes are whatlang's ISO 639-3 mapped to ISO 639-1 (`cmn` -> `zh`, `pes` -> `fa`, `nob`
//! -> `nb`, ...); every one of its languages has a 639-1 code, so the table is total.
//!
//! Code: source files are labelled by their comments, identifiers and keywords, which are
//! English words. On the test slice, 91 % of the Python files (starcoderdata) come out `en`
//! (75 % with a score >= 0.65), the rest as Catalan, French, Danish...; all 40 Coq proofs
//! (proof-pile) come out `en`, 39 of them >= 0.65. So `keep = ["en"]` does *not* remove code:
//! give code corpora no `language` filter rather than relying on it.
//!
//! Short texts: whatlang's confidence is the gap to the second-best language, small on one
//! sentence. On the slice's English, texts of 50 words or more are `en` with >= 0.65 in 93 %
//! of cases, shorter ones (one-line quotations) in 59 %: with the default `min_score`, short
//! English documents are often dropped (measured rates: `python/tests/test_language.py`).
//!
//! Mixed texts: the main script is the one with the most characters, so a Chinese page with
//! long runs of Latin (URLs, code, English quotations) can come out as a Latin-script
//! language; a Han character weighs one character against an English word's several.

// Han ideographs and kana: one list of ranges, the decontamination filter's.
use super::decontam::is_cjk as is_han_or_kana;
use super::{DocFilter, Params};
use crate::error::{Error, Result};
use serde_json::Value;
use whatlang::Lang;

/// What [`detect`] returns for a text with no letters.
pub const UNDETERMINED: &str = "und";

/// The detected language of `text` as an ISO 639-1 code, and whatlang's confidence in it
/// (0..=1). `("und", 0.0)` for a text without letters.
pub fn detect(text: &str) -> (&'static str, f64) {
    let info = if cjk_dominates(text) {
        // Only the Han / kana characters: whatlang then tells Mandarin from Japanese by the
        // share of kana, undisturbed by the Latin runs (commands, paths, names) around them.
        let cjk: String = text.chars().filter(|&c| is_han_or_kana(c)).collect();
        whatlang::detect(&cjk)
    } else {
        whatlang::detect(text)
    };
    match info {
        Some(info) => (iso639_1(info.lang()), info.confidence()),
        None => (UNDETERMINED, 0.0),
    }
}

/// Whether Han / kana letters weigh more than all other letters together, weighing each
/// letter by its UTF-8 length. whatlang picks the main script by counting characters, so a
/// Chinese page with commands and paths in it (a Debian manual: `/etc/fstab`, `mount -t`)
/// comes out as Latin script and gets a European language; but one Han character carries
/// about a word, the information of several Latin letters. UTF-8 bytes (3 for Han, 1 for
/// ASCII) are a simple, script-neutral weight that puts such pages back with Chinese.
fn cjk_dominates(text: &str) -> bool {
    let (mut cjk, mut other) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        if is_han_or_kana(c) {
            cjk += c.len_utf8();
        } else {
            other += c.len_utf8();
        }
    }
    cjk > other
}

/// Every code [`detect`] can return (but `und`), sorted: what `keep` may name.
pub fn known_codes() -> Vec<&'static str> {
    let mut codes: Vec<&str> = Lang::all().iter().map(|l| iso639_1(*l)).collect();
    codes.sort_unstable();
    codes
}

/// ISO 639-3 (whatlang's) to ISO 639-1. Exhaustive on purpose: a whatlang upgrade that adds
/// a language fails to compile here instead of leaking a 3-letter code into reasons.
fn iso639_1(lang: Lang) -> &'static str {
    match lang {
        Lang::Epo => "eo",
        Lang::Eng => "en",
        Lang::Rus => "ru",
        Lang::Cmn => "zh",
        Lang::Spa => "es",
        Lang::Por => "pt",
        Lang::Ita => "it",
        Lang::Ben => "bn",
        Lang::Fra => "fr",
        Lang::Deu => "de",
        Lang::Ukr => "uk",
        Lang::Kat => "ka",
        Lang::Ara => "ar",
        Lang::Hin => "hi",
        Lang::Jpn => "ja",
        Lang::Heb => "he",
        Lang::Yid => "yi",
        Lang::Pol => "pl",
        Lang::Amh => "am",
        Lang::Jav => "jv",
        Lang::Kor => "ko",
        Lang::Nob => "nb",
        Lang::Dan => "da",
        Lang::Swe => "sv",
        Lang::Fin => "fi",
        Lang::Tur => "tr",
        Lang::Nld => "nl",
        Lang::Hun => "hu",
        Lang::Ces => "cs",
        Lang::Ell => "el",
        Lang::Bul => "bg",
        Lang::Bel => "be",
        Lang::Mar => "mr",
        Lang::Kan => "kn",
        Lang::Ron => "ro",
        Lang::Slv => "sl",
        Lang::Hrv => "hr",
        Lang::Srp => "sr",
        Lang::Mkd => "mk",
        Lang::Lit => "lt",
        Lang::Lav => "lv",
        Lang::Est => "et",
        Lang::Tam => "ta",
        Lang::Vie => "vi",
        Lang::Urd => "ur",
        Lang::Tha => "th",
        Lang::Guj => "gu",
        Lang::Uzb => "uz",
        Lang::Pan => "pa",
        Lang::Aze => "az",
        Lang::Ind => "id",
        Lang::Tel => "te",
        Lang::Pes => "fa",
        Lang::Mal => "ml",
        Lang::Ori => "or",
        Lang::Mya => "my",
        Lang::Nep => "ne",
        Lang::Sin => "si",
        Lang::Khm => "km",
        Lang::Tuk => "tk",
        Lang::Aka => "ak",
        Lang::Zul => "zu",
        Lang::Sna => "sn",
        Lang::Afr => "af",
        Lang::Lat => "la",
        Lang::Slk => "sk",
        Lang::Cat => "ca",
        Lang::Tgl => "tl",
        Lang::Hye => "hy",
        Lang::Cym => "cy",
    }
}

/// The `language` filter with its resolved settings.
pub struct LanguageFilter {
    keep: Vec<String>,
    min_score: f64,
    settings: Value,
}

impl LanguageFilter {
    pub fn new(params: &Value) -> Result<Self> {
        let mut p = Params::new("language", params)?;
        let keep = p.strings("keep", &["en"])?;
        let min_score = p.f64("min_score", 0.65)?;
        let settings = p.finish()?;
        if keep.is_empty() {
            // An empty list would drop every document: surely a mistake in the spec.
            return Err(Error::Spec(
                "filters.language.keep: expected at least one language code".into(),
            ));
        }
        let known = known_codes();
        if let Some(bad) = keep.iter().find(|c| !known.contains(&c.as_str())) {
            return Err(Error::Spec(format!(
                "filters.language.keep: unknown language code {bad:?} (expected ISO 639-1 \
                 codes the detector knows: {})",
                known.join(", ")
            )));
        }
        if !(0.0..=1.0).contains(&min_score) {
            return Err(Error::Spec(format!(
                "filters.language.min_score: expected a number between 0 and 1, got {min_score}"
            )));
        }
        Ok(LanguageFilter {
            keep,
            min_score,
            settings,
        })
    }
}

impl DocFilter for LanguageFilter {
    fn name(&self) -> &str {
        "language"
    }

    fn judge(&self, text: &str) -> Option<String> {
        let (code, score) = detect(text);
        if self.keep.iter().any(|k| k == code) && score >= self.min_score {
            None
        } else {
            Some(format!("language: {code} {score:.2}"))
        }
    }

    fn settings(&self) -> Value {
        self.settings.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EN: &str = "The committee met on Tuesday to discuss the budget for next year, \
        and most of the members agreed that the library should stay open longer in winter.";
    const ZH: &str = "委员会周二开会讨论明年的预算，大多数成员同意图书馆冬天应该延长开放时间。";
    const DE: &str = "Der Ausschuss traf sich am Dienstag, um den Haushalt für das nächste Jahr \
        zu besprechen, und die meisten Mitglieder waren sich einig.";

    #[test]
    fn detects_and_maps_to_iso639_1() {
        assert_eq!(detect(EN).0, "en");
        assert_eq!(detect(ZH).0, "zh");
        assert_eq!(detect(DE).0, "de");
        assert_eq!(detect(ZH).1, 1.0);
        assert_eq!(detect(""), ("und", 0.0));
        assert_eq!(detect("12345 + 678 = ??"), ("und", 0.0));
    }

    #[test]
    fn chinese_with_commands_stays_chinese() {
        // More Latin letters than Han characters, but fewer bytes: whatlang alone says Latin.
        let text =
            "使用下面的命令挂载磁盘映像文件：\n  $ sudo mount -t auto -o loop disk.img /mnt/image";
        assert_ne!(whatlang::detect(text).unwrap().lang(), Lang::Cmn);
        assert_eq!(detect(text), ("zh", 1.0));
        // And an English text quoting a few Han characters stays English.
        assert_eq!(detect(&format!("{EN} The sign said 图书馆.")).0, "en");
    }

    #[test]
    fn code_table_is_two_letters_and_unique() {
        let codes = known_codes();
        assert_eq!(codes.len(), Lang::all().len());
        assert!(codes.iter().all(|c| c.len() == 2), "{codes:?}");
        let mut dedup = codes.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), codes.len());
    }

    #[test]
    fn keeps_and_drops_with_reason() {
        let f = LanguageFilter::new(&json!({})).unwrap();
        assert_eq!(f.judge(EN), None);
        let reason = f.judge(ZH).unwrap();
        assert_eq!(reason, "language: zh 1.00");
        assert!(f.judge(DE).unwrap().starts_with("language: de "));
        assert_eq!(f.judge("").unwrap(), "language: und 0.00");
        assert_eq!(f.settings(), json!({"keep": ["en"], "min_score": 0.65}));

        let zh = LanguageFilter::new(&json!({"keep": ["zh", "en"], "min_score": 0.9})).unwrap();
        assert_eq!(zh.judge(ZH), None);
        assert_eq!(zh.judge(EN), None);
        assert!(zh.judge(DE).is_some());
        // A threshold above every score drops even the language kept.
        let strict = LanguageFilter::new(&json!({"keep": ["zh"], "min_score": 1.0})).unwrap();
        assert_eq!(strict.judge(ZH), None);
        assert_eq!(strict.judge("好的 OK yes"), strict.judge("好的 OK yes"));
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (params, key) in [
            (json!({"keep": ["eng"]}), "filters.language.keep"),
            (json!({"keep": []}), "filters.language.keep"),
            (json!({"keep": "en"}), "filters.language.keep"),
            (json!({"min_score": 1.5}), "filters.language.min_score"),
            (json!({"min_score": "high"}), "filters.language.min_score"),
            (json!({"langs": ["en"]}), "filters.language.langs"),
        ] {
            let err = LanguageFilter::new(&params).err().unwrap().to_string();
            assert!(err.contains(key), "{params}: {err}");
        }
    }
}
