//! Approvers' public keys (Ed25519 or P-256, as PEM SubjectPublicKeyInfo) and the signatures they make.
