//! Any text as proxy.toml: loading never panics, and either yields a config or names
//! every problem with a key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = holdfast::config::from_toml_str(text) {
        assert!(!error.problems.is_empty());
        let _ = error.to_string();
    }
});
