//! Dedup: exact and MinHash-LSH near-duplicate detection (see issue "Deduplication in mix build").
