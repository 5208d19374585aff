//! The C surface as a raw client sees it, through `cryptoki-sys`'s view of the
//! PKCS#11 ABI (independent of the project's own header): exported symbols,
//! interface tables, C_Initialize arguments (pReserved must be NULL), initialize/finalize cycles,
//! C_GetAttributeValue's per-attribute rules, null pointers, length queries
//! and fork().

mod common;

use std::ffi::CString;
use std::ptr;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki_sys::*;

use common::*;

fn init_args(
    flags: CK_FLAGS,
    mutexes: bool,
    reserved: *mut std::ffi::c_void,
) -> CK_C_INITIALIZE_ARGS {
    extern "C" fn create(_: *mut *mut std::ffi::c_void) -> CK_RV {
        CKR_OK
    }
    extern "C" fn other(_: *mut std::ffi::c_void) -> CK_RV {
        CKR_OK
    }
    CK_C_INITIALIZE_ARGS {
        CreateMutex: if mutexes { Some(create) } else { None },
        DestroyMutex: if mutexes { Some(other) } else { None },
        LockMutex: if mutexes { Some(other) } else { None },
        UnlockMutex: if mutexes { Some(other) } else { None },
        flags,
        pReserved: reserved,
    }
}

/// C_Initialize with `args` succeeds, and the provider then shows its one slot.
fn initialize_shows_one_slot(r: &Raw, args: &mut CK_C_INITIALIZE_ARGS) {
    assert_eq!(call!(r, C_Initialize(args as *mut _ as *mut _)), CKR_OK);
    let mut count: CK_ULONG = 0;
    assert_eq!(
        call!(r, C_GetSlotList(CK_TRUE, ptr::null_mut(), &mut count)),
        CKR_OK
    );
    assert_eq!(count, 1);
}

#[test]
fn exports_exactly_the_three_entry_points() {
    let out = std::process::Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(module_path())
        .output()
        .expect("nm (binutils) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["C_GetFunctionList", "C_GetInterface", "C_GetInterfaceList"],
        "{text}"
    );
}

