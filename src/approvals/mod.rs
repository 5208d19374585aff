//! k-of-n approvals (design §6.5): approvers' public keys and their signatures, the canonical bytes of a request, and quorum rules (pure; no store, no I/O).
//!
//! The store keeps approvers, quorum rules and requests as sealed rows
//! (`store::approvals`); this module only encodes, parses and judges.

#![forbid(unsafe_code)]

pub mod keys;
