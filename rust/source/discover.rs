//! Glob discovery of a corpus's input files, in directories or in a bucket.
//!
//! The order of files is part of the determinism contract (dedup keeps the earliest
//! document), so it must not depend on a file system's directory order or a store's listing
//! order, and the names the lock records must not depend on where the files live:
//! - Every pattern has a base: its directories before the first glob component
//!   (`data/slim/train` for `data/slim/train/**/*.jsonl`; `s3://b/slim/train` for
//!   `s3://b/slim/train/*.jsonl`; a literal file's directory).
//! - Each file is named by its path under the base of the pattern that found it
//!   (`/`-separated), and the result is sorted by those names' bytes. So the same files give
//!   the same names, order, identity and lock from a directory and from a bucket, and a mix
//!   never records where its inputs were.
//! - A file that several patterns find is listed once, under the longest of its names (the
//!   most context; then the smallest bytes): not under whichever pattern comes first.
//! - Names must be unique: two different files with one name (`a/*.jsonl` and `b/*.jsonl`
//!   both finding an `x.jsonl`) are an error naming both; one pattern over their common
//!   directory (`{a,b}/*.jsonl`, `*/x.jsonl`) names them apart.
//! - A URL pattern is listed in its bucket under its base and matched against the objects'
//!   keys with the same glob rules as a local pattern against paths (globset,
//!   `literal_separator`: `*`, `?` and `[..]` stay within a component, `**` crosses them).
//!   Local and bucket patterns may be mixed in one corpus: names, order and uniqueness
//!   follow the same rules (a name never says where its file is).
//! - A pattern that matches nothing is an error naming the pattern and where it looked.

use super::input::{Input, Location};
use crate::error::{Error, Result};
use crate::storage::{is_url, Bucket};
use globset::{Candidate, GlobBuilder, GlobMatcher};
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use walkdir::WalkDir;

/// Characters that make a path component a pattern rather than a literal name.
fn is_glob(component: &str) -> bool {
    component.contains(['*', '?', '[', ']', '{', '}'])
}

/// A file a pattern matched: its path components (from the root, or from `s3://bucket`).
struct Found {
    components: Vec<String>,
    size: u64,
    at: Location,
}

impl Found {
    /// Where it is, as one string: the same file found twice has the same one.
    fn location(&self) -> String {
        self.components.join("/")
    }
}

/// Of two names of one file, the one it is listed under: the longer, then the smaller.
fn preferred(a: &str, b: &str) -> bool {
    (a.len(), std::cmp::Reverse(a)) > (b.len(), std::cmp::Reverse(b))
}

/// Files matched by the glob `patterns` (relative ones are relative to `base`; absolute ones
/// and `s3://` URLs are taken as they are), named and sorted as the module docs say.
pub fn discover(base: &Path, patterns: &[String]) -> Result<Vec<Input>> {
    let base_abs = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
    // By location: each file once, under its preferred name.
    let mut located: BTreeMap<String, (String, Found)> = BTreeMap::new();
    for pattern in patterns {
        let (pattern_base, files) = if is_url(pattern) {
            list_bucket(pattern)?
        } else {
            walk_local(base, &base_abs, pattern)?
        };
        for f in files {
            let name = f.components[pattern_base.len()..].join("/");
            match located.entry(f.location()) {
                Entry::Vacant(v) => {
                    v.insert((name, f));
                }
                Entry::Occupied(mut o) if preferred(&name, &o.get().0) => o.get_mut().0 = name,
                Entry::Occupied(_) => {}
            }
        }
    }
    let mut named: BTreeMap<String, Input> = BTreeMap::new();
    for (name, f) in located.into_values() {
        match named.entry(name) {
            Entry::Vacant(v) => {
                let name = v.key().clone();
                v.insert(Input {
                    name,
                    size: f.size,
                    at: f.at,
                });
            }
            Entry::Occupied(o) => {
                return Err(Error::Spec(format!(
                    "paths: {} and {} are both named '{}' (a file is named by its path under its \
                     pattern's directory): match them with one pattern over their common \
                     directory, e.g. '{{a,b}}/*.jsonl'",
                    o.get().shown().display(),
                    f.at.shown().display(),
                    o.key()
                )))
            }
        }
    }
    Ok(named.into_values().collect())
}

