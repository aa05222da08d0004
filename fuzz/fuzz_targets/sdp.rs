//! An SDP body from a SIP peer: read into what the probe negotiates, or refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = callverify_probe::sdp::parse(&String::from_utf8_lossy(data));
});
