//! The config parser: any text must give a `Config` or an error message,
//! never a panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use p11derive::config::Config;

fuzz_target!(|data: &[u8]| {
    // Invalid UTF-8 cannot reach the parser (`Config::load` reads a String);
    // the lossy form still lets every input exercise it.
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/fuzz/p11derive.toml");
    match Config::parse(&text, path) {
        Ok(config) => {
            // A parsed config has been checked: these must not fail.
            let level = config.log_level();
            assert!(level.is_ok(), "checked config has a bad level: {level:?}");
            assert_eq!(config.source, path);
            assert!(!config.backend.token_label.is_empty());
            assert!(!config.token.label.is_empty() && config.token.label.len() <= 32);
        }
        Err(message) => {
            // The message names the file, as the README promises.
            assert!(
                message.contains("/fuzz/p11derive.toml"),
                "error without the file name: {message}"
            );
        }
    }
});
