//! The mix build pipeline.
