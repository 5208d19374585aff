//! Digests (`C_Digest*`): a hash over the caller's data, single- or multi-part.

#![forbid(unsafe_code)]

use super::*;

/// A digest in progress.
pub(super) struct DigestOp {
    hasher: Hasher,
    /// `C_DigestUpdate` was called: only `C_DigestFinal` may finish.
    multi: bool,
    /// `C_Digest` was called (a length query too): it is single-part now,
    /// and `C_DigestUpdate`, `C_DigestKey`, `C_DigestFinal` are
    /// `CKR_OPERATION_ACTIVE` (which ends it), as SoftHSM answers.
    single: bool,
}

/// A multi-part call on a digest that `C_Digest` made single-part.
fn single_part_only() -> Error {
    Error::with(
        CKR_OPERATION_ACTIVE,
        "C_Digest was called on this digest: finish it with C_Digest (or start a new one for \
         C_DigestUpdate/C_DigestFinal)",
    )
}

impl Provider {
    pub fn digest_init(&self, h: CK_SESSION_HANDLE, mech: &Mechanism) -> Result<()> {
        self.in_session(h, |s| {
            s.digest.ensure_idle()?;
            let hasher = Hasher::for_digest(mech.ty).ok_or(Error::rv(CKR_MECHANISM_INVALID))?;
            if !mech.param.is_empty() {
                return Err(Error::rv(CKR_MECHANISM_PARAM_INVALID));
            }
            s.digest.start(DigestOp {
                hasher,
                multi: false,
                single: false,
            })
        })
    }

    pub fn digest(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_session(h, |s| {
            let done = s.digest.finish(out, |op| {
                if op.multi {
                    return Err(Error::rv(CKR_OPERATION_ACTIVE));
                }
                op.single = true;
                Ok(op.hasher.output_len())
            })?;
            Ok(match done {
                Output::Length(len) => len,
                Output::Ready(mut op, out) => {
                    op.hasher.update(data);
                    op.finish(out)
                }
            })
        })
    }

    pub fn digest_update(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
        self.in_session(h, |s| {
            s.digest.with(|op| {
                if op.single {
                    return Err(single_part_only());
                }
                op.hasher.update(data);
                op.multi = true;
                Ok(())
            })
        })
    }

    pub fn digest_final(&self, h: CK_SESSION_HANDLE, out: Option<&mut [u8]>) -> Result<usize> {
        self.in_session(h, |s| {
            Ok(
                match s.digest.finish(out, |op| {
                    if op.single {
                        return Err(single_part_only());
                    }
                    Ok(op.hasher.output_len())
                })? {
                    Output::Length(len) => len,
                    Output::Ready(op, out) => op.finish(out),
                },
            )
        })
    }
}

impl Provider {
    /// `C_DigestKey`: digests a secret key's value into the running digest.
    /// Only a session secret key that is not sensitive may be digested; a
    /// sensitive one (every derived key, every key of an asset) is
    /// `CKR_KEY_INDIGESTIBLE`, as are keys that are not secret keys. Like
    /// `C_DigestUpdate`, an error ends the digest.
    pub fn digest_key(&self, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Result<()> {
        let obj = self.session_object(key);
        // Else an asset's key object (always sensitive), or no object.
        let exists = obj.is_some() || self.object(key, CKR_KEY_HANDLE_INVALID).is_ok();
        self.in_session(h, |s| {
            s.digest.with(|op| {
                if op.single {
                    return Err(single_part_only());
                }
                if !exists {
                    return Err(Error::rv(CKR_KEY_HANDLE_INVALID));
                }
                let value = obj
                    .as_ref()
                    .filter(|o| o.class == Class::Secret && !o.sensitive && o.hd.is_none())
                    .and_then(|o| o.key.as_ref())
                    .ok_or_else(|| {
                        Error::with(
                            CKR_KEY_INDIGESTIBLE,
                            "C_DigestKey digests only session secret keys that are not \
                             sensitive: this key's value never leaves the token",
                        )
                    })?;
                op.hasher.update(value);
                op.multi = true;
                Ok(())
            })
        })
    }
}

impl DigestOp {
    /// Writes the digest into `out` (long enough); its length.
    fn finish(self, out: &mut [u8]) -> usize {
        let len = self.hasher.output_len();
        out[..len].copy_from_slice(&self.hasher.finish());
        len
    }
}
