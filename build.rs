//! Generates the Rust view of the PKCS#11 interface that p11derive exports
//! from the project's own headers in `pkcs11-headers/`.

use std::env;
use std::path::PathBuf;

use bindgen::callbacks::{IntKind, ParseCallbacks};

/// PKCS#11 constants are `CK_ULONG` values; bindgen would otherwise guess `u32`.
#[derive(Debug)]
struct CkUlongMacros;

impl ParseCallbacks for CkUlongMacros {
    fn int_macro(&self, name: &str, _value: i64) -> Option<IntKind> {
        if name.starts_with("CK") || name.starts_with("CRYPTOKI_") {
            Some(IntKind::Custom {
                name: "CK_ULONG",
                is_signed: false,
            })
        } else {
            None
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=pkcs11-headers");
    // Never unloaded: the pthread_atfork handler registered at C_Initialize
    // must not outlive the code it points to when a client dlcloses us.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    let bindings = bindgen::Builder::default()
        .header("pkcs11-headers/wrapper.h")
        .parse_callbacks(Box::new(CkUlongMacros))
        // The provider defines these functions itself; it never calls them.
        .blocklist_function("C_.*")
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(true)
        .generate_comments(false)
        .generate()
        .expect("bindgen could not parse pkcs11-headers/wrapper.h (is libclang installed? run tools/setup.sh)");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    bindings
        .write_to_file(out.join("pkcs11_bindings.rs"))
        .expect("could not write the generated bindings");
}
