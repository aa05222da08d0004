//! A FastAGI reply line, as Asterisk's `res_agi` sends them: parsed or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in String::from_utf8_lossy(data).split('\n') {
        let _ = callverify_pbx::agi::reply::parse_line(line);
    }
});
