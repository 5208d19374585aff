//! A client that closes its sessions from an exit handler, after the backing module tore itself down (OpenSSL's cleanup through libp11, with SoftHSM behind): no crash, and the records already committed stay verifiable.

mod common;

use std::process::Command;

use common::*;

#[test]
fn closing_sessions_at_exit_after_the_backing_module_is_gone_does_not_crash() {
    let s = setup(None);
    s.create_asset("present", "p256");
    let pin = s.dir.join("pin");
    std::fs::write(&pin, PIN).unwrap();
    let cnf = s.dir.join("openssl.cnf");
    std::fs::write(
        &cnf,
        format!(
            "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n\
             [engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\nengine_id = pkcs11\n\
             dynamic_path = /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so\nMODULE_PATH = {}\n\
             init = 0\n",
            module_path().display()
        ),
    )
    .unwrap();
    let msg = s.dir.join("msg");
    std::fs::write(&msg, b"hello").unwrap();
    // A key that does not exist: libp11 leaves its sessions to OpenSSL's
    // exit-time cleanup, which runs after SoftHSM's static destructors.
    for object in ["absent", "absent", "present"] {
        let uri = format!(
            "pkcs11:token=p11derive;object={object};type=private?pin-source=file:{}",
            pin.display()
        );
        let o = Command::new("openssl")
            .args([
                "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine", "-sign", &uri,
            ])
            .arg("-out")
            .arg(s.dir.join("sig"))
            .arg(&msg)
            .env("OPENSSL_CONF", &cnf)
            .env("P11DERIVE_CONF", &s.config)
            .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"))
            .output()
            .expect("openssl runs");
        // Killed by a signal has no exit code.
        let code = o.status.code();
        assert!(
            code.is_some(),
            "openssl died ({object}): {:?}\n{}",
            o.status,
            stderr(&o)
        );
        assert_eq!(
            code == Some(0),
            object == "present",
            "{object}: {}",
            stderr(&o)
        );
    }
    assert!(s.log().contains("the process is exiting"), "{}", s.log());
    s.audit_verifies();
}
