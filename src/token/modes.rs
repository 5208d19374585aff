//! AES-ECB, AES-CBC, AES-CBC-PAD and AES-CTR encryption and decryption (single- and multi-part) with session keys and derived AES assets.
//!
//! Unlike GCM, these modes release output as the parts arrive (what
//! PKCS#11 callers expect of `C_EncryptUpdate`): every call that releases
//! output first commits its audit record (for a derived key: with the
//! asset's state re-checked, as a signature's; `Use::Produce` to encrypt,
//! `Use::Open` to decrypt), and the final call always records the
//! operation's end. The record of an encryption carries the SHA-256 of the
//! ciphertext released (never of the plaintext), that of a decryption the
//! SHA-256 of the ciphertext given so far; the IV or initial counter block
//! goes in its detail.
//!
//! A derived asset uses its block-mode subkey (`aes_modes::subkey`), so
//! ECB/CTR never act as an encryption oracle for its GCM key. With no tag
//! to tell which version encrypted, a decryption through the alias uses the
//! current version's key; data of an older version is decrypted through
//! that version's object.

#![forbid(unsafe_code)]

use sha2::Digest;

use super::crypt::{crypt_slot, Crypt};
use super::*;
use crate::mechanisms::aes_modes::{self, ModeParams, Stream};

/// An ECB, CBC, CBC-PAD or CTR operation in progress.
pub(super) struct BlockOp {
    /// The login this operation began in; `None`: a public session key,
    /// which needs none.
    epoch: Option<u64>,
    /// `None`: a session key.
    asset: Option<i64>,
    version: u32,
    /// The session key, or the derived version's block-mode subkey (both
    /// in the locked arena).
    key: KeyRef,
    stream: Stream,
    /// The operation's IV as the caller gave it (CBC, CTR; ECB has none),
    /// named by every part's record (the stream's own moves on as it
    /// chains).
    iv: Option<[u8; 16]>,
    /// `C_*Update` was called: only `C_*Final` may finish.
    multi: bool,
    /// A single-part length query was answered: only the single-part call
    /// may follow.
    single: bool,
    /// Records committed so far (the parts that released output).
    parts: u32,
    audit: OpAudit,
}

fn block(op: &mut Crypt) -> Result<&mut BlockOp> {
    match op {
        Crypt::Block(b) => Ok(b),
        Crypt::Gcm(_) => Err(Error::rv(CKR_OPERATION_NOT_INITIALIZED)),
    }
}

