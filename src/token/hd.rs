//! HD children through `C_DeriveKey` with `CKM_P11DERIVE_HD_CHILD` (design §6.1), the chain code and xpub of public objects, and the path gate of child signatures.
//!
//! An asset version's key with its chain code is the master of an HD tree.
//! A child is a session object: its key in the locked arena, never
//! extractable, dying with its session. It stays tied to its asset
//! version: it signs only while that version may sign, every use passes the
//! same user, policy and commit checks as the asset's own key, and its audit
//! records name the asset, the version and the path.

#![forbid(unsafe_code)]

use crate::access::{Action, UseKind};
use crate::hd::{self, ExtendedPrivate, ExtendedPublic, Path};
use crate::secure::SecretBytes;
use zeroize::Zeroize;

use super::session::{Kind, SessionObject, UsedIvs};
use super::*;

/// Where an HD child comes from and its public extended key.
pub(super) struct HdChild {
    /// The asset's row id, id and the version whose tree this is.
    pub asset: i64,
    pub asset_id: String,
    pub version: u32,
    /// The path below the version's master key.
    pub path: Path,
    /// The child's public key (uncompressed SEC1 point, or the Ed25519
    /// key), chain code, depth, parent fingerprint and child number. A
    /// private child's chain code is not here (zeros) but in `chain`.
    pub ext: ExtendedPublic,
    /// A private child's chain code, in the locked arena: with the public
    /// key it is the child's xpub, which ordinary memory must not hold.
    pub chain: Option<Secret32>,
    pub kt: KeyType,
}

impl HdChild {
    /// `asset@vN:m/44'/60'/0'/0/5`: the default label and the name in
    /// messages.
    pub fn label(&self) -> String {
        format!("{}@v{}:{}", self.asset_id, self.version, self.path)
    }

    /// The path as `CKA_P11DERIVE_HD_PATH` holds it: native `CK_ULONG`s.
    fn path_bytes(path: &Path) -> Vec<u8> {
        path.indices()
            .iter()
            .flat_map(|&i| CK_ULONG::from(i).to_ne_bytes())
            .collect()
    }

    /// The attributes an HD child adds to a session key's.
    pub fn attribute(&self, class: Class, ty: CK_ATTRIBUTE_TYPE) -> Option<Value> {
        let public = class == Class::Public;
        match ty {
            CKA_DERIVE => Some(Value::Bool(true)),
            // Both halves show the child's public key.
            CKA_EC_POINT => Some(Value::Bytes(objects::ec_point_der(&self.ext.key))),
            CKA_P11DERIVE_ASSET_ID => Some(Value::Bytes(self.asset_id.clone().into_bytes())),
            CKA_P11DERIVE_VERSION => Some(Value::Ulong(CK_ULONG::from(self.version))),
            CKA_P11DERIVE_KEY_TYPE => Some(Value::Bytes(self.kt.name().as_bytes().to_vec())),
            CKA_P11DERIVE_HD_PATH => Some(Value::Bytes(Self::path_bytes(&self.path))),
            CKA_P11DERIVE_XONLY_KEY if self.kt == KeyType::Secp256k1 => {
                mechanisms::schnorr::xonly(&self.ext.key)
                    .ok()
                    .map(|x| Value::Bytes(x.to_vec()))
            }
            CKA_P11DERIVE_CHAIN_CODE if public => Some(Value::Bytes(self.ext.chain.to_vec())),
            CKA_P11DERIVE_XPUB if public && self.kt == KeyType::Secp256k1 => {
                hd::xpub(self.kt, &self.ext)
                    .ok()
                    .map(|x| Value::Bytes(x.into_bytes()))
            }
            _ => None,
        }
    }
}

/// The path a `CKM_P11DERIVE_HD_CHILD` parameter states: an array of
/// `CK_ULONG` child indices.
fn path_param(param: &[u8]) -> Result<Path> {
    let size = size_of::<CK_ULONG>();
    let bad = |why: String| {
        Error::with(
            CKR_MECHANISM_PARAM_INVALID,
            format!(
                "CKM_P11DERIVE_HD_CHILD: {why}; the parameter is an array of 1 to 255 CK_ULONG \
                 child indices (add 0x80000000 for a hardened index)"
            ),
        )
    };
    if param.is_empty() || !param.len().is_multiple_of(size) {
        return Err(bad(format!("the parameter has {} bytes", param.len())));
    }
    let indices: Vec<u64> = param
        .chunks_exact(size)
        .filter_map(|c| c.try_into().ok().map(CK_ULONG::from_ne_bytes))
        .collect();
    Path::from_indices(&indices).map_err(bad)
}

