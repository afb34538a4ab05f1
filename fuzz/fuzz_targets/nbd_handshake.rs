//! Arbitrary bytes into the NBD handshake state machine: it must never
//! panic, and a finished handshake must name an export that exists.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nbd::{ExportSet, Handshake, HandshakeStep, MemoryExport};

fuzz_target!(|input: &[u8]| {
    let mut set = ExportSet::new();
    set.add("a", "export a", Arc::new(MemoryExport::new(4096)))
        .expect("valid export");
    set.add("b", "", Arc::new(MemoryExport::new(1 << 20)))
        .expect("valid export");
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    // Odd modes frame the input as well-formed options so the fuzzer reaches
    // option parsing instead of dying on the magic: [option, length, data..]*.
    let bytes = if mode & 1 == 1 {
        let mut v = u32::from(mode >> 1 & 3).to_be_bytes().to_vec();
        let mut r = rest;
        while let [opt, len, tail @ ..] = r {
            let n = usize::from(*len).min(tail.len());
            v.extend_from_slice(b"IHAVEOPT");
            v.extend_from_slice(&u32::from(*opt % 16).to_be_bytes());
            v.extend_from_slice(&(n as u32).to_be_bytes());
            v.extend_from_slice(&tail[..n]);
            r = &tail[n..];
        }
        v
    } else {
        rest.to_vec()
    };
    let mut hs = Handshake::new();
    for piece in bytes.chunks(13) {
        hs.feed(piece);
        let step = hs.step(&set);
        let _ = hs.take_output();
        match step {
            HandshakeStep::NeedMore => {}
            HandshakeStep::Done(n) => {
                assert!(set.get(&n.export_name).is_some());
                return;
            }
            HandshakeStep::Close(_) => return,
        }
    }
});
