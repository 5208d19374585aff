//! `p11derive asset xpub`: the extended public key of an asset version's HD tree, or of a child (design §6.1).

use p11derive::access::{Action, UseKind};
use p11derive::derive::KeyType;
use p11derive::hd::{self, ExtendedPublic, Path};
use p11derive::store::hex;

use crate::args::Cli;
use crate::asset_cmd::{find, not_usable, point_of};
use crate::common::{failed, load_config, open_store_read_only, print_json, with_key, Failure};
use crate::users::Want;

pub fn xpub(cli: &Cli, name: &str, version: Option<u32>, path: Path) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let store = open_store_read_only(&config)?;
    let a = find(&store, name)?;
    if !a.key_type.is_hd() {
        return Err(Failure::Refused(format!(
            "asset {name:?} is {}: only secp256k1, P-256 and Ed25519 assets have HD trees \
             (design §6.1)",
            a.key_type
        )));
    }
    if a.key_type != KeyType::Secp256k1 && !cli.json {
        return Err(Failure::Refused(format!(
            "asset {name:?} is {}: an xpub (BIP-32 serialization) exists for secp256k1 only; \
             add --json for its public key and chain code (SLIP-10)",
            a.key_type
        )));
    }
    let n = version.unwrap_or(a.current);
    // An xpub shows every public key (every deposit address) of a tree:
    // in users mode it is for users who may use the asset, as the
    // provider's CKA_P11DERIVE_XPUB and public derivation are.
    let want = Want::on(Action::Use(UseKind::Verify), a.id.as_str());
    let ext = with_key(cli, &store, &config, want, |store, backend, ak, _| {
        let history = store.history(a.rowid)?;
        if let Some(v) = history
            .iter()
            .find(|v| !p11derive::audit::key_data_verifies(ak, a.id.as_str(), v))
        {
            return Err(failed(crate::common::key_data_fault(
                a.id.as_str(),
                v.version,
            )));
        }
        let point = point_of(&a, &history, n)?;
        if !a.is_usable(n) {
            return Err(Failure::Refused(format!("no xpub: {}", not_usable(&a, n))));
        }
        let keys =
            p11derive::derive::derive_version(backend, &a.id, n, a.key_type).map_err(failed)?;
        let derived = p11derive::mechanisms::fingerprint(a.key_type, &keys.key);
        if derived.as_deref() != Some(&point[..]) {
            return Err(failed(format!(
                "asset {name:?} version {n}: the key derived from the backing HSM's root does not \
                 match the public key recorded in the store: the store belongs to another root"
            )));
        }
        let chain = keys
            .chain
            .ok_or_else(|| failed(format!("asset {name:?}: no chain code for {}", a.key_type)))?;
        let mut cc = [0u8; 32];
        cc.copy_from_slice(&chain[..]);
        let master = hd::master_public(&point, &cc);
        zeroize::Zeroize::zeroize(&mut cc);
        let ext = if path.is_empty() {
            master
        } else if path.any_hardened() || a.key_type == KeyType::Ed25519 {
            let child =
                hd::derive_private(a.key_type, &keys.key[..], &chain[..], &path).map_err(failed)?;
            hd::public_of(a.key_type, &child).map_err(failed)?
        } else {
            hd::derive_public(a.key_type, &master, &path).map_err(failed)?
        };
        Ok(ext)
    })?;
    show(cli, &a.id.to_string(), a.key_type, n, &path, &ext)
}

fn show(
    cli: &Cli,
    name: &str,
    kt: KeyType,
    n: u32,
    path: &Path,
    ext: &ExtendedPublic,
) -> Result<(), Failure> {
    let xpub = (kt == KeyType::Secp256k1)
        .then(|| hd::xpub(kt, ext))
        .transpose()
        .map_err(failed)?;
    if cli.json {
        return print_json(&serde_json::json!({
            "asset_id": name,
            "key_type": kt.name(),
            "version": n,
            "path": path.to_string(),
            "depth": ext.depth,
            "parent_fingerprint": hex(&ext.parent_fingerprint),
            "child_number": ext.child_number,
            "public_key": hex(&ext.key),
            "chain_code": hex(&ext.chain),
            "xpub": xpub,
        }));
    }
    match xpub {
        Some(x) => {
            outln!("{x}");
            Ok(())
        }
        None => Err(failed("no xpub for this key type")),
    }
}