/// The label and id a child's template gives, if any.
type Naming = (Option<Vec<u8>>, Option<Vec<u8>>);

/// What a child's template may say: its class and key type must be the
/// child's, it cannot be a token object, extractable or not sensitive; a
/// label and an id are the caller's to choose.
fn child_template(t: &[TemplateAttr], class: Class, kt: KeyType, label: &str) -> Result<Naming> {
    let inconsistent = |why: &str| {
        Err(Error::with(
            CKR_TEMPLATE_INCONSISTENT,
            format!("HD child {label:?}: {why}"),
        ))
    };
    let (mut given_label, mut id) = (None, None);
    for (ty, value) in t {
        let is_true = value.first().is_some_and(|&b| b != 0);
        match *ty {
            CKA_LABEL => given_label = Some(value.clone()),
            CKA_ID => id = Some(value.clone()),
            CKA_CLASS => {
                let want = if class == Class::Private {
                    CKO_PRIVATE_KEY
                } else {
                    CKO_PUBLIC_KEY
                };
                if ulong(value) != Some(want) {
                    return inconsistent("CKA_CLASS differs from the base key's class");
                }
            }
            CKA_KEY_TYPE => {
                let want = if kt == KeyType::Ed25519 {
                    CKK_EC_EDWARDS
                } else {
                    CKK_EC
                };
                if ulong(value) != Some(want) {
                    return inconsistent("CKA_KEY_TYPE differs from the base key's type");
                }
            }
            CKA_TOKEN if is_true => {
                return inconsistent(
                    "CKA_TOKEN=true: HD children are session objects (derive them again in \
                     each session; they are the same keys every time)",
                )
            }
            CKA_SENSITIVE if !is_true && class == Class::Private => {
                return inconsistent("CKA_SENSITIVE=false: derived keys are never revealed")
            }
            CKA_EXTRACTABLE if is_true && class == Class::Private => {
                return inconsistent("CKA_EXTRACTABLE=true: derived keys never leave the token")
            }
            CKA_TOKEN | CKA_SENSITIVE | CKA_EXTRACTABLE | CKA_PRIVATE | CKA_SIGN | CKA_VERIFY
            | CKA_DERIVE | CKA_MODIFIABLE | CKA_COPYABLE | CKA_DESTROYABLE => {}
            other => {
                return Err(Error::with(
                    CKR_ATTRIBUTE_TYPE_INVALID,
                    format!(
                        "HD child {label:?}: the template names {}, which a derived child key \
                         does not take",
                        attr_name(other)
                    ),
                ))
            }
        }
    }
    Ok((given_label, id))
}

/// A parent to derive from: its public extended key, and for a private
/// parent its key and chain code in the arena.
struct Parent {
    asset: i64,
    version: u32,
    kt: KeyType,
    class: Class,
    path: Path,
    ext: ExtendedPublic,
    private: Option<ExtendedPrivate>,
    id: Vec<u8>,
}

