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
 * "ed25519", "aes256" or "hmac-sha256". */
#define CKA_P11DERIVE_KEY_TYPE    (CKA_P11DERIVE_BASE + 0x07UL)
/* 32 bytes: the chain code of the HD tree whose master is this object's
 * key (design 6.1), or of a derived child. Public key objects only. */
#define CKA_P11DERIVE_CHAIN_CODE  (CKA_P11DERIVE_BASE + 0x08UL)
/* ASCII: the BIP-32 extended public key ("xpub...", Base58Check) of a
 * secp256k1 public key object, the master (depth 0) or a derived child. */
#define CKA_P11DERIVE_XPUB        (CKA_P11DERIVE_BASE + 0x09UL)
/* CK_ULONG array: the path of a key object made by CKM_P11DERIVE_HD_CHILD
 * below the asset version's master key; empty on an asset's own objects. */
#define CKA_P11DERIVE_HD_PATH     (CKA_P11DERIVE_BASE + 0x0AUL)
/* 32 bytes: the BIP-340 x-only public key of a secp256k1 key object. */
#define CKA_P11DERIVE_XONLY_KEY   (CKA_P11DERIVE_BASE + 0x0BUL)

/* Asset states (values of CKA_P11DERIVE_STATE). */
#define CKP11D_STATE_ACTIVE       0x00000001UL
#define CKP11D_STATE_ROTATING     0x00000002UL
#define CKP11D_STATE_SUSPENDED    0x00000003UL
#define CKP11D_STATE_RETIRED      0x00000004UL

/* Vendor mechanisms live under the same prefix. */
#define CKM_P11DERIVE_BASE        (CKM_VENDOR_DEFINED | 0x50440000UL)

/* C_DeriveKey: the HD child of a key object along a path (design 6.1):
 * BIP-32 on secp256k1, SLIP-10 on P-256 and Ed25519 (hardened only). The
 * parameter is an array of CK_ULONG child indices, 1 to 255 of them, each
 * below 2^32; an index with CKP11D_HARDENED set is hardened. On a private
 * key object the result is a session private key object (sensitive, never
 * extractable) that signs with the parent's mechanisms; on a public key
 * object (non-hardened paths only) a session public key object. */
#define CKM_P11DERIVE_HD_CHILD    (CKM_P11DERIVE_BASE + 0x01UL)
#define CKP11D_HARDENED           0x80000000UL

/* C_Sign/C_Verify on secp256k1: recoverable ECDSA over a 32-byte digest the
 * caller computed. The signature is r (32) || s (32) || v (1), s low
 * (<= n/2), v in {0, 1} the recovery id (Ethereum adds 27 or the EIP-155
 * offset itself). */
#define CKM_P11DERIVE_ECDSA_RECOVERABLE (CKM_P11DERIVE_BASE + 0x02UL)

/* C_Sign/C_Verify on secp256k1: BIP-340 Schnorr signatures (64 bytes) over
 * the message as given (32 bytes for Taproot); the auxiliary randomness
 * comes from the backing HSM's RNG. */
#define CKM_P11DERIVE_BIP340      (CKM_P11DERIVE_BASE + 0x03UL)

#endif /* P11DERIVE_H */
