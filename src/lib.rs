//! p11derive: a PKCS#11 provider whose keys are derived on demand from one
//! root secret held in a backing HSM.
//!
//! Data flows one way: [`abi`] (the exported C surface) → [`token`] (slot,
//! sessions, login, handles) → [`objects`] (how an asset version looks as
//! PKCS#11 objects) → [`mechanisms`] (ECDSA, digests) → [`derive`] (the
//! `p11derive-v1` scheme) → [`backend`] (the chained PKCS#11 module). The
//! [`store`] (assets and counters in SQLite) serves beside that path.

pub mod abi;
pub mod audit;
pub mod backend;
pub mod ck;
pub mod config;
pub mod derive;
pub mod error;
pub mod lifecycle;
pub mod log;
pub mod mechanisms;
pub mod objects;
pub mod p256_base;
pub mod process;
pub mod secure;
pub mod store;
pub mod symmetric;
pub mod token;

pub use error::{Error, Result};
