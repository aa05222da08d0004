//! The recogniser's text ("four eight oh...", "4 8 0"): digits read out of anything.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let digits = callverify_speech::digits::digits_in(&String::from_utf8_lossy(data));
    assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{digits:?}");
});
