//! ECDH through `C_DeriveKey` (`CKM_ECDH1_DERIVE`, `CKM_ECDH1_COFACTOR_DERIVE`): a session secret key agreed between one of our EC private keys and a peer's public point.
//!
//! The base key is an asset's private key object (alias: the current
//! version; or a version object), an HD child's private key, or a random
//! session key pair's private half. An asset's key is used as a signature
//! uses it: the user, the policies and the version's state are checked
//! first, and the use is committed to the audit log (an `Event::Sign`
//! record with the ECDH mechanism and the SHA-256 of the peer's point) before
//! the key is made (approvals rules apply to it as to a signature whose
//! input is the peer's point). The result is a session secret key in the locked arena, sensitive
//! unless the template asks otherwise (as pkcs11-provider does to read an
//! `EVP_PKEY_derive` secret).

#![forbid(unsafe_code)]

use crate::access::{Action, UseKind};
use crate::mechanisms::ecdh::{self, Curve, Kdf};

use super::session::{check_len, wish, Kind};
use super::*;

/// `CK_ECDH1_DERIVE_PARAMS` as read from the caller.
pub struct EcdhParams {
    pub kdf: CK_ULONG,
    pub shared_data: Vec<u8>,
    pub public_data: Vec<u8>,
}

/// What the private key of an ECDH is: its curve, key, and whose it is.
struct EcdhBase {
    curve: Curve,
    key: KeyRef,
    /// The asset row and version (`None`: a session key).
    asset: Option<i64>,
    version: u32,
    audit: OpAudit,
}

/// The secret key's kind from the template's `CKA_CLASS` and `CKA_KEY_TYPE`
/// (a generic secret unless it names AES).
fn result_kind(template: &[TemplateAttr], what: &str) -> Result<Kind> {
    if find(template, CKA_CLASS).is_some_and(|v| ulong(v) != Some(CKO_SECRET_KEY)) {
        return Err(Error::with(
            CKR_TEMPLATE_INCONSISTENT,
            format!("{what}: ECDH makes a secret key: CKA_CLASS must be CKO_SECRET_KEY"),
        ));
    }
    if find(template, CKA_VALUE).is_some() {
        return Err(Error::with(
            CKR_ATTRIBUTE_READ_ONLY,
            format!("{what}: CKA_VALUE is the agreed secret; leave it out of the template"),
        ));
    }
    match find(template, CKA_KEY_TYPE).map(ulong) {
        None | Some(Some(CKK_GENERIC_SECRET)) => Ok(Kind::Generic),
        Some(Some(CKK_AES)) => Ok(Kind::Aes),
        _ => Err(Error::with(
            CKR_TEMPLATE_INCONSISTENT,
            format!("{what}: CKA_KEY_TYPE must be CKK_GENERIC_SECRET or CKK_AES"),
        )),
    }
}

impl Provider {
    /// `C_DeriveKey` with `CKM_ECDH1_DERIVE` or `CKM_ECDH1_COFACTOR_DERIVE`.
    pub fn ecdh_derive(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        params: &EcdhParams,
        base: CK_OBJECT_HANDLE,
        template: &[TemplateAttr],
    ) -> Result<CK_OBJECT_HANDLE> {
        self.session(h)?;
        if !matches!(mech.ty, CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE) {
            return Err(Error::rv(CKR_MECHANISM_INVALID));
        }
        let what = "ECDH derive";
        let kdf = Kdf::from_ck(params.kdf).ok_or_else(|| {
            Error::with(
                CKR_MECHANISM_PARAM_INVALID,
                format!(
                    "{what}: kdf {:#x} is not supported; use CKD_NULL or CKD_SHA1_KDF, \
                     CKD_SHA224_KDF, CKD_SHA256_KDF, CKD_SHA384_KDF, CKD_SHA512_KDF (ANSI X9.63)",
                    params.kdf
                ),
            )
        })?;
        let kind = result_kind(template, what)?;
        let w = wish(template, Class::Secret, kind, what)?;
        let epoch = self.login.epoch();
        self.live(epoch)?;
        let mut b = self.ecdh_base(h, mech.ty, base, epoch)?;
        let peer = ecdh::peer_point(b.curve, &params.public_data)?;
        let len = w.value_len.unwrap_or_else(|| b.curve.field_len());
        check_len(kind, len, what)?;
        self.may_make(h, w.private)?;
        let key = ecdh::derive(b.curve, b.key.bytes(), peer, kdf, &params.shared_data, len)?;
        // The record names the peer (the SHA-256 of its point); it is
        // committed before the key exists for the caller.
        b.audit.input.update(peer);
        let rec = b.audit.record(Event::Sign, CKR_OK, Some(b.version));
        self.live(epoch)?;
        self.confirm(b.asset, b.version, Use::Produce, rec)?;
        let obj = Self::secret_object(h, kind, key, w, false)?;
        Ok(self.insert(obj))
    }

