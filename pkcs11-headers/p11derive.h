/*
 * p11derive.h - vendor extensions of the p11derive PKCS#11 provider.
 *
 * Include after pkcs11.h. Every object p11derive shows is one version of an
 * asset: a named key derived from the backing HSM's root, an asset id and a
 * counter. These attributes let a client see which asset, which version and
 * which lifecycle state an object stands for. They are read-only.
 */
#ifndef P11DERIVE_H
#define P11DERIVE_H

/* All p11derive vendor values live under this prefix ("PD" in ASCII). */
#define CKA_P11DERIVE_BASE        (CKA_VENDOR_DEFINED | 0x50440000UL)

/* UTF-8 asset id (1-64 chars of A-Z a-z 0-9 . _ -), without any "@vN". */
#define CKA_P11DERIVE_ASSET_ID    (CKA_P11DERIVE_BASE + 0x01UL)
/* CK_ULONG: the counter (version) this object derives from; for the alias,
 * the asset's current counter. */
#define CKA_P11DERIVE_VERSION     (CKA_P11DERIVE_BASE + 0x02UL)
/* CK_ULONG: one of CKP11D_STATE_* below. */
#define CKA_P11DERIVE_STATE       (CKA_P11DERIVE_BASE + 0x03UL)
/* CK_BBOOL: CK_TRUE on the alias object (label = asset id), CK_FALSE on
 * version objects (label = asset id "@v" N). */
#define CKA_P11DERIVE_IS_ALIAS    (CKA_P11DERIVE_BASE + 0x04UL)
/* CK_ULONG: the asset's current counter and lowest usable counter. */
#define CKA_P11DERIVE_CURRENT     (CKA_P11DERIVE_BASE + 0x05UL)
#define CKA_P11DERIVE_MIN_USABLE  (CKA_P11DERIVE_BASE + 0x06UL)
/* UTF-8 key type name of the derivation scheme: "secp256k1", "p256",
 * "aes256" or "hmac-sha256". */
#define CKA_P11DERIVE_KEY_TYPE    (CKA_P11DERIVE_BASE + 0x07UL)

/* Asset states (values of CKA_P11DERIVE_STATE). */
#define CKP11D_STATE_ACTIVE       0x00000001UL
#define CKP11D_STATE_ROTATING     0x00000002UL
#define CKP11D_STATE_SUSPENDED    0x00000003UL
#define CKP11D_STATE_RETIRED      0x00000004UL

#endif /* P11DERIVE_H */
