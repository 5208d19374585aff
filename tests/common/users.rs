//! Users-mode set-ups shared by the tests: the service credential in a file, the first admin
//! (`admin`, secret [`ADMIN`]) made by `init --admin`, users added with secrets, the CLI run as
//! a user, pkcs11-tool with the provider.

use std::process::{Command, Output};

use super::*;

/// The first admin's secret in a users-mode setup.
pub const ADMIN: &str = "admin-secret-1";

/// A users-mode setup (the store on PostgreSQL when `pg` names a database): the service credential in a 0600 file, the first
/// admin made by `init --admin`.
pub fn users_setup_on(pg: Option<&str>) -> Setup {
    let s = setup_with(None, false);
    if let Some(url) = pg {
        s.use_pg(url);
    }
    let pin_file = s.dir.join("service.pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!(
        "\n[users]\nenabled = true\nservice_pin_file = \"{}\"\nmax_failures = 3\nlockout_seconds = 600\n",
        pin_file.display()
    ));
    std::fs::write(&s.config, text).unwrap();
    let out = s
        .cli()
        .env("P11DERIVE_PIN", ADMIN)
        .args(["init", "--admin", "admin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "init --admin: {}", output_text(&out));
    s
}

/// The CLI as `user` with `secret`.
pub fn as_user(s: &Setup, user: &str, secret: &str, args: &[&str]) -> Output {
    s.cli()
        .env("P11DERIVE_USER", user)
        .env("P11DERIVE_PIN", secret)
        .args(args)
        .output()
        .unwrap()
}

pub fn ok_as(s: &Setup, user: &str, secret: &str, args: &[&str]) -> String {
    let out = as_user(s, user, secret, args);
    assert!(
        out.status.success(),
        "{user}: p11derive {}: {}",
        args.join(" "),
        output_text(&out)
    );
    output_text(&out)
}

/// `user add NAME --roles R --patterns P` by the admin, the secret from a file.
pub fn add_user(s: &Setup, name: &str, roles: &str, patterns: &str, secret: &str) {
    let file = s.dir.join(format!("{name}.secret"));
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    ok_as(
        s,
        "admin",
        ADMIN,
        &[
            "user",
            "add",
            name,
            "--roles",
            roles,
            "--patterns",
            patterns,
            "--secret-file",
            file.to_str().unwrap(),
        ],
    );
}

/// pkcs11-tool with the built provider and this setup's config.
pub fn tool(s: &Setup, args: &[&str]) -> Output {
    Command::new("pkcs11-tool")
        .arg("--module")
        .arg(module_path())
        .args(args)
        .env("P11DERIVE_CONF", &s.config)
        .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"))
        .output()
        .expect("pkcs11-tool runs")
}
