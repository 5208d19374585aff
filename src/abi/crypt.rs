//! Encryption (PKCS#11 3.0 §5.8) and decryption (§5.10): each entry point is one shape of [`super::shape`].

use crate::token::Provider;

entry_points! {
    /// PKCS#11 3.0 §5.8: C_EncryptInit.
    init C_EncryptInit => Provider::encrypt_init;
    /// PKCS#11 3.0 §5.8: C_Encrypt.
    in_out C_Encrypt => Provider::encrypt;
    /// PKCS#11 3.0 §5.8: C_EncryptUpdate.
    update C_EncryptUpdate => Provider::encrypt_update;
    /// PKCS#11 3.0 §5.8: C_EncryptFinal.
    output C_EncryptFinal => Provider::encrypt_final;
    /// PKCS#11 3.0 §5.10: C_DecryptInit.
    init C_DecryptInit => Provider::decrypt_init;
    /// PKCS#11 3.0 §5.10: C_Decrypt.
    in_out C_Decrypt => Provider::decrypt;
    /// PKCS#11 3.0 §5.10: C_DecryptUpdate.
    update C_DecryptUpdate => Provider::decrypt_update;
    /// PKCS#11 3.0 §5.10: C_DecryptFinal.
    output C_DecryptFinal => Provider::decrypt_final;
}
