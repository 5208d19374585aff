//! The error every PKCS#11 entry point returns: a return code for the caller and, where a person must act, a message for the log.

use std::fmt;

use crate::ck::*;

/// A failed PKCS#11 operation.
///
/// `rv` is what the caller receives. `message`, when present, is logged at the
/// C boundary: it names the file, key, object or value involved and the fix.
/// Messages never contain key material, PRF outputs or PINs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub rv: CK_RV,
    pub message: Option<String>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A return code that speaks for itself (a short buffer, a bad handle).
    pub const fn rv(rv: CK_RV) -> Self {
        Error { rv, message: None }
    }

    /// A return code together with a message for the person reading the log.
    pub fn with(rv: CK_RV, message: impl Into<String>) -> Self {
        Error {
            rv,
            message: Some(message.into()),
        }
    }
}

impl From<CK_RV> for Error {
    fn from(rv: CK_RV) -> Self {
        Error::rv(rv)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "{} ({})", m, rv_name(self.rv)),
            None => f.write_str(rv_name(self.rv)),
        }
    }
}

impl std::error::Error for Error {}

/// The name of a return code, for logs and command-line messages.
pub fn rv_name(rv: CK_RV) -> &'static str {
    name_in(RV_NAMES, rv).unwrap_or("CKR_(unnamed)")
}

/// Each constant beside its name, for messages.
macro_rules! named {
    ($($n:ident),* $(,)?) => {
        [$(($n, stringify!($n))),*]
    };
}

