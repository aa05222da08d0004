//! A phone number as the web app, the CLI or a caller ID sends it: E.164 or refused.
#![no_main]

use callverify::domain::phone::PhonePolicy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let policy = PhonePolicy {
        allowed_countries: vec!["US".into(), "CA".into(), "GB".into(), "ES".into()],
    };
    let text = String::from_utf8_lossy(data);
    if let Ok(number) = policy.parse(&text) {
        let e164 = number.as_str();
        assert!(e164.starts_with('+') && e164[1..].bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(
            policy.parse(e164).map(|n| n.as_str().to_owned()),
            Ok(e164.to_owned())
        );
    }
    let _ = policy.caller_id(&text);
});
