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
    /// key), depth, parent fingerprint and child number, and for a public
    /// child its chain code (a private child's is zero here).
    pub ext: ExtendedPublic,
    /// A private child's chain code, in the locked arena: with one of its
    /// non-hardened descendants' private keys it would give this key.
    pub chain: Option<Arc<Secret32>>,
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
/// child's, and every property it names must be the one the child has
/// (a session object, sensitive, never extractable, signing if private,
/// verifying if public, deriving, destroyable, not modifiable); a label and
/// an id are the caller's to choose.
fn child_template(t: &[TemplateAttr], class: Class, kt: KeyType, label: &str) -> Result<Naming> {
    let private = class == Class::Private;
    let inconsistent = |why: String| {
        Err(Error::with(
            CKR_TEMPLATE_INCONSISTENT,
            format!("HD child {label:?}: {why}"),
        ))
    };
    let (mut given_label, mut id) = (None, None);
    for (ty, value) in t {
        let fixed = match *ty {
            CKA_LABEL => {
                given_label = Some(value.clone());
                continue;
            }
            CKA_ID => {
                id = Some(value.clone());
                continue;
            }
            CKA_CLASS => {
                let want = if private {
                    CKO_PRIVATE_KEY
                } else {
                    CKO_PUBLIC_KEY
                };
                if ulong(value) != Some(want) {
                    return inconsistent("CKA_CLASS differs from the base key's class".into());
                }
                continue;
            }
            CKA_KEY_TYPE => {
                let want = if kt == KeyType::Ed25519 {
                    CKK_EC_EDWARDS
                } else {
                    CKK_EC
                };
                if ulong(value) != Some(want) {
                    return inconsistent("CKA_KEY_TYPE differs from the base key's type".into());
                }
                continue;
            }
            // HD children are session objects: derive them again in each
            // session (they are the same keys every time).
            CKA_TOKEN | CKA_MODIFIABLE | CKA_COPYABLE => false,
            CKA_DESTROYABLE | CKA_DERIVE => true,
            CKA_SENSITIVE | CKA_PRIVATE | CKA_SIGN if private => true,
            CKA_EXTRACTABLE | CKA_VERIFY if private => false,
            CKA_PRIVATE | CKA_SIGN if !private => false,
            CKA_VERIFY if !private => true,
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
        };
        if value.first().is_some_and(|&b| b != 0) != fixed {
            return inconsistent(format!(
                "{} must be {fixed} (HD children are session objects; a private one is \
                 sensitive, never extractable, and signs; a public one verifies)",
                attr_name(*ty)
            ));
        }
    }
    Ok((given_label, id))
}

/// The key object a child is derived from: an asset's key object, or an
/// HD child.
enum Base {
    Asset { okey: ObjectKey, asset: Asset },
    Child(Arc<SessionObject>),
}

/// What a derivation needs of its base before any secret is touched.
struct Parent {
    asset: i64,
    version: u32,
    kt: KeyType,
    class: Class,
    /// The base's path below its version's master key.
    path: Path,
    /// The base's object id; a child's default id extends it.
    id: Vec<u8>,
    base: Base,
}

