//! Random bytes into both state machines never panic, and every action they
//! produce is well formed.

use std::sync::Arc;

use nbd::wire::*;
use nbd::{Action, ExportSet, Handshake, HandshakeStep, MemoryExport, Params, Transmission};
use proptest::prelude::*;

fn set() -> ExportSet {
    let mut s = ExportSet::new();
    s.add("a", "export a", Arc::new(MemoryExport::new(1 << 16)))
        .unwrap();
    s
}

/// Random bytes with a valid prefix now and then, so deeper states are reached.
fn handshake_input() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let option = (
        any::<u32>().prop_map(|o| o % 12),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(o, d)| {
            let mut v = IHAVEOPT.to_be_bytes().to_vec();
            v.extend_from_slice(&o.to_be_bytes());
            v.extend_from_slice(&(d.len() as u32).to_be_bytes());
            v.extend_from_slice(&d);
            v
        });
    let piece = prop_oneof![proptest::collection::vec(any::<u8>(), 0..40), option];
    proptest::collection::vec(piece, 0..12).prop_map(|mut v| {
        v.insert(0, 1u32.to_be_bytes().to_vec());
        v
    })
}

fn transmission_input() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let header = (
        any::<u16>(),
        any::<u16>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(|(flags, kind, handle, offset, length)| {
            RequestHeader {
                flags: flags % 64,
                kind: kind % 10,
                handle,
                offset: offset % (1 << 17),
                length: length % (1 << 17),
            }
            .encode()
            .to_vec()
        });
    let piece = prop_oneof![proptest::collection::vec(any::<u8>(), 0..64), header];
    proptest::collection::vec(piece, 0..16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn handshake_never_panics(pieces in handshake_input()) {
        let s = set();
        let mut hs = Handshake::new();
        for p in pieces {
            hs.feed(&p);
            match hs.step(&s) {
                HandshakeStep::NeedMore => {}
                HandshakeStep::Done(_) | HandshakeStep::Close(_) => break,
            }
            let _ = hs.take_output();
        }
    }

    #[test]
    fn transmission_never_panics(pieces in transmission_input(), structured in any::<bool>()) {
        let mut t = Transmission::new(Params {
            size: 1 << 16,
            flags: TF_HAS_FLAGS | TF_SEND_TRIM | TF_SEND_FAST_ZERO,
            max_request: 1 << 16,
            structured,
            base_allocation: structured.then_some(1),
        });
        'outer: for p in pieces {
            t.feed(&p);
            while let Some(a) = t.poll() {
                match a {
                    Action::Execute(c) => {
                        if let nbd::Op::Write { offset, data, .. } = c.op {
                            prop_assert!(offset + data.len() as u64 <= 1 << 16);
                        }
                    }
                    Action::Reply(r) => prop_assert!(r.len() >= SIMPLE_REPLY_LEN),
                    Action::Disconnect | Action::Close(_) => break 'outer,
                }
            }
        }
    }
}