    /// The private key of an ECDH, checked as a signature's key is: its
    /// type fits, it may derive, the user and policies allow it, and an
    /// asset version's state lets it sign (a refusal audited).
    fn ecdh_base(
        &self,
        h: CK_SESSION_HANDLE,
        mech: CK_MECHANISM_TYPE,
        base: CK_OBJECT_HANDLE,
        epoch: u64,
    ) -> Result<EcdhBase> {
        let no_curve = |name: String| {
            Error::with(
                CKR_KEY_TYPE_INCONSISTENT,
                format!("{name}: ECDH needs a secp256k1, P-256, P-384 or P-521 private key"),
            )
        };
        if let Some(obj) = self.session_object(base) {
            let curve = match obj.kind {
                Kind::Ec(kt) => Curve::of(kt).ok_or_else(|| no_curve(obj.name()))?,
                _ => return Err(no_curve(obj.name())),
            };
            self.session_key_use(&obj, mech, Class::Private, obj.derive, "derive (ECDH)")?;
            if let Some(child) = &obj.hd {
                // An HD child's use is its asset version's signature.
                self.child_use(h, child, mech, UseKind::Sign)?;
                return Ok(EcdhBase {
                    curve,
                    key: obj.key_ref()?,
                    asset: Some(child.asset),
                    version: child.version,
                    audit: OpAudit::child(h, child, mech),
                });
            }
            self.permit(h, Action::Use(UseKind::Sign), None, Some(mech))?;
            return Ok(EcdhBase {
                curve,
                key: obj.key_ref()?,
                asset: None,
                version: 0,
                audit: OpAudit::new(h, obj.name(), true, mech),
            });
        }
        let (okey, asset) = self.object(base, CKR_KEY_HANDLE_INVALID)?;
        let view = View::resolve(&asset, &okey).ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
        check_key_type(&view, mech)?;
        let curve = Curve::of(asset.key_type).ok_or_else(|| no_curve(view.label()))?;
        if okey.class != Class::Private {
            return Err(Error::with(
                CKR_KEY_TYPE_INCONSISTENT,
                format!(
                    "object {:?} is a public key: ECDH derives with the private key object",
                    view.label()
                ),
            ));
        }
        let name = asset.id.as_str();
        self.permit(h, Action::Use(UseKind::Sign), Some(name), Some(mech))?;
        self.check_policy(h, UseKind::Sign, name, Some(view.version), mech)?;
        let master = crate::hd::Path::default();
        self.check_path_policy(h, name, view.version, mech, &master, false)?;
        if !view.may_sign() {
            self.prune_keys(&asset);
            let why = format!(
                "object {:?} may not derive (CKA_DERIVE is false: asset state {})",
                view.label(),
                asset.state.name()
            );
            self.audit_refusal(h, mech, &view, format!("ECDH derive refused: {why}"))?;
            return Err(Error::with(CKR_KEY_FUNCTION_NOT_PERMITTED, why));
        }
        let key = match self.asset_key(&view, epoch) {
            Ok(key) => key,
            Err(_) if !self.still_logged_in(epoch) => {
                return Err(Error::rv(CKR_USER_NOT_LOGGED_IN))
            }
            Err(e) => return Err(e),
        };
        Ok(EcdhBase {
            curve,
            key: KeyRef::Derived(key),
            asset: Some(asset.rowid),
            version: view.version,
            audit: OpAudit::new(h, asset.id.to_string(), false, mech),
        })
    }
}