/// The first name `table` gives `value`.
fn name_in(table: &[(CK_ULONG, &'static str)], value: CK_ULONG) -> Option<&'static str> {
    table.iter().find(|(v, _)| *v == value).map(|(_, n)| *n)
}

/// The values of a table of names, in order.
pub const fn values<const N: usize>(table: [(CK_ULONG, &str); N]) -> [CK_ULONG; N] {
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = table[i].0;
        i += 1;
    }
    out
}

const RV_NAMES: &[(CK_RV, &str)] = &named!(
    CKR_OK,
    CKR_CANCEL,
    CKR_HOST_MEMORY,
    CKR_SLOT_ID_INVALID,
    CKR_GENERAL_ERROR,
    CKR_FUNCTION_FAILED,
    CKR_ARGUMENTS_BAD,
    CKR_NO_EVENT,
    CKR_NEED_TO_CREATE_THREADS,
    CKR_CANT_LOCK,
    CKR_ATTRIBUTE_READ_ONLY,
    CKR_ATTRIBUTE_SENSITIVE,
    CKR_ATTRIBUTE_TYPE_INVALID,
    CKR_ATTRIBUTE_VALUE_INVALID,
    CKR_ACTION_PROHIBITED,
    CKR_DATA_INVALID,
    CKR_DATA_LEN_RANGE,
    CKR_DEVICE_ERROR,
    CKR_DEVICE_MEMORY,
    CKR_DEVICE_REMOVED,
    CKR_ENCRYPTED_DATA_INVALID,
    CKR_ENCRYPTED_DATA_LEN_RANGE,
    CKR_FUNCTION_CANCELED,
    CKR_FUNCTION_NOT_PARALLEL,
    CKR_FUNCTION_NOT_SUPPORTED,
    CKR_KEY_HANDLE_INVALID,
    CKR_KEY_SIZE_RANGE,
    CKR_KEY_TYPE_INCONSISTENT,
    CKR_KEY_FUNCTION_NOT_PERMITTED,
    CKR_MECHANISM_INVALID,
    CKR_MECHANISM_PARAM_INVALID,
    CKR_OBJECT_HANDLE_INVALID,
    CKR_OPERATION_ACTIVE,
    CKR_OPERATION_NOT_INITIALIZED,
    CKR_PIN_INCORRECT,
    CKR_PIN_INVALID,
    CKR_PIN_LEN_RANGE,
    CKR_PIN_EXPIRED,
    CKR_PIN_LOCKED,
    CKR_SESSION_CLOSED,
    CKR_SESSION_COUNT,
    CKR_SESSION_HANDLE_INVALID,
    CKR_SESSION_PARALLEL_NOT_SUPPORTED,
    CKR_SESSION_READ_ONLY,
    CKR_SESSION_EXISTS,
    CKR_SESSION_READ_ONLY_EXISTS,
    CKR_SESSION_READ_WRITE_SO_EXISTS,
    CKR_SIGNATURE_INVALID,
    CKR_SIGNATURE_LEN_RANGE,
    CKR_TEMPLATE_INCOMPLETE,
    CKR_TEMPLATE_INCONSISTENT,
    CKR_TOKEN_NOT_PRESENT,
    CKR_TOKEN_NOT_RECOGNIZED,
    CKR_TOKEN_WRITE_PROTECTED,
    CKR_USER_ALREADY_LOGGED_IN,
    CKR_USER_NOT_LOGGED_IN,
    CKR_USER_PIN_NOT_INITIALIZED,
    CKR_USER_TYPE_INVALID,
    CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    CKR_USER_TOO_MANY_TYPES,
    CKR_DOMAIN_PARAMS_INVALID,
    CKR_CURVE_NOT_SUPPORTED,
    CKR_BUFFER_TOO_SMALL,
    CKR_RANDOM_SEED_NOT_SUPPORTED,
    CKR_RANDOM_NO_RNG,
    CKR_CRYPTOKI_NOT_INITIALIZED,
    CKR_CRYPTOKI_ALREADY_INITIALIZED,
    CKR_FUNCTION_REJECTED,
    CKR_OPERATION_CANCEL_FAILED,
);

/// The name of an attribute type, for messages (hex when unnamed here).
pub fn attr_name(ty: CK_ATTRIBUTE_TYPE) -> String {
    name_in(ATTR_NAMES, ty).map_or_else(|| format!("0x{ty:x}"), String::from)
}

const ATTR_NAMES: &[(CK_ATTRIBUTE_TYPE, &str)] = &named!(
    CKA_CLASS,
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_LABEL,
    CKA_VALUE,
    CKA_KEY_TYPE,
    CKA_SUBJECT,
    CKA_ID,
    CKA_SENSITIVE,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_SIGN,
    CKA_SIGN_RECOVER,
    CKA_VERIFY,
    CKA_VERIFY_RECOVER,
    CKA_DERIVE,
    CKA_START_DATE,
    CKA_END_DATE,
    CKA_EC_PARAMS,
    CKA_EC_POINT,
    CKA_EXTRACTABLE,
    CKA_LOCAL,
    CKA_NEVER_EXTRACTABLE,
    CKA_ALWAYS_SENSITIVE,
    CKA_MODIFIABLE,
    CKA_COPYABLE,
    CKA_DESTROYABLE,
    CKA_TRUSTED,
    CKA_WRAP_WITH_TRUSTED,
    CKA_ALWAYS_AUTHENTICATE,
    CKA_VALUE_LEN,
    CKA_PUBLIC_KEY_INFO,
    CKA_ALLOWED_MECHANISMS,
    CKA_CHECK_VALUE,
);

/// The name of a mechanism, for messages (hex when unnamed here).
pub fn mech_name(m: CK_MECHANISM_TYPE) -> String {
    MECH_TABLES
        .into_iter()
        .find_map(|t| name_in(t, m))
        .map_or_else(|| format!("0x{m:x}"), String::from)
}

/// The mechanism a name of [`mech_name`]'s tables stands for (`CKM_ECDSA`,
/// any letter case); the inverse of [`mech_name`] for the named ones.
pub(crate) fn mech_by_name(name: &str) -> Option<CK_MECHANISM_TYPE> {
    MECH_TABLES
        .into_iter()
        .flatten()
        .find(|(_, n)| n.eq_ignore_ascii_case(name))
        .map(|(v, _)| *v)
}

/// Every mechanism name [`mech_name`] knows, in table order.
pub(crate) fn mech_names() -> impl Iterator<Item = &'static str> {
    MECH_TABLES.into_iter().flatten().map(|(_, n)| *n)
}

/// Every table of mechanism names.
const MECH_TABLES: [&[(CK_MECHANISM_TYPE, &str)]; 4] =
    [&MECH_NAMES, &ECDSA_NAMES, &HMAC_NAMES, &HMAC_KEY_GEN_NAMES];

/// The PKCS#11 3.0 key generation mechanisms of `CKK_SHAx_HMAC` keys.
const HMAC_KEY_GEN_NAMES: [(CK_MECHANISM_TYPE, &str); 5] = named!(
    CKM_SHA_1_KEY_GEN,
    CKM_SHA224_KEY_GEN,
    CKM_SHA256_KEY_GEN,
    CKM_SHA384_KEY_GEN,
    CKM_SHA512_KEY_GEN,
);

/// The mechanisms named beside the ECDSA and HMAC ones.
const MECH_NAMES: [(CK_MECHANISM_TYPE, &str); 22] = named!(
    CKM_EC_KEY_PAIR_GEN,
    CKM_EC_EDWARDS_KEY_PAIR_GEN,
    CKM_EDDSA,
    CKM_P11DERIVE_HD_CHILD,
    CKM_P11DERIVE_ECDSA_RECOVERABLE,
    CKM_P11DERIVE_BIP340,
    CKM_AES_KEY_GEN,
    CKM_AES_GCM,
    CKM_AES_KEY_WRAP,
    CKM_AES_KEY_WRAP_KWP,
    CKM_AES_ECB,
    CKM_AES_CBC,
    CKM_AES_CBC_PAD,
    CKM_AES_CTR,
    CKM_AES_CMAC,
    CKM_AES_CMAC_GENERAL,
    CKM_GENERIC_SECRET_KEY_GEN,
    CKM_SHA_1,
    CKM_SHA224,
    CKM_SHA256,
    CKM_SHA384,
    CKM_SHA512,
);

/// The ECDSA mechanisms by name: the list [`crate::objects::EC_MECHANISMS`] takes.
/// More than names: what EC keys allow (`CKA_ALLOWED_MECHANISMS`, template
/// checks) — a mechanism added here is allowed on them (a test in `objects`
/// pins both lists).
pub const ECDSA_NAMES: [(CK_MECHANISM_TYPE, &str); 6] = named!(
    CKM_ECDSA,
    CKM_ECDSA_SHA1,
    CKM_ECDSA_SHA224,
    CKM_ECDSA_SHA256,
    CKM_ECDSA_SHA384,
    CKM_ECDSA_SHA512,
);

/// The HMAC mechanisms by name: the list [`crate::objects::HMAC_MECHANISMS`] takes,
/// which HMAC keys allow (pinned by a test in `objects`).
pub const HMAC_NAMES: [(CK_MECHANISM_TYPE, &str); 5] = named!(
    CKM_SHA256_HMAC,
    CKM_SHA384_HMAC,
    CKM_SHA512_HMAC,
    CKM_SHA_1_HMAC,
    CKM_SHA224_HMAC,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_tables() {
        assert_eq!(rv_name(CKR_OK), "CKR_OK");
        assert_eq!(rv_name(0x7fff_fff0), "CKR_(unnamed)");
        assert_eq!(attr_name(CKA_CHECK_VALUE), "CKA_CHECK_VALUE");
        assert_eq!(attr_name(0x7fff_fff0), "0x7ffffff0");
        for m in [
            CKM_EC_KEY_PAIR_GEN,
            CKM_ECDSA_SHA384,
            CKM_AES_GCM,
            CKM_SHA512_HMAC,
        ] {
            assert!(mech_name(m).starts_with("CKM_"), "{m:#x}");
        }
        assert_eq!(mech_name(CKM_ECDSA_SHA384), "CKM_ECDSA_SHA384");
        assert_eq!(mech_name(CKM_AES_KEY_WRAP), "CKM_AES_KEY_WRAP");
        // Named nowhere here, so hex.
        assert_eq!(mech_name(0x7fff_fff0), "0x7ffffff0");
        // Each name leads back to its value, in any letter case.
        for name in mech_names() {
            let m = mech_by_name(name).expect(name);
            assert_eq!(mech_name(m), name);
            assert_eq!(mech_by_name(&name.to_ascii_lowercase()), Some(m));
        }
        assert_eq!(mech_names().count(), 38);
        assert_eq!(mech_by_name("CKM_ECDSA"), Some(CKM_ECDSA));
        assert_eq!(mech_by_name("ECDSA"), None);
        assert_eq!(mech_by_name("NO-SUCH-MECHANISM"), None);
        assert_eq!(
            values(HMAC_NAMES),
            [
                CKM_SHA256_HMAC,
                CKM_SHA384_HMAC,
                CKM_SHA512_HMAC,
                CKM_SHA_1_HMAC,
                CKM_SHA224_HMAC
            ]
        );
    }
}
