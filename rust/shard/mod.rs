//! Shard format.
