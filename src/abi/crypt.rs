//! Encryption (PKCS#11 3.0 §5.8) and decryption (§5.10): each entry point is one shape of [`super::shape`].

entry_points! {
    /// PKCS#11 3.0 §5.8: C_EncryptInit.
    init C_EncryptInit => |p, h, mech, key| p.crypt_init(h, mech, key, true);
    /// PKCS#11 3.0 §5.8: C_Encrypt.
    in_out C_Encrypt => |p, h, data, out| p.crypt(h, true, data, out);
    /// PKCS#11 3.0 §5.8: C_EncryptUpdate.
    update C_EncryptUpdate => |p, h, data, consume| p.crypt_part(h, true, data, consume);
    /// PKCS#11 3.0 §5.8: C_EncryptFinal.
    output C_EncryptFinal => |p, h, out| p.crypt_final(h, true, out);
    /// PKCS#11 3.0 §5.10: C_DecryptInit.
    init C_DecryptInit => |p, h, mech, key| p.crypt_init(h, mech, key, false);
    /// PKCS#11 3.0 §5.10: C_Decrypt.
    in_out C_Decrypt => |p, h, data, out| p.crypt(h, false, data, out);
    /// PKCS#11 3.0 §5.10: C_DecryptUpdate.
    update C_DecryptUpdate => |p, h, data, consume| p.crypt_part(h, false, data, consume);
    /// PKCS#11 3.0 §5.10: C_DecryptFinal.
    output C_DecryptFinal => |p, h, out| p.crypt_final(h, false, out);
}