/// Components of a pattern split at '/': (the walk / list root, the pattern's base dirs).
fn split_pattern(pat: &str) -> (Vec<&str>, Vec<&str>) {
    let comps: Vec<&str> = pat.split('/').collect();
    let first_glob = comps.iter().position(|c| is_glob(c)).unwrap_or(comps.len());
    let root = comps[..first_glob].to_vec();
    // The last component always names files (a literal file's name is part of its name).
    let dirs = comps[..first_glob.min(comps.len().saturating_sub(1))].to_vec();
    (root, dirs)
}

fn matcher(pattern: &str, glob: &str) -> Result<GlobMatcher> {
    Ok(GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| Error::Spec(format!("invalid glob pattern '{pattern}': {e}")))?
        .compile_matcher())
}

fn no_match(pattern: &str, searched: &str) -> Error {
    Error::Spec(format!(
        "pattern '{pattern}' matches no file (searched in {searched})"
    ))
}

/// A local pattern's base and the files it matches.
fn walk_local(base: &Path, base_abs: &Path, pattern: &str) -> Result<(Vec<String>, Vec<Found>)> {
    let mut pat = pattern;
    while let Some(rest) = pat.strip_prefix("./") {
        pat = rest.trim_start_matches('/');
    }
    let absolute = Path::new(pat).is_absolute();
    let matcher = matcher(pattern, pat)?;
    let (root, dirs) = split_pattern(pat);
    let (root, dirs) = (PathBuf::from(root.join("/")), PathBuf::from(dirs.join("/")));
    // Walk only below the pattern's literal prefix, not the whole of `base`.
    let (root, pattern_base) = if absolute {
        (
            root,
            if dirs.as_os_str().is_empty() {
                "/".into()
            } else {
                dirs
            },
        )
    } else {
        (base_abs.join(root), base_abs.join(dirs))
    };
    let mut files = Vec::new();
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
            let candidate = if absolute {
                path
            } else {
                path.strip_prefix(base_abs).unwrap_or(path)
            };
            if !matcher.is_match_candidate(&Candidate::new(candidate)) {
                continue;
            }
            let size = entry.metadata().map_err(|e| Error::io(path, e))?.len();
            files.push(Found {
                components: components(path),
                size,
                at: Location::Local(path.to_path_buf()),
            });
        }
    }
    if files.is_empty() {
        let searched = if absolute { root } else { base.to_path_buf() };
        return Err(no_match(pattern, &searched.display().to_string()));
    }
    Ok((components(&pattern_base), files))
}

/// A URL pattern's base and the objects it matches (listed under its base).
fn list_bucket(pattern: &str) -> Result<(Vec<String>, Vec<Found>)> {
    let (bucket, key_pattern) = Bucket::open(pattern)?;
    let matcher = matcher(pattern, &key_pattern)?;
    let (_, dirs) = split_pattern(&key_pattern);
    let dirs: Vec<&str> = dirs.into_iter().filter(|c| !c.is_empty()).collect();
    let prefix = dirs.join("/");
    let root = bucket.url("");
    let mut files = Vec::new();
    for object in bucket.list(&prefix)? {
        if !matcher.is_match(&object.key) {
            continue;
        }
        let mut components = vec![root.clone()];
        components.extend(object.key.split('/').map(str::to_string));
        files.push(Found {
            components,
            size: object.size,
            at: Location::Remote {
                bucket: bucket.clone(),
                key: object.key,
                etag: object.etag,
            },
        });
    }
    if files.is_empty() {
        return Err(no_match(pattern, &bucket.url(&prefix)));
    }
    let mut base = vec![root];
    base.extend(dirs.into_iter().map(str::to_string));
    Ok((base, files))
}

/// A path's components as strings (the root as "/").
fn components(path: &Path) -> Vec<String> {
    path.components()
        .map(|c| match c {
            Component::RootDir => "/".to_string(),
            other => other.as_os_str().to_string_lossy().into_owned(),
        })
        .collect()
}
