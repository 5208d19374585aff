//! The project's PKCS#11 header (`pkcs11-headers/`, read by bindgen into `p11derive::ck`) agrees with an independent binding (`cryptoki-sys`) on every constant the crate uses and on the layout of every structure that crosses the C boundary.

use std::mem::{align_of, offset_of, size_of};

use cryptoki_sys as theirs;
use p11derive::ck as ours;

/// Each name's value in both bindings (compared as u64: the two bindings type
/// some constants differently, e.g. `CK_TRUE` as `CK_BBOOL` or `CK_ULONG`).
macro_rules! same_values {
    ($($name:ident,)*) => {{
        let mut checked = Vec::new();
        $(
            assert_eq!(
                ours::$name as u64,
                theirs::$name as u64,
                "{} differs between pkcs11-headers/ and cryptoki-sys",
                stringify!($name)
            );
            checked.push(stringify!($name));
        )*
        checked
    }};
}

/// Constants of p11derive's own header that cryptoki-sys does not define
/// (vendor extensions in `p11derive.h`, or names newer than its binding).
const OURS_ONLY: &[&str] = &[
    "CKA_P11DERIVE_ASSET_ID",
    "CKA_P11DERIVE_CHAIN_CODE",
    "CKA_P11DERIVE_HD_PATH",
    "CKA_P11DERIVE_XONLY_KEY",
    "CKA_P11DERIVE_XPUB",
    "CKM_P11DERIVE_BIP340",
    "CKM_P11DERIVE_ECDSA_RECOVERABLE",
    "CKM_P11DERIVE_HD_CHILD",
    "CKP11D_HARDENED",
    "CKA_P11DERIVE_CURRENT",
    "CKA_P11DERIVE_IS_ALIAS",
    "CKA_P11DERIVE_KEY_TYPE",
    "CKA_P11DERIVE_MIN_USABLE",
    "CKA_P11DERIVE_STATE",
    "CKA_P11DERIVE_VERSION",
    "CKP11D_STATE_ACTIVE",
    "CKP11D_STATE_RETIRED",
    "CKP11D_STATE_ROTATING",
    "CKP11D_STATE_SUSPENDED",
];

