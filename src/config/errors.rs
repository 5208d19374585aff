//! The messages a config file that cannot be read or parsed gets: the file, TOML's own position and caret, the key, the fix.

use std::path::Path;

use super::{DEFAULT_PATH, ENV_VAR};

/// Where the config path came from, for the hint of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Named by the caller (the CLI's `--config FILE`).
    Given,
    /// From `P11DERIVE_CONF`.
    Env,
    /// The default path (nothing named a file).
    Default,
}

impl Origin {
    /// Where `path` (as [`super::locate`] picked it) came from: the
    /// environment when `P11DERIVE_CONF` names it, the default when it is
    /// [`DEFAULT_PATH`] and nothing else named it, else the caller.
    pub fn of(path: &Path) -> Origin {
        match std::env::var_os(ENV_VAR) {
            Some(v) if !v.is_empty() && Path::new(&v) == path => Origin::Env,
            _ if path == Path::new(DEFAULT_PATH) => Origin::Default,
            _ => Origin::Given,
        }
    }

    /// How to point p11derive at the right file instead.
    fn elsewhere(self) -> String {
        match self {
            Origin::Given => "or fix the path given to --config".into(),
            Origin::Env => format!("or point {ENV_VAR} at the right file"),
            Origin::Default => format!(
                "or name another file (the CLI's --config FILE, or {ENV_VAR} for the CLI and \
                 the provider)"
            ),
        }
    }
}

/// The config file could not be read.
pub fn unreadable(path: &Path, e: &std::io::Error) -> String {
    let origin = Origin::of(path);
    let what = match origin {
        Origin::Given => "given with --config",
        Origin::Env => "named by P11DERIVE_CONF",
        Origin::Default => "the default",
    };
    format!(
        "cannot read config file {} ({what}): {e}; create it (see README.md, \"Configuration\") \
         {}",
        path.display(),
        origin.elsewhere()
    )
}

/// A minimal `[backend]` table, for messages.
const BACKEND_EXAMPLE: &str = "[backend]\n\
     module = \"/usr/lib/softhsm/libsofthsm2.so\"   # the backing HSM's PKCS#11 module\n\
     token_label = \"custody-root\"                 # the backing token holding the root";

/// A config text TOML or its schema refused. A required key or table left
/// out is named with an example (TOML would place it at the start of the
/// file or of its table, which says nothing); every other error keeps
/// TOML's own lines: position, the line with a caret under the fault, what
/// was expected.
pub fn invalid(path: &Path, e: &toml::de::Error) -> String {
    let file = path.display();
    let missing = e
        .message()
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'));
    match missing {
        Some("backend") => format!(
            "config file {file}: the [backend] table is missing; it names the backing HSM's \
             module and token. Add at least:\n\n{BACKEND_EXAMPLE}"
        ),
        Some(key @ ("module" | "token_label")) => format!(
            "config file {file}: [backend] {key} is missing; [backend] needs at least:\n\n\
             {BACKEND_EXAMPLE}"
        ),
        Some(key) => format!(
            "config file {file}: the key {key} is missing (every key is in README.md, \
             \"Configuration\")"
        ),
        None => format!(
            "config file {file} is invalid:\n{}\nFix it there (every key is in README.md, \
             \"Configuration\").",
            masked(e.to_string().trim_end())
        ),
    }
}

