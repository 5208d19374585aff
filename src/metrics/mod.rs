//! Metrics for Prometheus: the exposition text both the CLI (`p11derive
//! metrics`) and the provider's per-process files write (docs/operations.md).

pub mod process;
pub mod text;
pub mod writer;