impl Provider {
    /// `C_DeriveKey` with `CKM_P11DERIVE_HD_CHILD`: the child along the
    /// parameter's path of an asset's key object (alias: the current
    /// version) or of an HD child, as a new session object of the same class.
    pub fn derive_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        base: CK_OBJECT_HANDLE,
        template: &[TemplateAttr],
    ) -> Result<CK_OBJECT_HANDLE> {
        self.session(h)?;
        if mech.ty != CKM_P11DERIVE_HD_CHILD {
            return Err(Error::rv(CKR_MECHANISM_INVALID));
        }
        let step = path_param(&mech.param)?;
        let epoch = self.login.epoch();
        let parent = self.hd_parent(base, epoch)?;
        let path = parent.path.join(&step).map_err(|e| {
            Error::with(
                CKR_MECHANISM_PARAM_INVALID,
                format!("CKM_P11DERIVE_HD_CHILD: {e}"),
            )
        })?;
        let asset = self
            .store
            .fresh_state(parent.asset)
            .map_err(store_error)?
            .ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
        let name = asset.id.as_str();
        let private = parent.class == Class::Private;
        let child_label = format!("{name}@v{}:{path}", parent.version);
        let (label, id) = child_template(template, parent.class, parent.kt, &child_label)?;
        if private {
            // A private child signs: the user must be one who may sign with
            // this asset, under a path the policies allow.
            self.permit(h, Action::Use(UseKind::Sign), Some(name), Some(mech.ty))?;
            self.check_path_policy(h, name, parent.version, mech.ty, &path, true)?;
        } else {
            self.permit(h, Action::Use(UseKind::Verify), Some(name), Some(mech.ty))?;
        }
        let usable = if private {
            asset.may_sign(parent.version)
        } else {
            asset.may_verify(parent.version)
        };
        if !usable {
            let why = format!(
                "asset {name:?} version {} may not {} (asset state {}): no HD child of it is made",
                parent.version,
                if private { "sign" } else { "verify" },
                asset.state.name()
            );
            let mut rec = Record::new(Event::Refused, CKR_KEY_FUNCTION_NOT_PERMITTED)
                .asset(name, Some(parent.version))
                .session(h)
                .detail(format!("derive refused: {} {why}", path.record_detail()));
            rec.mechanism = Some(mech.ty);
            self.audit(rec)?;
            return Err(Error::with(CKR_KEY_FUNCTION_NOT_PERMITTED, why));
        }
        let (ext, key, chain) = match &parent.private {
            Some(x) => {
                let child = hd::derive_private_from(parent.kt, x, &step)?;
                // The chain code stays in the arena (`child.chain` moves
                // into the object); only the public key is copied out.
                let ext = ExtendedPublic {
                    key: hd::public_key_of(parent.kt, &child)?,
                    chain: [0; 32],
                    depth: child.depth,
                    parent_fingerprint: child.parent_fingerprint,
                    child_number: child.child_number,
                };
                let mut key =
                    SecretBytes::with_capacity(32).map_err(|m| Error::with(CKR_HOST_MEMORY, m))?;
                key.spare()[..32].copy_from_slice(&child.key[..]);
                key.grow(32);
                (ext, Some(Arc::new(key)), Some(child.chain))
            }
            None => (
                hd::derive_public(parent.kt, &parent.ext, &step)?,
                None,
                None,
            ),
        };
        self.live(epoch)?;
        let mut rec = Record::new(Event::ObjectCreate, CKR_OK)
            .asset(name, Some(parent.version))
            .session(h)
            .detail(format!(
                "{} HD child {} key",
                path.record_detail(),
                if private { "private" } else { "public" }
            ));
        rec.mechanism = Some(mech.ty);
        self.audit(rec)?;
        let child = HdChild {
            asset: parent.asset,
            asset_id: name.to_string(),
            version: parent.version,
            path,
            ext,
            chain,
            kt: parent.kt,
        };
        let obj = SessionObject {
            owner: h,
            class: parent.class,
            kind: Kind::Ec(parent.kt),
            key,
            point: Some(child.ext.key.clone()),
            label: label.unwrap_or_else(|| child_label.into_bytes()),
            id: id.unwrap_or(parent.id),
            private,
            extractable: false,
            encrypt: false,
            decrypt: false,
            sign: private,
            verify: !private,
            wrap: false,
            unwrap: false,
            local: false,
            check: None,
            ivs: UsedIvs::default(),
            hd: Some(child),
        };
        Ok(self.insert(obj))
    }

    /// The key object `base` as the parent of an HD derivation.
    fn hd_parent(&self, base: CK_OBJECT_HANDLE, epoch: u64) -> Result<Parent> {
        if let Some(obj) = self.session_object(base) {
            let Some(c) = &obj.hd else {
                return Err(Error::with(
                    CKR_KEY_TYPE_INCONSISTENT,
                    format!(
                        "{} is not part of an HD tree: derive children from an asset's key \
                         object (or from an HD child)",
                        obj.name()
                    ),
                ));
            };
            let private = match &obj.key {
                Some(k) => {
                    if k.len() != 32 {
                        return Err(Error::with(
                            CKR_GENERAL_ERROR,
                            format!("{}: its key is not 32 bytes", obj.name()),
                        ));
                    }
                    let mut key = crate::secure::secret::<32>()?;
                    key.copy_from_slice(&k[..]);
                    let mut chain = crate::secure::secret::<32>()?;
                    match &c.chain {
                        Some(cc) => chain.copy_from_slice(&cc[..]),
                        None => {
                            return Err(Error::with(
                                CKR_GENERAL_ERROR,
                                format!(
                                    "{}: a private HD child without its chain code",
                                    obj.name()
                                ),
                            ))
                        }
                    }
                    Some(ExtendedPrivate {
                        key,
                        chain,
                        depth: c.ext.depth,
                        parent_fingerprint: c.ext.parent_fingerprint,
                        child_number: c.ext.child_number,
                    })
                }
                None => None,
            };
            return Ok(Parent {
                asset: c.asset,
                version: c.version,
                kt: c.kt,
                class: obj.class,
                path: c.path.clone(),
                ext: c.ext.clone(),
                private,
                id: obj.id.clone(),
            });
        }
        let (okey, asset) = self.object(base, CKR_KEY_HANDLE_INVALID)?;
        let view = View::resolve(&asset, &okey).ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
        check_key_type(&view, CKM_P11DERIVE_HD_CHILD)?;
        let point = view
            .public_point()
            .ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?
            .to_vec();
        self.live(epoch)?;
        let chain = self.version_chain(&view, epoch)?;
        // A private parent's chain code stays in the arena; a public one's
        // is the one its object shows (CKA_P11DERIVE_CHAIN_CODE).
        let ext = if okey.class == Class::Private {
            hd::master_public(&point, &[0; 32])
        } else {
            let mut cc = [0u8; 32];
            cc.copy_from_slice(&chain[..]);
            let ext = hd::master_public(&point, &cc);
            cc.zeroize();
            ext
        };
        let private = if okey.class == Class::Private {
            let key = self.asset_key(&view, epoch)?;
            let mut k = crate::secure::secret::<32>()?;
            k.copy_from_slice(&key[..]);
            let mut c = crate::secure::secret::<32>()?;
            c.copy_from_slice(&chain[..]);
            Some(ExtendedPrivate {
                key: k,
                chain: c,
                depth: 0,
                parent_fingerprint: [0; 4],
                child_number: 0,
            })
        } else {
            None
        };
        Ok(Parent {
            asset: asset.rowid,
            version: view.version,
            kt: asset.key_type,
            class: okey.class,
            path: Path::default(),
            ext,
            private,
            id: view.object_id(),
        })
    }

    /// The chain code of an asset version (design §6.1), from the key cache
    /// or derived through the backing HSM with the version's key.
    pub(super) fn version_chain(&self, view: &View, epoch: u64) -> Result<Arc<Secret32>> {
        match self.purpose_key(view, epoch, Purpose::Chain) {
            Ok(c) => Ok(c),
            Err(_) if !self.still_logged_in(epoch) || self.login_state() != Login::User => {
                Err(Error::with(
                    CKR_USER_NOT_LOGGED_IN,
                    format!(
                        "the chain code of {:?} is derived inside the backing HSM: log in first",
                        view.label()
                    ),
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// `CKA_P11DERIVE_CHAIN_CODE` and `CKA_P11DERIVE_XPUB` of an asset's
    /// public key object; `None` where the object has none or no login lets
    /// the chain code be derived (the caller then sees the attribute as
    /// unavailable).
    pub(super) fn hd_attribute(&self, view: &View, ty: CK_ATTRIBUTE_TYPE) -> Option<Value> {
        if view.class != Class::Public || !view.asset.key_type.is_ec() {
            return None;
        }
        let xpub = ty == CKA_P11DERIVE_XPUB;
        if xpub && view.asset.key_type != KeyType::Secp256k1 {
            return None;
        }
        let chain = self.version_chain(view, self.login.epoch()).ok()?;
        if !xpub {
            return Some(Value::Bytes(chain.to_vec()));
        }
        let mut cc = [0u8; 32];
        cc.copy_from_slice(&chain[..]);
        let master = hd::master_public(view.public_point()?, &cc);
        hd::xpub(view.asset.key_type, &master)
            .ok()
            .map(|x| Value::Bytes(x.into_bytes()))
    }

    /// Users mode: whether the policies of `asset` let the key at `path`
    /// sign (`deriving`: be derived, which its ancestors of allowed paths
    /// may); a refusal is audited with the rule and policy that refused it.
    pub(super) fn check_path_policy(
        &self,
        h: CK_SESSION_HANDLE,
        asset: &str,
        version: u32,
        mechanism: CK_MECHANISM_TYPE,
        path: &Path,
        deriving: bool,
    ) -> Result<()> {
        let what = if deriving { "derive" } else { "sign" };
        let lead = format!("{} ", path.record_detail());
        self.policy_gate(h, what, (asset, Some(version)), mechanism, &lead, |p| {
            if deriving {
                p.check_derive(path)
            } else {
                p.check_path(path)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_is_an_array_of_ulongs() {
        let bytes =
            |v: &[CK_ULONG]| -> Vec<u8> { v.iter().flat_map(|i| i.to_ne_bytes()).collect() };
        let p = path_param(&bytes(&[0x8000_002c, 0x8000_003c, 0x8000_0000, 0, 5])).unwrap();
        assert_eq!(p.to_string(), "m/44'/60'/0'/0/5");
        for bad in [
            Vec::new(),
            vec![1, 2, 3],
            bytes(&[1 << 32]),
            bytes(&vec![1; 256]),
        ] {
            let e = path_param(&bad).unwrap_err();
            assert_eq!(e.rv, CKR_MECHANISM_PARAM_INVALID, "{bad:?}");
        }
    }
}