#[test]
fn every_constant_the_crate_uses_has_the_value_of_an_independent_binding() {
    let checked = same_values! {
        CKA_ALLOWED_MECHANISMS,
        CKA_ALWAYS_AUTHENTICATE,
        CKA_ALWAYS_SENSITIVE,
        CKA_APPLICATION,
        CKA_CERTIFICATE_CATEGORY,
        CKA_CERTIFICATE_TYPE,
        CKA_CHECK_VALUE,
        CKA_CLASS,
        CKA_COPYABLE,
        CKA_DECRYPT,
        CKA_DERIVE,
        CKA_DESTROYABLE,
        CKA_EC_PARAMS,
        CKA_EC_POINT,
        CKA_ENCRYPT,
        CKA_END_DATE,
        CKA_EXTRACTABLE,
        CKA_HASH_OF_ISSUER_PUBLIC_KEY,
        CKA_HASH_OF_SUBJECT_PUBLIC_KEY,
        CKA_ID,
        CKA_ISSUER,
        CKA_JAVA_MIDP_SECURITY_DOMAIN,
        CKA_KEY_GEN_MECHANISM,
        CKA_KEY_TYPE,
        CKA_LABEL,
        CKA_LOCAL,
        CKA_MODIFIABLE,
        CKA_MODULUS_BITS,
        CKA_NAME_HASH_ALGORITHM,
        CKA_NEVER_EXTRACTABLE,
        CKA_OBJECT_ID,
        CKA_PRIVATE,
        CKA_PROFILE_ID,
        CKA_PUBLIC_KEY_INFO,
        CKA_SENSITIVE,
        CKA_SERIAL_NUMBER,
        CKA_SIGN,
        CKA_SIGN_RECOVER,
        CKA_START_DATE,
        CKA_SUBJECT,
        CKA_TOKEN,
        CKA_TRUSTED,
        CKA_UNIQUE_ID,
        CKA_UNWRAP,
        CKA_URL,
        CKA_VALUE,
        CKA_VALUE_LEN,
        CKA_VERIFY,
        CKA_VERIFY_RECOVER,
        CKA_WRAP,
        CKA_WRAP_WITH_TRUSTED,
        CKC_X_509,
        CKD_NULL,
        CKD_SHA1_KDF,
        CKD_SHA1_KDF_ASN1,
        CKD_SHA224_KDF,
        CKD_SHA256_KDF,
        CKD_SHA384_KDF,
        CKD_SHA512_KDF,
        CKF_DECRYPT,
        CKF_DERIVE,
        CKF_DIGEST,
        CKF_EC_F_P,
        CKF_EC_OID,
        CKF_EC_UNCOMPRESS,
        CKF_ENCRYPT,
        CKF_FIND_OBJECTS,
        CKF_GENERATE,
        CKF_GENERATE_KEY_PAIR,
        CKF_LOGIN_REQUIRED,
        CKF_MESSAGE_DECRYPT,
        CKF_MESSAGE_ENCRYPT,
        CKF_OS_LOCKING_OK,
        CKF_RNG,
        CKF_RW_SESSION,
        CKF_SERIAL_SESSION,
        CKF_SIGN,
        CKF_SO_PIN_COUNT_LOW,
        CKF_SO_PIN_FINAL_TRY,
        CKF_SO_PIN_LOCKED,
        CKF_SO_PIN_TO_BE_CHANGED,
        CKF_TOKEN_INITIALIZED,
        CKF_TOKEN_PRESENT,
        CKF_UNWRAP,
        CKF_USER_PIN_COUNT_LOW,
        CKF_USER_PIN_FINAL_TRY,
        CKF_USER_PIN_INITIALIZED,
        CKF_USER_PIN_LOCKED,
        CKF_USER_PIN_TO_BE_CHANGED,
        CKF_VERIFY,
        CKF_WRAP,
        CKG_GENERATE,
        CKG_GENERATE_COUNTER,
        CKG_GENERATE_RANDOM,
        CKG_NO_GENERATE,
        CKK_AES,
        CKK_EC,
        CKK_EC_EDWARDS,
        CKK_GENERIC_SECRET,
        CKK_SHA224_HMAC,
        CKK_SHA256_HMAC,
        CKK_SHA384_HMAC,
        CKK_SHA512_HMAC,
        CKK_SHA_1_HMAC,
        CKM_AES_CBC,
        CKM_AES_CBC_PAD,
        CKM_AES_CMAC,
        CKM_AES_CMAC_GENERAL,
        CKM_AES_CTR,
        CKM_AES_ECB,
        CKM_AES_GCM,
        CKM_AES_KEY_GEN,
        CKM_AES_KEY_WRAP,
        CKM_AES_KEY_WRAP_KWP,
        CKM_ECDH1_COFACTOR_DERIVE,
        CKM_ECDH1_DERIVE,
        CKM_ECDSA,
        CKM_ECDSA_SHA1,
        CKM_ECDSA_SHA224,
        CKM_ECDSA_SHA256,
        CKM_ECDSA_SHA384,
        CKM_ECDSA_SHA512,
        CKM_EC_EDWARDS_KEY_PAIR_GEN,
        CKM_EC_KEY_PAIR_GEN,
        CKM_EDDSA,
        CKM_GENERIC_SECRET_KEY_GEN,
        CKM_RSA_PKCS,
        CKM_RSA_PKCS_OAEP,
        CKM_RSA_X_509,
        CKM_SHA224,
        CKM_SHA224_HMAC,
        CKM_SHA224_KEY_GEN,
        CKM_SHA256,
        CKM_SHA256_HMAC,
        CKM_SHA256_KEY_GEN,
        CKM_SHA384,
        CKM_SHA384_HMAC,
        CKM_SHA384_KEY_GEN,
        CKM_SHA512,
        CKM_SHA512_HMAC,
        CKM_SHA512_KEY_GEN,
        CKM_SHA_1,
        CKM_SHA_1_HMAC,
        CKM_SHA_1_KEY_GEN,
        CKM_VENDOR_DEFINED,
        CKO_CERTIFICATE,
        CKO_DATA,
        CKO_PRIVATE_KEY,
        CKO_PROFILE,
        CKO_PUBLIC_KEY,
        CKO_SECRET_KEY,
        CKP_BASELINE_PROVIDER,
        CKP_PUBLIC_CERTIFICATES_TOKEN,
        CKR_ACTION_PROHIBITED,
        CKR_ARGUMENTS_BAD,
        CKR_ATTRIBUTE_READ_ONLY,
        CKR_ATTRIBUTE_SENSITIVE,
        CKR_ATTRIBUTE_TYPE_INVALID,
        CKR_ATTRIBUTE_VALUE_INVALID,
        CKR_BUFFER_TOO_SMALL,
        CKR_CANCEL,
        CKR_CANT_LOCK,
        CKR_CRYPTOKI_ALREADY_INITIALIZED,
        CKR_CRYPTOKI_NOT_INITIALIZED,
        CKR_CURVE_NOT_SUPPORTED,
        CKR_DATA_INVALID,
        CKR_DATA_LEN_RANGE,
        CKR_DEVICE_ERROR,
        CKR_DEVICE_MEMORY,
        CKR_DEVICE_REMOVED,
        CKR_DOMAIN_PARAMS_INVALID,
        CKR_ENCRYPTED_DATA_INVALID,
        CKR_ENCRYPTED_DATA_LEN_RANGE,
        CKR_FUNCTION_CANCELED,
        CKR_FUNCTION_FAILED,
        CKR_FUNCTION_NOT_PARALLEL,
        CKR_FUNCTION_NOT_SUPPORTED,
        CKR_FUNCTION_REJECTED,
        CKR_GENERAL_ERROR,
        CKR_HOST_MEMORY,
        CKR_KEY_FUNCTION_NOT_PERMITTED,
        CKR_KEY_HANDLE_INVALID,
        CKR_KEY_INDIGESTIBLE,
        CKR_KEY_NOT_WRAPPABLE,
        CKR_KEY_SIZE_RANGE,
        CKR_KEY_TYPE_INCONSISTENT,
        CKR_KEY_UNEXTRACTABLE,
        CKR_MECHANISM_INVALID,
        CKR_MECHANISM_PARAM_INVALID,
        CKR_NEED_TO_CREATE_THREADS,
        CKR_NO_EVENT,
        CKR_OBJECT_HANDLE_INVALID,
        CKR_OK,
        CKR_OPERATION_ACTIVE,
        CKR_OPERATION_CANCEL_FAILED,
        CKR_OPERATION_NOT_INITIALIZED,
        CKR_PIN_EXPIRED,
        CKR_PIN_INCORRECT,
        CKR_PIN_INVALID,
        CKR_PIN_LEN_RANGE,
        CKR_PIN_LOCKED,
        CKR_RANDOM_NO_RNG,
        CKR_RANDOM_SEED_NOT_SUPPORTED,
        CKR_SESSION_CLOSED,
        CKR_SESSION_COUNT,
        CKR_SESSION_EXISTS,
        CKR_SESSION_HANDLE_INVALID,
        CKR_SESSION_PARALLEL_NOT_SUPPORTED,
        CKR_SESSION_READ_ONLY,
        CKR_SESSION_READ_ONLY_EXISTS,
        CKR_SESSION_READ_WRITE_SO_EXISTS,
        CKR_SIGNATURE_INVALID,
        CKR_SIGNATURE_LEN_RANGE,
        CKR_SLOT_ID_INVALID,
        CKR_TEMPLATE_INCOMPLETE,
        CKR_TEMPLATE_INCONSISTENT,
        CKR_TOKEN_NOT_PRESENT,
        CKR_TOKEN_NOT_RECOGNIZED,
        CKR_TOKEN_WRITE_PROTECTED,
        CKR_UNWRAPPING_KEY_HANDLE_INVALID,
        CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
        CKR_USER_ALREADY_LOGGED_IN,
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
        CKR_USER_NOT_LOGGED_IN,
        CKR_USER_PIN_NOT_INITIALIZED,
        CKR_USER_TOO_MANY_TYPES,
        CKR_USER_TYPE_INVALID,
        CKR_WRAPPED_KEY_INVALID,
        CKR_WRAPPED_KEY_LEN_RANGE,
        CKR_WRAPPING_KEY_HANDLE_INVALID,
        CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
        CKS_RO_PUBLIC_SESSION,
        CKS_RO_USER_FUNCTIONS,
        CKS_RW_PUBLIC_SESSION,
        CKS_RW_SO_FUNCTIONS,
        CKS_RW_USER_FUNCTIONS,
        CKU_CONTEXT_SPECIFIC,
        CKU_SO,
        CKU_USER,
        CK_EFFECTIVELY_INFINITE,
        CK_FALSE,
        CK_TRUE,
        CK_UNAVAILABLE_INFORMATION,
    };
    // Every constant the sources name is checked above or listed as ours:
    // a new constant that escaped the comparison fails here.
    let mut used = std::collections::BTreeSet::new();
    // The library and the benchmark (which drives modules through `ck`).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src"), root.join("tools/bench")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("ck.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    let constant = word.starts_with("CK")
                        && word[2..].starts_with(|c: char| c.is_ascii_uppercase())
                        && word.contains('_')
                        && !word.ends_with('_')
                        && word
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                    if constant {
                        used.insert(word.to_string());
                    }
                }
            }
        }
    }
    let missing: Vec<_> = used
        .iter()
        .filter(|n| !checked.contains(&n.as_str()) && !OURS_ONLY.contains(&n.as_str()))
        .filter(|n| !n.starts_with("CK_") || !is_type(n))
        .collect();
    assert!(
        missing.is_empty(),
        "constants used in src/ but not compared with cryptoki-sys (add them to tests/header.rs): {missing:?}"
    );
}

