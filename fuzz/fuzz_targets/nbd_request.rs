//! Arbitrary bytes into the NBD transmission state machine: it must never
//! panic, and every write it lets through must lie inside the export.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd::wire::{TF_HAS_FLAGS, TF_SEND_FAST_ZERO, TF_SEND_TRIM};
use nbd::{Action, Op, Params, Transmission};

const SIZE: u64 = 1 << 20;

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else {
        return;
    };
    let structured = first & 1 != 0;
    let mut t = Transmission::new(Params {
        size: SIZE,
        flags: TF_HAS_FLAGS | TF_SEND_TRIM | TF_SEND_FAST_ZERO,
        max_request: 1 << 16,
        structured,
        base_allocation: structured.then_some(1),
    });
    // Feed in uneven pieces so every split point of a message is exercised.
    for piece in rest.chunks(usize::from(first % 37) + 1) {
        t.feed(piece);
        while let Some(action) = t.poll() {
            match action {
                Action::Execute(cmd) => {
                    if let Op::Write { offset, data, .. } = cmd.op {
                        assert!(offset + data.len() as u64 <= SIZE);
                    }
                }
                Action::Reply(_) => {}
                Action::Disconnect | Action::Close(_) => return,
            }
        }
    }
});
