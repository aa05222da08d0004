//! A SIP datagram as the probe receives it, and the header values it reads from one.
#![no_main]

use callverify_probe::sip::digest::Challenge;
use callverify_probe::sip::message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Challenge::parse(text);
        let _ = message::tag_of(text);
    }
    let Ok(sip) = rsip::SipMessage::try_from(data) else {
        return;
    };
    let _ = (
        message::to_tag(&sip),
        message::branch(&sip),
        message::cseq(&sip),
    );
    let _ = message::record_routes(&sip);
});