/// TOML's message with any database password in the quoted line masked,
/// character for character (the caret below stays under the fault): the
/// `PASSWORD` of `scheme://USER:PASSWORD@` and the value of `password=`.
fn masked(text: &str) -> String {
    let mut out: Vec<char> = text.chars().collect();
    let mut mask = |from: usize, to: usize| {
        for c in &mut out[from..to] {
            *c = '*';
        }
    };
    let chars: Vec<char> = text.chars().collect();
    let ends = |c: char| c.is_whitespace() || c == '"' || c == '\'';
    let mut i = 0;
    while i < chars.len() {
        if chars[i..].starts_with(&['/', '/']) {
            // USER:PASSWORD@ up to the host.
            let rest = &chars[i + 2..];
            let end = rest
                .iter()
                .position(|&c| ends(c) || c == '/')
                .unwrap_or(rest.len());
            if let Some(at) = rest[..end].iter().rposition(|&c| c == '@') {
                if let Some(colon) = rest[..at].iter().position(|&c| c == ':') {
                    mask(i + 2 + colon + 1, i + 2 + at);
                }
            }
        }
        let key: Vec<char> = "password=".chars().collect();
        if chars[i..].starts_with(&key) {
            let from = i + key.len();
            let len = chars[from..]
                .iter()
                .position(|&c| ends(c) || c == '&')
                .unwrap_or(chars.len() - from);
            mask(from, from + len);
        }
        i += 1;
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const GOOD: &str = "[backend]\nmodule = \"/m.so\"\ntoken_label = \"t\"\n";

    #[test]
    fn a_database_password_in_the_quoted_line_is_masked() {
        for (text, hidden) in [
            (
                "[backend]\nmodule = \"/m.so\"\ntoken_label = \"t\"\n[store]\nurl = \"postgres://u:Sup3rSecret@h/db\n",
                "Sup3rSecret",
            ),
            (
                "[backend]\nmodule = \"/m.so\"\ntoken_label = \"t\"\n[store]\nurl = \"postgres://u@h/db?password=hunter22&x=1\" x\n",
                "hunter22",
            ),
        ] {
            let m = Config::parse(text, Path::new("/etc/p.toml")).unwrap_err();
            assert!(!m.contains(hidden), "{m}");
            assert!(m.contains("postgres://u") && m.contains('*'), "{m}");
        }
        assert_eq!(
            masked("x = \"postgres://u:pw@h/d\""),
            "x = \"postgres://u:**@h/d\""
        );
    }

    #[test]
    fn a_syntax_error_keeps_tomls_lines_and_caret() {
        let text = "[backend]\nmodule = \"/m.so\"\ntoken_label = t\n";
        let e = Config::parse(text, Path::new("/c.toml")).unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines[0], "config file /c.toml is invalid:", "{e}");
        assert!(lines[1].contains("line 3, column 15"), "{e}");
        assert_eq!(lines[3], "3 | token_label = t", "{e}");
        assert_eq!(lines[4], "  |               ^", "{e}");
        assert!(lines.last().unwrap().starts_with("Fix it there"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_shown_where_it_is() {
        let text = format!("{GOOD}[store]\npaht = \"/s.db\"\n");
        let e = Config::parse(&text, Path::new("/c.toml")).unwrap_err();
        assert!(e.contains("line 5, column 1") && e.contains("paht"), "{e}");
        assert!(e.contains("\n5 | paht = \"/s.db\"\n"), "{e}");
    }

    #[test]
    fn a_missing_backend_is_named_without_a_position() {
        let e = Config::parse("[token]\nlabel = \"t\"\n", Path::new("/c.toml")).unwrap_err();
        assert!(
            e.starts_with("config file /c.toml: the [backend] table is missing"),
            "{e}"
        );
        assert!(!e.contains("line 1"), "{e}");
        assert!(e.contains("\n[backend]\nmodule = \""), "{e}");
        // The example is itself a valid config.
        let example = e.split_once("Add at least:\n\n").unwrap().1;
        Config::parse(example, Path::new("/x.toml")).unwrap();
    }

    #[test]
    fn a_missing_backend_key_is_named() {
        let e = Config::parse("[backend]\nmodule = \"/m.so\"\n", Path::new("/c.toml")).unwrap_err();
        assert!(
            e.starts_with("config file /c.toml: [backend] token_label is missing"),
            "{e}"
        );
        assert!(!e.contains("line 1"), "{e}");
    }

    #[test]
    fn the_hint_follows_where_the_path_came_from() {
        let missing = Path::new("/nonexistent/given.toml");
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = unreadable(missing, &io);
        assert!(
            e.contains("(given with --config)") && e.contains("fix the path given to --config"),
            "{e}"
        );
        assert!(!e.contains(ENV_VAR), "{e}");
        let e = unreadable(Path::new(DEFAULT_PATH), &io);
        assert!(
            e.contains("(the default)") && e.contains("--config FILE"),
            "{e}"
        );
    }
}