/// `CK_*` names that are types, not constants (the scan above sees both).
fn is_type(name: &str) -> bool {
    !matches!(
        name,
        "CK_TRUE"
            | "CK_FALSE"
            | "CK_UNAVAILABLE_INFORMATION"
            | "CK_INVALID_HANDLE"
            | "CK_EFFECTIVELY_INFINITE"
    )
}

/// Size, alignment and every field's offset of a structure, in both bindings.
macro_rules! same_layout {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        assert_eq!(size_of::<ours::$ty>(), size_of::<theirs::$ty>(), "size of {}", stringify!($ty));
        assert_eq!(align_of::<ours::$ty>(), align_of::<theirs::$ty>(), "alignment of {}", stringify!($ty));
        $(
            assert_eq!(
                offset_of!(ours::$ty, $field),
                offset_of!(theirs::$ty, $field),
                "offset of {}.{}",
                stringify!($ty),
                stringify!($field)
            );
        )*
    };
}

#[test]
fn every_structure_crossing_the_boundary_has_the_same_layout() {
    same_layout!(CK_VERSION { major, minor });
    same_layout!(CK_INFO {
        cryptokiVersion,
        manufacturerID,
        flags,
        libraryDescription,
        libraryVersion
    });
    same_layout!(CK_SLOT_INFO {
        slotDescription,
        manufacturerID,
        flags,
        hardwareVersion,
        firmwareVersion
    });
    same_layout!(CK_TOKEN_INFO {
        label,
        manufacturerID,
        model,
        serialNumber,
        flags,
        ulMaxSessionCount,
        ulSessionCount,
        ulMaxRwSessionCount,
        ulRwSessionCount,
        ulMaxPinLen,
        ulMinPinLen,
        ulTotalPublicMemory,
        ulFreePublicMemory,
        ulTotalPrivateMemory,
        ulFreePrivateMemory,
        hardwareVersion,
        firmwareVersion,
        utcTime,
    });
    same_layout!(CK_SESSION_INFO {
        slotID,
        state,
        flags,
        ulDeviceError
    });
    same_layout!(CK_ATTRIBUTE {
        type_,
        pValue,
        ulValueLen
    });
    same_layout!(CK_DATE { year, month, day });
    same_layout!(CK_EDDSA_PARAMS {
        phFlag,
        ulContextDataLen,
        pContextData
    });
    same_layout!(CK_MECHANISM {
        mechanism,
        pParameter,
        ulParameterLen
    });
    same_layout!(CK_MECHANISM_INFO {
        ulMinKeySize,
        ulMaxKeySize,
        flags
    });
    same_layout!(CK_GCM_PARAMS {
        pIv,
        ulIvLen,
        ulIvBits,
        pAAD,
        ulAADLen,
        ulTagBits
    });
    same_layout!(CK_C_INITIALIZE_ARGS {
        CreateMutex,
        DestroyMutex,
        LockMutex,
        UnlockMutex,
        flags,
        pReserved
    });
    same_layout!(CK_INTERFACE {
        pInterfaceName,
        pFunctionList,
        flags
    });
    // Every member of both function tables, from the list the tables are
    // built from.
    macro_rules! function_tables {
        ([$($f:ident),* $(,)?], [$($g:ident),* $(,)?]) => {
            same_layout!(CK_FUNCTION_LIST { version, $($f),* });
            same_layout!(CK_FUNCTION_LIST_3_0 { version, $($f,)* $($g),* });
        };
    }
    p11derive::pkcs11_function_names!(function_tables);
}