#[test]
fn interface_list_offers_3_0_and_2_40() {
    let _turn = turn();
    let r = raw();
    let mut count: CK_ULONG = 0;
    assert_eq!(
        call!(r, C_GetInterfaceList(ptr::null_mut(), &mut count)),
        CKR_OK
    );
    assert_eq!(count, 2);
    let mut one = [CK_INTERFACE {
        pInterfaceName: ptr::null_mut(),
        pFunctionList: ptr::null_mut(),
        flags: 0,
    }; 2];
    let mut short: CK_ULONG = 1;
    assert_eq!(
        call!(r, C_GetInterfaceList(one.as_mut_ptr(), &mut short)),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(short, 2);
    assert_eq!(
        call!(r, C_GetInterfaceList(one.as_mut_ptr(), &mut count)),
        CKR_OK
    );
    let mut versions = Vec::new();
    for i in one {
        // SAFETY: the provider returned valid interface descriptions.
        let name = unsafe { std::ffi::CStr::from_ptr(i.pInterfaceName as *const _) };
        assert_eq!(name.to_bytes(), b"PKCS 11");
        // SAFETY: every function table starts with its version.
        let v = unsafe { *(i.pFunctionList as *const CK_VERSION) };
        versions.push((v.major, v.minor));
    }
    assert_eq!(versions, [(3, 0), (2, 40)]);

    let mut iface: *mut CK_INTERFACE = ptr::null_mut();
    let mut want = CK_VERSION {
        major: 2,
        minor: 40,
    };
    assert_eq!(
        call!(r, C_GetInterface(ptr::null_mut(), &mut want, &mut iface, 0)),
        CKR_OK
    );
    // SAFETY: as above.
    let v = unsafe { *((*iface).pFunctionList as *const CK_VERSION) };
    assert_eq!((v.major, v.minor), (2, 40));
    let mut name = *b"Vendor X\0";
    assert_eq!(
        call!(
            r,
            C_GetInterface(name.as_mut_ptr(), ptr::null_mut(), &mut iface, 0)
        ),
        CKR_ARGUMENTS_BAD
    );
    let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
    assert_eq!(call!(r, C_GetFunctionList(&mut list)), CKR_OK);
    // SAFETY: the provider returned its 2.40 table.
    let v = unsafe { (*list).version };
    assert_eq!((v.major, v.minor), (2, 40));
    assert_eq!(
        call!(r, C_GetFunctionList(ptr::null_mut())),
        CKR_ARGUMENTS_BAD
    );
}

#[test]
fn unimplemented_functions_say_so() {
    let _turn = turn();
    let r = raw();
    let v = r.f.version;
    assert_eq!((v.major, v.minor), (3, 0));

    let s = setup(None);
    let p = s.load();
    let kept = p.session();
    let session = kept.handle();
    let mut mech = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(
        call!(r, C_SignRecoverInit(session, &mut mech, 1)),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    assert_eq!(
        call!(r, C_MessageSignInit(session, &mut mech, 1)),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    assert_eq!(
        call!(r, C_WaitForSlotEvent(0, ptr::null_mut(), ptr::null_mut())),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    assert_eq!(
        call!(r, C_VerifyRecoverInit(session, &mut mech, 1)),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    // C_DigestKey is implemented (tests/ecdh.rs): without a digest running
    // it says so.
    assert_eq!(
        call!(r, C_DigestKey(session, 1)),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(
        call!(r, C_SignRecoverInit(session, &mut mech, 1)),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    // C_DeriveKey is implemented (HD children, CKM_P11DERIVE_HD_CHILD): a
    // null phKey is the caller's error, said before anything is derived.
    let mut digest = CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(
        call!(
            r,
            C_DeriveKey(session, &mut digest, 1, ptr::null_mut(), 0, ptr::null_mut())
        ),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        call!(
            r,
            C_GetOperationState(session, ptr::null_mut(), ptr::null_mut())
        ),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    assert_eq!(
        call!(r, C_MessageSignFinal(session)),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    assert_eq!(call!(r, C_SessionCancel(session, CKF_SIGN)), CKR_OK);
    assert_eq!(
        call!(r, C_GetFunctionStatus(session)),
        CKR_FUNCTION_NOT_PARALLEL
    );
    let mut pin = *b"x";
    assert_eq!(
        call!(r, C_InitToken(1, pin.as_mut_ptr(), 1, pin.as_mut_ptr())),
        CKR_FUNCTION_NOT_SUPPORTED
    );
}

#[test]
fn initialize_honours_its_arguments() {
    let _turn = turn();
    let s = setup(None);
    let r = raw();
    let mut count: CK_ULONG = 0;
    assert_eq!(
        call!(r, C_GetSlotList(CK_TRUE, ptr::null_mut(), &mut count)),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(
        call!(r, C_Finalize(ptr::null_mut())),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );

    std::env::remove_var("P11DERIVE_CONF");
    let mut partial = init_args(0, true, ptr::null_mut());
    partial.LockMutex = None;
    assert_eq!(
        call!(r, C_Initialize(&mut partial as *mut _ as *mut _)),
        CKR_ARGUMENTS_BAD
    );
    let mut callbacks_only = init_args(0, true, ptr::null_mut());
    assert_eq!(
        call!(r, C_Initialize(&mut callbacks_only as *mut _ as *mut _)),
        CKR_CANT_LOCK
    );

    // The config comes from P11DERIVE_CONF (pReserved must be NULL).
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let mut args = init_args(CKF_OS_LOCKING_OK, true, ptr::null_mut());
    initialize_shows_one_slot(&r, &mut args);
    assert_eq!(
        call!(r, C_Initialize(&mut args as *mut _ as *mut _)),
        CKR_CRYPTOKI_ALREADY_INITIALIZED
    );
    let mut junk = 0u8;
    assert_eq!(
        call!(r, C_Finalize(&mut junk as *mut u8 as *mut _)),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(call!(r, C_Finalize(ptr::null_mut())), CKR_OK);

    // A config path that does not exist fails (its message, naming the file,
    // goes to stderr: no log file is configured yet; tests/token.rs reads it).
    std::env::set_var("P11DERIVE_CONF", s.dir.join("nope.toml"));
    let mut args = init_args(CKF_OS_LOCKING_OK, false, ptr::null_mut());
    assert_eq!(
        call!(r, C_Initialize(&mut args as *mut _ as *mut _)),
        CKR_FUNCTION_FAILED
    );
    assert_eq!(
        call!(r, C_GetSlotList(CK_TRUE, ptr::null_mut(), &mut count)),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
}

/// PKCS#11 3.0 §5.4: `pReserved` must be NULL. A non-NULL one is
/// `CKR_ARGUMENTS_BAD` and never read: here it points at a page mapped
/// PROT_NONE, so a single read of it would kill the test process (SIGSEGV,
/// google/pkcs11test's Init.InitArgsBadReserved). A pointer to a config
/// path, which older releases read, is refused too. The library initializes
/// afterwards with NULL.
#[test]
fn a_non_null_p_reserved_is_refused_without_reading_it() {
    let _turn = turn();
    let s = setup(None);
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let r = raw();
    // SAFETY: a fresh anonymous mapping of one page, never made accessible.
    let page = unsafe {
        libc::mmap(
            ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED, "mmap");
    let path = CString::new(s.config.to_str().unwrap()).unwrap();
    let mut count: CK_ULONG = 0;
    for (what, reserved) in [
        ("a PROT_NONE page", page),
        ("a config path", path.as_ptr() as *mut std::ffi::c_void),
    ] {
        for mutexes in [false, true] {
            let mut args = init_args(CKF_OS_LOCKING_OK, mutexes, reserved);
            assert_eq!(
                call!(r, C_Initialize(&mut args as *mut _ as *mut _)),
                CKR_ARGUMENTS_BAD,
                "pReserved = {what}"
            );
            assert_eq!(
                call!(r, C_GetSlotList(CK_TRUE, ptr::null_mut(), &mut count)),
                CKR_CRYPTOKI_NOT_INITIALIZED,
                "pReserved = {what}"
            );
        }
    }
    let mut args = init_args(CKF_OS_LOCKING_OK, false, ptr::null_mut());
    initialize_shows_one_slot(&r, &mut args);
    assert_eq!(call!(r, C_Finalize(ptr::null_mut())), CKR_OK);
    // SAFETY: the page mapped above, no longer referenced.
    assert_eq!(unsafe { libc::munmap(page, 4096) }, 0);
}

#[test]
fn handles_stay_valid_across_reinitialization() {
    let _turn = turn();
    let s = setup(None);
    let (public, private) = {
        let p = s.load();
        keypair(&p.user_session(), "kept-handle")
    };
    let p = s.load();
    let session = p.user_session();
    let found = session
        .find_objects(&[Attribute::Label(b"kept-handle".to_vec())])
        .unwrap();
    assert!(
        found.contains(&public) && found.contains(&private),
        "{found:?}"
    );
    let sig = session
        .sign(&Mechanism::EcdsaSha256, private, b"same key")
        .unwrap();
    session
        .verify(&Mechanism::EcdsaSha256, public, b"same key", &sig)
        .unwrap();
}

#[test]
fn survives_many_initialize_finalize_cycles() {
    let _turn = turn();
    let s = setup(None);
    for i in 0..40 {
        let p = s.load();
        if i % 10 == 0 {
            let session = p.user_session();
            let (_, private) = keypair(&session, &format!("cycle-{i}"));
            let sig = session
                .sign(&Mechanism::EcdsaSha256, private, b"cycle")
                .unwrap();
            assert_eq!(sig.len(), 64);
        }
        drop(p);
    }
}

fn keypair(session: &cryptoki::session::Session, label: &str) -> (ObjectHandle, ObjectHandle) {
    session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a]),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
        .unwrap()
}

#[test]
fn get_attribute_value_answers_every_attribute() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let (_, private) = keypair(&session, "attrs");
    let r = raw();
    let mut id = [0u8; 4]; // the default id is 16 bytes: too small
    let mut key_type: CK_ULONG = 0;
    let mut template = [
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: 0x0dea_dbee,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: CKA_ID,
            pValue: id.as_mut_ptr() as *mut _,
            ulValueLen: id.len() as CK_ULONG,
        },
        CK_ATTRIBUTE {
            type_: CKA_KEY_TYPE,
            pValue: &mut key_type as *mut _ as *mut _,
            ulValueLen: 8,
        },
    ];
    let rv = call!(
        r,
        C_GetAttributeValue(session.handle(), private.handle(), template.as_mut_ptr(), 5)
    );
    // All three conditions at once: the documented precedence picks SENSITIVE.
    assert_eq!(rv, CKR_ATTRIBUTE_SENSITIVE, "rv {rv:#x}");
    assert_eq!(template[0].ulValueLen, 5, "length query for the label");
    assert_eq!(
        template[1].ulValueLen, CK_UNAVAILABLE_INFORMATION,
        "sensitive CKA_VALUE"
    );
    assert_eq!(
        template[2].ulValueLen, CK_UNAVAILABLE_INFORMATION,
        "unknown attribute"
    );
    assert_eq!(
        template[3].ulValueLen, CK_UNAVAILABLE_INFORMATION,
        "short buffer"
    );
    assert_eq!(template[4].ulValueLen, 8, "the rest is still filled");
    assert_eq!(key_type, CKK_EC);
    // Each rule alone gives its own code.
    let mut only_value = [CK_ATTRIBUTE {
        type_: CKA_VALUE,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    }];
    assert_eq!(
        call!(
            r,
            C_GetAttributeValue(
                session.handle(),
                private.handle(),
                only_value.as_mut_ptr(),
                1
            )
        ),
        CKR_ATTRIBUTE_SENSITIVE
    );
    let mut only_short = [CK_ATTRIBUTE {
        type_: CKA_ID,
        pValue: id.as_mut_ptr() as *mut _,
        ulValueLen: 4,
    }];
    assert_eq!(
        call!(
            r,
            C_GetAttributeValue(
                session.handle(),
                private.handle(),
                only_short.as_mut_ptr(),
                1
            )
        ),
        CKR_BUFFER_TOO_SMALL
    );
    let mut only_unknown = [CK_ATTRIBUTE {
        type_: CKA_MODULUS,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    }];
    assert_eq!(
        call!(
            r,
            C_GetAttributeValue(
                session.handle(),
                private.handle(),
                only_unknown.as_mut_ptr(),
                1
            )
        ),
        CKR_ATTRIBUTE_TYPE_INVALID
    );
    assert_eq!(
        call!(
            r,
            C_GetAttributeValue(session.handle(), 9_999_999, only_unknown.as_mut_ptr(), 1)
        ),
        CKR_OBJECT_HANDLE_INVALID
    );
}

#[test]
fn null_pointers_and_short_buffers() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let (_, private) = keypair(&session, "buffers");
    let r = raw();
    let h = session.handle();
    assert_eq!(
        call!(r, C_GetSlotList(CK_TRUE, ptr::null_mut(), ptr::null_mut())),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(call!(r, C_GetInfo(ptr::null_mut())), CKR_ARGUMENTS_BAD);
    assert_eq!(
        call!(
            r,
            C_OpenSession(
                1,
                CKF_SERIAL_SESSION,
                ptr::null_mut(),
                None,
                ptr::null_mut()
            )
        ),
        CKR_ARGUMENTS_BAD
    );
    let mut sh: CK_SESSION_HANDLE = 0;
    assert_eq!(
        call!(r, C_OpenSession(1, 0, ptr::null_mut(), None, &mut sh)),
        CKR_SESSION_PARALLEL_NOT_SUPPORTED
    );
    assert_eq!(
        call!(
            r,
            C_OpenSession(7, CKF_SERIAL_SESSION, ptr::null_mut(), None, &mut sh)
        ),
        CKR_SLOT_ID_INVALID
    );
    assert_eq!(
        call!(r, C_FindObjectsInit(h, ptr::null_mut(), 1)),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        call!(r, C_Login(h, CKU_USER, ptr::null_mut(), 4)),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        call!(r, C_SignInit(h, ptr::null_mut(), private.handle())),
        CKR_ARGUMENTS_BAD
    );

    let mut unknown = CK_MECHANISM {
        mechanism: CKM_SHA256_RSA_PKCS,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(
        call!(r, C_SignInit(h, &mut unknown, private.handle())),
        CKR_MECHANISM_INVALID
    );
    let mut mech = CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(
        call!(r, C_SignInit(h, &mut mech, 424_242)),
        CKR_KEY_HANDLE_INVALID
    );
    assert_eq!(call!(r, C_SignInit(h, &mut mech, private.handle())), CKR_OK);
    assert_eq!(
        call!(r, C_SignInit(h, &mut mech, private.handle())),
        CKR_OPERATION_ACTIVE
    );
    let mut digest = [7u8; 32];
    let mut sig = [0u8; 64];
    let mut len: CK_ULONG = 0;
    assert_eq!(
        call!(
            r,
            C_Sign(
                h,
                digest.as_mut_ptr(),
                32,
                sig.as_mut_ptr(),
                ptr::null_mut()
            )
        ),
        CKR_ARGUMENTS_BAD
    );
    // That error ended the signing (every error but CKR_BUFFER_TOO_SMALL
    // does, PKCS#11 3.0 §5.13): it starts again.
    assert_eq!(call!(r, C_SignInit(h, &mut mech, private.handle())), CKR_OK);
    // Length query: answered without signing, the operation stays active.
    assert_eq!(
        call!(
            r,
            C_Sign(h, digest.as_mut_ptr(), 32, ptr::null_mut(), &mut len)
        ),
        CKR_OK
    );
    assert_eq!(len, 64);
    len = 10;
    assert_eq!(
        call!(
            r,
            C_Sign(h, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut len)
        ),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(len, 64);
    assert!(
        sig.iter().all(|&b| b == 0),
        "nothing written into a short buffer"
    );
    len = 64;
    assert_eq!(
        call!(
            r,
            C_Sign(h, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut len)
        ),
        CKR_OK
    );
    assert_eq!(len, 64);
    assert_eq!(
        call!(
            r,
            C_Sign(h, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut len)
        ),
        CKR_OPERATION_NOT_INITIALIZED
    );

    // Random bytes (from the backing HSM); a null buffer is refused.
    let mut random = [0u8; 32];
    assert_eq!(
        call!(r, C_GenerateRandom(h, random.as_mut_ptr(), 32)),
        CKR_OK
    );
    assert!(random.iter().any(|&b| b != 0));
    assert_eq!(
        call!(r, C_GenerateRandom(h, ptr::null_mut(), 32)),
        CKR_ARGUMENTS_BAD
    );
}

#[test]
fn a_forked_child_must_initialize_again() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let (_, private) = keypair(&session, "forked");
    let r = raw();
    // SAFETY: the child only calls the provider and then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = (|| {
            let mut count: CK_ULONG = 0;
            if call!(r, C_GetSlotList(CK_TRUE, ptr::null_mut(), &mut count))
                != CKR_CRYPTOKI_NOT_INITIALIZED
            {
                return 10;
            }
            // The child inherits P11DERIVE_CONF, which `load` set.
            let mut args = init_args(CKF_OS_LOCKING_OK, false, ptr::null_mut());
            if call!(r, C_Initialize(&mut args as *mut _ as *mut _)) != CKR_OK {
                return 11;
            }
            let mut h: CK_SESSION_HANDLE = 0;
            if call!(
                r,
                C_OpenSession(1, CKF_SERIAL_SESSION, ptr::null_mut(), None, &mut h)
            ) != CKR_OK
            {
                return 12;
            }
            let mut pin = PIN.as_bytes().to_vec();
            if call!(
                r,
                C_Login(h, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG)
            ) != CKR_OK
            {
                return 13;
            }
            let mut label = b"forked".to_vec();
            let mut class = CKO_PRIVATE_KEY;
            let mut t = [
                CK_ATTRIBUTE {
                    type_: CKA_LABEL,
                    pValue: label.as_mut_ptr() as *mut _,
                    ulValueLen: 6,
                },
                CK_ATTRIBUTE {
                    type_: CKA_CLASS,
                    pValue: &mut class as *mut _ as *mut _,
                    ulValueLen: 8,
                },
            ];
            let mut key: CK_OBJECT_HANDLE = 0;
            let mut n: CK_ULONG = 0;
            if call!(r, C_FindObjectsInit(h, t.as_mut_ptr(), 2)) != CKR_OK
                || call!(r, C_FindObjects(h, &mut key, 1, &mut n)) != CKR_OK
                || n != 1
            {
                return 14;
            }
            let mut mech = CK_MECHANISM {
                mechanism: CKM_ECDSA,
                pParameter: ptr::null_mut(),
                ulParameterLen: 0,
            };
            let mut digest = [1u8; 32];
            let mut sig = [0u8; 64];
            let mut len: CK_ULONG = 64;
            if call!(r, C_SignInit(h, &mut mech, key)) != CKR_OK
                || call!(
                    r,
                    C_Sign(h, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut len)
                ) != CKR_OK
            {
                return 15;
            }
            if call!(r, C_Finalize(ptr::null_mut())) != CKR_OK {
                return 16;
            }
            0
        })();
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child crashed: status {status}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child failed at step {}",
        libc::WEXITSTATUS(status)
    );
    // The parent keeps working.
    let sig = session
        .sign(&Mechanism::Ecdsa, private, &[2u8; 32])
        .unwrap();
    assert_eq!(sig.len(), 64);
}
