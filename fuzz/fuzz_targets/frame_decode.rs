//! Arbitrary bytes into the frame decoder and the body decoders: they must
//! return errors, never panic, and whatever decodes must re-encode to the
//! same bytes (the encoding is canonical, so nothing is silently dropped).
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::wire::{FrameDecoder, Limits, Request, Response};

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else {
        return;
    };

    // 1. The stream decoder, fed in chunks of a size the input picks.
    let chunk = usize::from(first % 64) + 1;
    let mut dec = FrameDecoder::new(Limits::PROTOCOL);
    let mut sink = vec![0u8; 4096];
    'feed: for piece in rest.chunks(chunk) {
        dec.feed(piece);
        loop {
            while dec.take_data(&mut sink) > 0 {}
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    let _ = frame.request();
                    let _ = frame.response();
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }

    // 2. The body decoders directly, with the first byte as opcode.
    let data_len = rest.len() as u32;
    for announced in [0, data_len] {
        if let Ok(req) = Request::decode(first, rest, announced) {
            let mut out = Vec::new();
            req.encode_body(&mut out);
            assert_eq!(out, rest, "request body is not canonical");
        }
        if let Ok(resp) = Response::decode(first, rest, announced) {
            let mut out = Vec::new();
            resp.encode_body(&mut out);
            // The one accepted older form: a 264-byte BrickStats reply (before
            // `corrupt_blocks`) re-encodes as the current 272 bytes.
            if first == 0x30 && rest.len() == 264 {
                assert_eq!(&out[..264], rest, "brick stats body is not canonical");
            } else {
                assert_eq!(out, rest, "response body is not canonical");
            }
        }
    }
});
