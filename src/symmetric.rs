//! Transitional paths of the secret-key mechanisms, now in [`crate::mechanisms`].

pub use crate::mechanisms::checkvalue::{aes_check_value, generic_check_value};
pub use crate::mechanisms::gcm::{gcm_open, gcm_seal, GcmParams};
pub use crate::mechanisms::hmac::{hmac, hmac_len, hmac_verify};
pub use crate::mechanisms::keywrap::{key_unwrap, key_wrap};
