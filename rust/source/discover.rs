//! Glob discovery of a corpus's input files.
//!
//! The order of files is part of the determinism contract (dedup keeps the earliest
//! document), so it must not depend on the file system's directory order: every match is
//! keyed by its path relative to `base` and the result is sorted by those bytes.

use crate::error::{Error, Result};
use globset::{Candidate, GlobBuilder};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use walkdir::WalkDir;

/// Characters that make a path component a pattern rather than a literal name.
fn is_glob(component: &str) -> bool {
    component.contains(['*', '?', '[', ']', '{', '}'])
}

/// Files matched by the glob `patterns`, relative to `base` (absolute patterns are taken as
/// they are), sorted by their path relative to `base` (byte order), without duplicates.
/// A pattern that matches no file is an error naming the pattern and the directory searched.
pub fn discover(base: &Path, patterns: &[String]) -> Result<Vec<PathBuf>> {
    // Key: the path relative to `base` when it lies under it, else the absolute path.
    let mut found: BTreeMap<Vec<u8>, PathBuf> = BTreeMap::new();
    let base_abs = std::fs::canonicalize(base).ok();
    for pattern in patterns {
        let mut pat = pattern.as_str();
        while let Some(rest) = pat.strip_prefix("./") {
            pat = rest.trim_start_matches('/');
        }
        let absolute = Path::new(pat).is_absolute();
        let matcher = GlobBuilder::new(pat)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::Spec(format!("invalid glob pattern '{pattern}': {e}")))?
            .compile_matcher();
        // Walk only below the pattern's literal prefix, not the whole of `base`.
        let literal: PathBuf = pat
            .split('/')
            .take_while(|c| !is_glob(c))
            .collect::<Vec<_>>()
            .join("/")
            .into();
        let root = if absolute {
            literal.clone()
        } else {
            base.join(&literal)
        };
        let mut matched = 0usize;
        if root.exists() {
            for entry in WalkDir::new(&root).follow_links(true) {
                let entry = entry.map_err(|e| {
                    let at = e.path().unwrap_or(&root).display().to_string();
                    Error::io(&at, e)
                })?;
                if !entry.file_type().is_file() {
                    continue;
                }
                let path = entry.path();
                let candidate_path = if absolute {
                    path
                } else {
                    path.strip_prefix(base).unwrap_or(path)
                };
                if !matcher.is_match_candidate(&Candidate::new(candidate_path)) {
                    continue;
                }
                matched += 1;
                let (key, out) = key_for(base, base_abs.as_deref(), path);
                found.entry(key).or_insert(out);
            }
        }
        if matched == 0 {
            let dir = if absolute {
                root.display().to_string()
            } else {
                base.display().to_string()
            };
            return Err(Error::Spec(format!(
                "pattern '{pattern}' matches no file (searched in {dir})"
            )));
        }
    }
    Ok(found.into_values().collect())
}

/// Sort key and returned path of a matched file: files under `base` are keyed (and returned)
/// relative to it, whether a relative or an absolute pattern found them, so the same file
/// found twice is listed once.
fn key_for(base: &Path, base_abs: Option<&Path>, path: &Path) -> (Vec<u8>, PathBuf) {
    let rel = if path.is_absolute() {
        base_abs.and_then(|b| path.strip_prefix(b).ok())
    } else {
        path.strip_prefix(base).ok()
    };
    match rel {
        Some(rel) => (slash_bytes(rel), base.join(rel)),
        None => (slash_bytes(path), path.to_path_buf()),
    }
}

/// The path's components joined by '/', as bytes: a platform-independent sort key.
fn slash_bytes(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for c in path.components() {
        if !out.is_empty() && !matches!(c, Component::RootDir) && out.last() != Some(&b'/') {
            out.push(b'/');
        }
        match c {
            Component::RootDir => out.push(b'/'),
            other => out.extend_from_slice(other.as_os_str().as_encoded_bytes()),
        }
    }
    out
}
