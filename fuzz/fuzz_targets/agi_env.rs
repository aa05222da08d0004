//! A FastAGI environment block, line by line as the session reads it.
#![no_main]

use callverify_pbx::agi::env::AgiEnv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut env = AgiEnv::default();
    for line in String::from_utf8_lossy(data).split('\n') {
        if line.is_empty() || env.push_line(line).is_err() {
            break;
        }
    }
    if env.validate().is_ok() {
        let _ = (
            env.script(),
            env.channel(),
            env.uniqueid(),
            env.language(),
            env.arg(1),
        );
    }
});