impl Provider {
    /// `C_DeriveKey` with `CKM_P11DERIVE_HD_CHILD`: the child along the
    /// parameter's path of an asset's key object (alias: the current
    /// version) or of an HD child, as a new session object of the same
    /// class. Every check (the user, the policies' paths, the version's
    /// state) comes before any key is derived.
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
        let parent = self.hd_parent(base)?;
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
                .detail(format!("{} derive refused: {why}", path.record_detail()));
            rec.mechanism = Some(mech.ty);
            self.audit(rec)?;
            return Err(Error::with(CKR_KEY_FUNCTION_NOT_PERMITTED, why));
        }
        let (ext, key, chain) = if private {
            let x = self.parent_private(&parent, epoch)?;
            let child = hd::derive_private_from(parent.kt, &x, &step)?;
            let mut ext = hd::public_of(parent.kt, &child)?;
            // The private child's chain code stays in the arena only.
            ext.chain.zeroize();
            let mut key =
                SecretBytes::with_capacity(32).map_err(|m| Error::with(CKR_HOST_MEMORY, m))?;
            key.spare()[..32].copy_from_slice(&child.key[..]);
            key.grow(32);
            (ext, Some(Arc::new(key)), Some(Arc::new(child.chain)))
        } else {
            let ext = self.parent_public(&parent, epoch)?;
            (hd::derive_public(parent.kt, &ext, &step)?, None, None)
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
        // The default id extends the base's with the step's indices, so a
        // child never shares an id with its parent (clients pair keys by
        // CKA_ID), while both halves of one child share theirs.
        let mut default_id = parent.id;
        for i in step.indices() {
            default_id.extend_from_slice(&i.to_be_bytes());
        }
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
            id: id.unwrap_or(default_id),
            private,
            // A derived key: sensitive, never extractable, fixed.
            sensitive: true,
            extractable: false,
            always_sensitive: true,
            never_extractable: true,
            modifiable: false,
            copyable: false,
            destroyable: true,
            dates: (Vec::new(), Vec::new()),
            subject: Vec::new(),
            encrypt: false,
            decrypt: false,
            sign: private,
            verify: !private,
            wrap: false,
            unwrap: false,
            derive: true,
            local: false,
            check: None,
            ivs: UsedIvs::default(),
            hd: Some(child),
            maker: None,
        };
        Ok(self.insert(obj))
    }

    /// The key object `base` as the parent of an HD derivation (no secret
    /// touched yet).
    fn hd_parent(&self, base: CK_OBJECT_HANDLE) -> Result<Parent> {
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
            return Ok(Parent {
                asset: c.asset,
                version: c.version,
                kt: c.kt,
                class: obj.class,
                path: c.path.clone(),
                id: obj.id.clone(),
                base: Base::Child(obj.clone()),
            });
        }
        let (okey, asset) = self.object(base, CKR_KEY_HANDLE_INVALID)?;
        let view = View::resolve(&asset, &okey).ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
        check_key_type(&view, CKM_P11DERIVE_HD_CHILD)?;
        let (version, kt) = (view.version, asset.key_type);
        Ok(Parent {
            asset: asset.rowid,
            version,
            kt,
            class: okey.class,
            path: Path::default(),
            id: derive::version_object_id(&asset.object_id, version),
            base: Base::Asset { okey, asset },
        })
    }

    /// A public parent's extended public key.
    fn parent_public(&self, parent: &Parent, epoch: u64) -> Result<ExtendedPublic> {
        match &parent.base {
            Base::Child(obj) => Ok(obj
                .hd
                .as_ref()
                .ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?
                .ext
                .clone()),
            Base::Asset { okey, asset } => {
                let view = View::resolve(asset, okey).ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
                let point = view
                    .public_point()
                    .ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
                self.live(epoch)?;
                let chain = self.version_chain(&view, epoch)?;
                let mut cc = [0u8; 32];
                cc.copy_from_slice(&chain[..]);
                let ext = hd::master_public(point, &cc);
                cc.zeroize();
                Ok(ext)
            }
        }
    }

    /// A private parent's extended private key, in the locked arena.
    fn parent_private(&self, parent: &Parent, epoch: u64) -> Result<ExtendedPrivate> {
        let copy = |from: &[u8]| -> Result<Secret32> {
            if from.len() != 32 {
                return Err(Error::with(CKR_GENERAL_ERROR, "an HD key is not 32 bytes"));
            }
            let mut s = crate::secure::secret::<32>()?;
            s.copy_from_slice(from);
            Ok(s)
        };
        match &parent.base {
            Base::Child(obj) => {
                let c = obj.hd.as_ref().ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
                let (Some(key), Some(chain)) = (&obj.key, &c.chain) else {
                    return Err(Error::rv(CKR_KEY_HANDLE_INVALID));
                };
                Ok(ExtendedPrivate {
                    key: copy(key)?,
                    chain: copy(&chain[..])?,
                    depth: c.ext.depth,
                    parent_fingerprint: c.ext.parent_fingerprint,
                    child_number: c.ext.child_number,
                })
            }
            Base::Asset { okey, asset } => {
                let view = View::resolve(asset, okey).ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
                self.live(epoch)?;
                let chain = self.version_chain(&view, epoch)?;
                let key = self.asset_key(&view, epoch)?;
                Ok(ExtendedPrivate {
                    key: copy(&key[..])?,
                    chain: copy(&chain[..])?,
                    depth: 0,
                    parent_fingerprint: [0; 4],
                    child_number: 0,
                })
            }
        }
    }

    /// The chain code of an asset version (design §6.1), from the key cache
    /// or derived through the backing HSM with the version's key.
    pub(super) fn version_chain(&self, view: &View, epoch: u64) -> Result<Arc<SecretBytes>> {
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
        if view.class != Class::Public || !view.asset.key_type.is_hd() || !view.may_verify() {
            return None;
        }
        // The tree's public keys (every deposit address of an xpub) are for
        // the users who may derive its public children: as C_DeriveKey on
        // the public object asks.
        // (Answered as unavailable, not audited: a client reading every
        // attribute of every object is not refused anything.)
        let name = view.asset.id.as_str();
        let may = !self.users_mode()
            || self
                .caller()
                .is_some_and(|c| c.permits(Action::Use(UseKind::Verify), Some(name)).is_ok());
        if !may {
            return None;
        }
        let xpub = ty == CKA_P11DERIVE_XPUB;
        if xpub && view.asset.key_type != KeyType::Secp256k1 {
            return None;
        }
        let chain = match self.version_chain(view, self.login.epoch()) {
            Ok(c) => c,
            Err(e) => {
                // Without a login it cannot be derived: not worth a line.
                if e.rv != CKR_USER_NOT_LOGGED_IN {
                    log::warn(&format!(
                        "{:?}: its chain code is unavailable: {e}",
                        view.label()
                    ));
                }
                return None;
            }
        };
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
