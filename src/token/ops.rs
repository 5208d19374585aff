//! What every session operation shares: the typed slot that starts, holds and ends it, its audit details, and the message it collects.

#![forbid(unsafe_code)]

use sha2::{Digest, Sha256};

use crate::audit::{Event, Record};
use crate::ck::*;
use crate::error::{Error, Result};
use crate::mechanisms::Hasher;
use crate::metrics::process::OpClock;

/// One kind of operation in a session (sign, verify, digest, find…): the one
/// place that answers `CKR_OPERATION_NOT_INITIALIZED` when none runs and
/// `CKR_OPERATION_ACTIVE` when an init finds one running (a single-part call
/// after `C_*Update` is refused by the operation itself).
pub(super) struct OpSlot<T>(Option<T>);

impl<T> Default for OpSlot<T> {
    fn default() -> Self {
        OpSlot(None)
    }
}

/// What an output-producing call found: the length to answer (a length
/// query), or the operation taken out of its slot with the caller's buffer.
pub(super) enum Output<'o, T> {
    Length(usize),
    Ready(T, &'o mut [u8]),
}

impl<T> OpSlot<T> {
    /// `CKR_OPERATION_ACTIVE` while an operation runs.
    pub fn ensure_idle(&self) -> Result<()> {
        if self.0.is_some() {
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        Ok(())
    }

    /// Starts `op`, unless one already runs.
    pub fn start(&mut self, op: T) -> Result<()> {
        self.ensure_idle()?;
        self.0 = Some(op);
        Ok(())
    }

    /// Takes the running operation out: it ends here, whatever follows.
    pub fn take(&mut self) -> Result<T> {
        self.0
            .take()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))
    }

    /// Runs `f` on the running operation; an error from `f` ends it.
    pub fn with<R>(&mut self, f: impl FnOnce(&mut T) -> Result<R>) -> Result<R> {
        let op = self
            .0
            .as_mut()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        let r = f(op);
        if r.is_err() {
            self.0 = None;
        }
        r
    }

    /// The running operation, left running whatever the caller then does
    /// (the message-based API: a message's error does not end it).
    pub fn peek(&mut self) -> Result<&mut T> {
        self.0
            .as_mut()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))
    }

    /// Ends the operation (its keys are dropped, wiped), if one runs.
    pub fn end(&mut self) {
        self.0 = None;
    }

    /// Ends the operation if it runs and `f` says so.
    pub fn end_if(&mut self, f: impl FnOnce(&T) -> bool) {
        if self.0.as_ref().is_some_and(f) {
            self.0 = None;
        }
    }

    /// The start of an output-producing end (`C_Sign`, `C_EncryptFinal`…):
    /// `len` checks the operation and tells the output length (its error
    /// ends the operation); `out` `None` is a length query and a short
    /// buffer is `CKR_BUFFER_TOO_SMALL`, both keeping the operation;
    /// otherwise the operation is taken out, with the buffer, to complete.
    pub fn finish<'o>(
        &mut self,
        out: Option<&'o mut [u8]>,
        len: impl FnOnce(&mut T) -> Result<usize>,
    ) -> Result<Output<'o, T>> {
        let len = self.with(len)?;
        let Some(out) = out else {
            return Ok(Output::Length(len));
        };
        if out.len() < len {
            return Err(Error::rv(CKR_BUFFER_TOO_SMALL));
        }
        Ok(Output::Ready(self.take()?, out))
    }
}

/// What an operation's audit record says besides its result.
pub(super) struct OpAudit {
    session: CK_SESSION_HANDLE,
    /// The asset id, or for a session key its description (no asset).
    asset: String,
    session_key: bool,
    mech: CK_MECHANISM_TYPE,
    pub input: Sha256,
    /// The detail of an asset's record: an HD child's path.
    pub detail: Option<String>,
    /// The provider's time on the operation (`metrics::process`).
    pub clock: OpClock,
}

impl OpAudit {
    pub fn new(
        session: CK_SESSION_HANDLE,
        asset: String,
        session_key: bool,
        mech: CK_MECHANISM_TYPE,
    ) -> OpAudit {
        OpAudit {
            session,
            asset,
            session_key,
            mech,
            input: Sha256::new(),
            detail: None,
            clock: OpClock::begin(),
        }
    }

