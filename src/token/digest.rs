//! Digests (`C_Digest*`): a hash over the caller's data, single- or multi-part.

#![forbid(unsafe_code)]

use super::*;

/// A digest in progress.
pub(super) struct DigestOp {
    hasher: Hasher,
    /// `C_DigestUpdate` was called: only `C_DigestFinal` may finish.
    multi: bool,
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
                op.hasher.update(data);
                op.multi = true;
                Ok(())
            })
        })
    }

    pub fn digest_final(&self, h: CK_SESSION_HANDLE, out: Option<&mut [u8]>) -> Result<usize> {
        self.in_session(h, |s| {
            Ok(
                match s.digest.finish(out, |op| Ok(op.hasher.output_len()))? {
                    Output::Length(len) => len,
                    Output::Ready(op, out) => op.finish(out),
                },
            )
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
