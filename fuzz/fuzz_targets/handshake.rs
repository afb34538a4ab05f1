//! Arbitrary frames into the server side of the handshake: it must never
//! panic, and no input without the secret may authenticate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::auth::{Nonce, Secret, ServerHandshake, ServerStep};
use transport::wire::{FrameDecoder, Limits};

fuzz_target!(|input: &[u8]| {
    // The fuzzer does not know this secret, so it must never get through.
    let secret = Secret::from_bytes(&[0x5a; 32]).expect("32 bytes");
    let mut hs = ServerHandshake::new(secret, Nonce([7; 32]));
    let mut dec = FrameDecoder::new(Limits::HANDSHAKE);
    dec.feed(input);
    while let Ok(Some(frame)) = dec.next_frame() {
        let Ok(req) = frame.request() else { return };
        match hs.on_request(&req) {
            ServerStep::Reply(_) => {}
            ServerStep::Authenticated(_) => panic!("authenticated without the secret"),
            ServerStep::Refuse(..) => return,
        }
    }
});