impl Provider {
    /// `C_EncryptInit` / `C_DecryptInit` with `CKM_AES_ECB`, `CKM_AES_CBC`,
    /// `CKM_AES_CBC_PAD` or `CKM_AES_CTR`.
    pub(super) fn block_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        key: CK_OBJECT_HANDLE,
        encrypting: bool,
    ) -> Result<()> {
        let session = self.idle_session(h, |s| crypt_slot(s, encrypting))?;
        let params = ModeParams::parse(mech.ty, &mech.param)?;
        let epoch = self.login.epoch();
        let k = self.aes_keys(h, mech.ty, key, encrypting, epoch)?;
        let (version, key) = k
            .keys
            .into_iter()
            .next()
            .ok_or(Error::rv(CKR_KEY_FUNCTION_NOT_PERMITTED))?;
        let key = match k.asset {
            // The subkey lives in the arena like the session keys' values.
            Some(_) => KeyRef::Session(Arc::new(aes_modes::subkey(
                key.bytes(),
                aes_modes::BLOCK_MODES_INFO,
            )?)),
            None => key,
        };
        let stream = Stream::new(params, encrypting)?;
        let op = BlockOp {
            epoch: (!k.public).then_some(epoch),
            asset: k.asset,
            version,
            key,
            iv: stream.iv().copied(),
            stream,
            multi: false,
            single: false,
            parts: 0,
            audit: OpAudit::new(h, k.name, k.asset.is_none(), mech.ty),
        };
        let mut s = lock(&session);
        let slot = crypt_slot(&mut s, encrypting);
        slot.ensure_idle()?;
        self.still_live(&op)?;
        slot.start(Crypt::Block(op))
    }

    /// `CKR_USER_NOT_LOGGED_IN` once the login the operation began in has
    /// ended (a public session key's needs none).
    fn still_live(&self, op: &BlockOp) -> Result<()> {
        match op.epoch {
            Some(epoch) => self.live(epoch),
            None => Ok(()),
        }
    }

    /// `C_EncryptUpdate` / `C_DecryptUpdate`: `out` `None` asks for the
    /// length (the part is not consumed); otherwise the completed blocks are
    /// committed to the audit log and written.
    pub(super) fn block_update(
        &self,
        h: CK_SESSION_HANDLE,
        encrypting: bool,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_session(h, |s| {
            crypt_slot(s, encrypting).with(|op| {
                let op = block(op)?;
                self.still_live(op)?;
                if op.single {
                    return Err(Error::rv(CKR_OPERATION_ACTIVE));
                }
                let Some(out) = out else {
                    let len = op.stream.try_clone()?.update(op.key.bytes(), data)?.len();
                    return Ok(len);
                };
                op.multi = true;
                if !encrypting {
                    op.audit.input.update(data);
                }
                let done = op.stream.update(op.key.bytes(), data)?;
                if !done.is_empty() {
                    self.commit_part(op, &done, encrypting, false)?;
                }
                let dst = out
                    .get_mut(..done.len())
                    .ok_or(Error::rv(CKR_BUFFER_TOO_SMALL))?;
                dst.copy_from_slice(&done);
                op.audit.clock.part();
                Ok(done.len())
            })
        })
    }

    /// `C_Encrypt` / `C_Decrypt` (`data`, `single`) and `C_EncryptFinal` /
    /// `C_DecryptFinal` (no data): the output's length (`out` `None`, or a
    /// short buffer: the operation goes on), or the output, committed.
    pub(super) fn block_finish(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
        encrypting: bool,
        single: bool,
    ) -> Result<usize> {
        let query = out.is_none();
        let done = self.in_session(h, |s| {
            crypt_slot(s, encrypting).finish(out, |op| {
                let op = block(op)?;
                self.still_live(op)?;
                if single && op.multi {
                    return Err(Error::rv(CKR_OPERATION_ACTIVE));
                }
                if !single && op.single {
                    return Err(Error::rv(CKR_OPERATION_ACTIVE));
                }
                if single && query {
                    op.single = true;
                }
                let mut trial = op.stream.try_clone()?;
                let key = op.key.bytes();
                Ok(trial.update(key, data)?.len() + trial.finish(key)?.len())
            })
        })?;
        let (op, out) = match done {
            Output::Length(len) => return Ok(len),
            Output::Ready(op, out) => (op, out),
        };
        let Crypt::Block(mut op) = op else {
            return Err(Error::rv(CKR_OPERATION_NOT_INITIALIZED));
        };
        let _timed = op.audit.clock.finishing(Operation::crypt(encrypting));
        if !encrypting {
            op.audit.input.update(data);
        }
        let key = op.key.clone();
        let mut all = op.stream.update(key.bytes(), data)?;
        let last = op.stream.finish(key.bytes())?;
        all.extend_from_slice(&last);
        self.commit_part(&mut op, &all, encrypting, true)?;
        out[..all.len()].copy_from_slice(&all);
        Ok(all.len())
    }

    /// Commits the record of output about to be released (`last`: the
    /// operation's end, recorded even when it releases nothing).
    fn commit_part(
        &self,
        op: &mut BlockOp,
        output: &[u8],
        encrypting: bool,
        last: bool,
    ) -> Result<()> {
        op.parts += 1;
        let event = if encrypting {
            Event::Encrypt
        } else {
            Event::Decrypt
        };
        let mut rec = op.audit.record(event, CKR_OK, op.asset.map(|_| op.version));
        let mut detail = Vec::new();
        if !rec.detail.is_empty() {
            detail.push(rec.detail.clone());
        }
        if let Some(iv) = &op.iv {
            detail.push(format!("iv={}", crate::store::hex(iv)));
        }
        if !last || op.parts > 1 {
            detail.push(format!(
                "part {}{}",
                op.parts,
                if last { " (final)" } else { "" }
            ));
        }
        rec = rec.detail(detail.join("; "));
        if encrypting {
            // The ciphertext released, not the plaintext (a hash of the
            // plaintext would let a reader of the store test guesses).
            rec.input_sha256 = Some(Sha256::digest(output).into());
        }
        let need = if encrypting { Use::Produce } else { Use::Open };
        self.confirm(op.asset, op.version, need, rec)
    }
}
