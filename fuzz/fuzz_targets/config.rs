//! The configuration loader: any text gives a configuration or an error
//! naming a field, never a panic; a valid one survives an empty merge
//! patch (what `PUT /api/v1/config` with `{}` does).
#![no_main]

use libfuzzer_sys::fuzz_target;
use speedmimi::config::RawConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(raw) = RawConfig::from_yaml_str(text, "fuzz.yaml") {
        let valid = speedmimi::config::Config::from_yaml_str(text, "fuzz.yaml").is_ok();
        let patched = raw.merge_patch("{}", "fuzz");
        assert_eq!(valid, patched.is_ok(), "an empty patch changes validity: {patched:?}");
    }
});