    /// The use of an HD child of an asset version: its records name the
    /// asset and the child's path.
    pub fn child(
        session: CK_SESSION_HANDLE,
        child: &super::hd::HdChild,
        mech: CK_MECHANISM_TYPE,
    ) -> OpAudit {
        let mut a = OpAudit::new(session, child.asset_id.clone(), false, mech);
        a.detail = Some(child.path.record_detail());
        a
    }

    /// The asset id, or the session key's description.
    pub fn name(&self) -> &str {
        &self.asset
    }

    pub fn record(&self, event: Event, rv: CK_RV, version: Option<u32>) -> Record {
        let r = Record::new(event, rv);
        let mut r = if self.session_key {
            r.detail(self.asset.clone())
        } else {
            let r = r.asset(&self.asset, version);
            match &self.detail {
                Some(d) => r.detail(d.clone()),
                None => r,
            }
        }
        .session(self.session);
        r.mechanism = Some(self.mech);
        r.input_sha256 = Some(self.input.clone().finalize().into());
        r
    }
}

/// What a signature or verification is computed over, as the parts arrive:
/// a running hash (ECDSA with a hash), the parts themselves (HMAC, computed
/// with the key at the end; the caller's data, not secret), or nothing
/// (raw `CKM_ECDSA` signs one digest, single-part only).
pub(super) struct Message {
    hasher: Option<Hasher>,
    parts: Option<Vec<u8>>,
    /// `C_*Update` was called: only `C_*Final` may finish.
    pub multi: bool,
}

impl Message {
    pub fn new(hasher: Option<Hasher>, hmac: bool) -> Message {
        Message {
            hasher,
            parts: hmac.then(Vec::new),
            multi: false,
        }
    }

    /// Whether the mechanism takes its input in parts.
    pub fn multi_part(&self) -> bool {
        self.hasher.is_some() || self.parts.is_some()
    }

    /// A `C_*Update` part; `false` (nothing taken) when single-part only.
    pub fn update(&mut self, data: &[u8]) -> bool {
        if let Some(h) = self.hasher.as_mut() {
            h.update(data);
        } else if let Some(p) = self.parts.as_mut() {
            p.extend_from_slice(data);
        } else {
            return false;
        }
        self.multi = true;
        true
    }

    /// The digest (for HMAC: the message) of everything given, `last` too.
    pub fn with_last(&self, last: &[u8]) -> Vec<u8> {
        match (&self.hasher, &self.parts) {
            (Some(h), _) => {
                let mut h = h.clone();
                h.update(last);
                h.finish()
            }
            (None, Some(p)) => [p.as_slice(), last].concat(),
            (None, None) => last.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rv<T>(r: Result<T>) -> CK_RV {
        r.map_or_else(|e| e.rv, |_| CKR_OK)
    }

    #[test]
    fn a_slot_answers_the_operation_codes() {
        let mut slot = OpSlot::<u32>::default();
        assert_eq!(rv(slot.take()), CKR_OPERATION_NOT_INITIALIZED);
        assert_eq!(rv(slot.with(|_| Ok(()))), CKR_OPERATION_NOT_INITIALIZED);
        assert_eq!(rv(slot.start(1)), CKR_OK);
        assert_eq!(rv(slot.start(2)), CKR_OPERATION_ACTIVE);
        assert_eq!(rv(slot.ensure_idle()), CKR_OPERATION_ACTIVE);
        // A length query and a short buffer keep the operation.
        assert!(matches!(
            slot.finish(None, |_| Ok(4)),
            Ok(Output::Length(4))
        ));
        let mut short = [0u8; 3];
        assert_eq!(
            rv(slot.finish(Some(&mut short), |_| Ok(4))),
            CKR_BUFFER_TOO_SMALL
        );
        let mut out = [0u8; 4];
        assert!(matches!(
            slot.finish(Some(&mut out), |_| Ok(4)),
            Ok(Output::Ready(1, _))
        ));
        assert_eq!(rv(slot.take()), CKR_OPERATION_NOT_INITIALIZED);
        // An error from the operation's check ends it.
        slot.start(3).unwrap();
        let failed = slot.finish(None, |_| Err(Error::rv(CKR_OPERATION_ACTIVE)));
        assert_eq!(rv(failed), CKR_OPERATION_ACTIVE);
        assert_eq!(rv(slot.ensure_idle()), CKR_OK);
        slot.start(4).unwrap();
        slot.end_if(|&n| n == 5);
        assert_eq!(rv(slot.ensure_idle()), CKR_OPERATION_ACTIVE);
        slot.end();
        assert_eq!(rv(slot.ensure_idle()), CKR_OK);
    }
}
