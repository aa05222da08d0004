//! What an AMI peer sends, in pieces of any size: framed into messages or refused.
#![no_main]

use bytes::BytesMut;
use callverify_pbx::ami::message::AmiCodec;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = AmiCodec::default();
    let mut buf = BytesMut::new();
    // The first byte picks the size of the pieces the stream arrives in.
    let piece = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
