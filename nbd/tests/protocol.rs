//! Byte-fixture tests of the handshake and transmission state machines: no
//! sockets, every byte on the wire spelled out.

use std::sync::Arc;

use nbd::wire::{self, *};
use nbd::{
    Action, ExportSet, Extent, Handshake, HandshakeClose, HandshakeStep, MemoryExport, Op, Params,
    ReadData, ReplyEncoder, Transmission,
};

fn exports() -> ExportSet {
    let mut s = ExportSet::new();
    s.add("disk", "the disk", Arc::new(MemoryExport::new(1 << 20)))
        .unwrap();
    s.add("other", "", Arc::new(MemoryExport::new(4096)))
        .unwrap();
    s
}

fn opt(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn name_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

/// Parsed option replies: (option, type, data).
fn replies(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert_eq!(
            u64::from_be_bytes(b[0..8].try_into().unwrap()),
            OPT_REPLY_MAGIC
        );
        let o = u32::from_be_bytes(b[8..12].try_into().unwrap());
        let t = u32::from_be_bytes(b[12..16].try_into().unwrap());
        let n = u32::from_be_bytes(b[16..20].try_into().unwrap()) as usize;
        out.push((o, t, b[20..20 + n].to_vec()));
        b = &b[20 + n..];
    }
    out
}

/// A handshake past the greeting and client flags.
fn started(flags: u32) -> (Handshake, ExportSet) {
    let set = exports();
    let mut hs = Handshake::new();
    let greeting = hs.take_output();
    assert_eq!(
        greeting,
        [
            b'N', b'B', b'D', b'M', b'A', b'G', b'I', b'C', b'I', b'H', b'A', b'V', b'E', b'O',
            b'P', b'T', 0, 3
        ]
    );
    hs.feed(&flags.to_be_bytes());
    assert_eq!(hs.step(&set), HandshakeStep::NeedMore);
    (hs, set)
}

#[test]
fn refuses_non_fixed_and_unknown_client_flags() {
    for flags in [0u32, 4, 0x8000_0001] {
        let set = exports();
        let mut hs = Handshake::new();
        hs.feed(&flags.to_be_bytes());
        assert_eq!(
            hs.step(&set),
            HandshakeStep::Close(HandshakeClose::BadClientFlags(flags))
        );
    }
}

#[test]
fn export_name_with_and_without_zeroes() {
    for (flags, pad) in [(1u32, 124usize), (3, 0)] {
        let (mut hs, set) = started(flags);
        hs.take_output();
        hs.feed(&opt(OPT_EXPORT_NAME, b"disk"));
        hs.feed(&[1, 2, 3]); // pipelined bytes survive into transmission
        let HandshakeStep::Done(n) = hs.step(&set) else {
            panic!("not done")
        };
        let out = hs.take_output();
        assert_eq!(out.len(), 10 + pad);
        assert_eq!(&out[0..8], &(1u64 << 20).to_be_bytes());
        let tflags = u16::from_be_bytes([out[8], out[9]]);
        assert_eq!(tflags, n.flags);
        assert!(out[10..].iter().all(|&b| b == 0));
        assert_eq!(n.leftover, vec![1, 2, 3]);
        assert!(!n.structured);
        assert_eq!(tflags & TF_SEND_DF, 0, "DF only with structured replies");
        assert_ne!(tflags & TF_CAN_MULTI_CONN, 0);
        assert_ne!(tflags & TF_SEND_TRIM, 0);
    }
}

#[test]
fn export_name_unknown_closes_and_default_is_first() {
    let (mut hs, set) = started(1);
    hs.feed(&opt(OPT_EXPORT_NAME, b"nope"));
    assert_eq!(
        hs.step(&set),
        HandshakeStep::Close(HandshakeClose::UnknownExport("nope".into()))
    );
    let (mut hs, set) = started(3);
    hs.feed(&opt(OPT_EXPORT_NAME, b""));
    let HandshakeStep::Done(n) = hs.step(&set) else {
        panic!()
    };
    assert_eq!(n.export_name, "disk");
}

#[test]
fn list_abort_unsupported_and_invalid() {
    let (mut hs, set) = started(1);
    hs.feed(&opt(OPT_LIST, b""));
    hs.feed(&opt(OPT_LIST, b"x"));
    hs.feed(&opt(5, b"")); // STARTTLS
    hs.feed(&opt(0x1234, b"abc"));
    hs.feed(&opt(OPT_STRUCTURED_REPLY, b"x"));
    assert_eq!(hs.step(&set), HandshakeStep::NeedMore);
    let r = replies(&hs.take_output());
    let mut disk = 4u32.to_be_bytes().to_vec();
    disk.extend_from_slice(b"diskthe disk");
    let mut other = 5u32.to_be_bytes().to_vec();
    other.extend_from_slice(b"other");
    assert_eq!(r[0], (OPT_LIST, REP_SERVER, disk));
    assert_eq!(r[1], (OPT_LIST, REP_SERVER, other));
    assert_eq!(r[2], (OPT_LIST, REP_ACK, vec![]));
    assert_eq!((r[3].0, r[3].1), (OPT_LIST, REP_ERR_INVALID));
    assert_eq!((r[4].0, r[4].1), (5, REP_ERR_UNSUP));
    assert_eq!((r[5].0, r[5].1), (0x1234, REP_ERR_UNSUP));
    assert_eq!((r[6].0, r[6].1), (OPT_STRUCTURED_REPLY, REP_ERR_INVALID));
    assert_eq!(r.len(), 7);
    hs.feed(&opt(OPT_ABORT, b""));
    assert_eq!(hs.step(&set), HandshakeStep::Close(HandshakeClose::Abort));
    assert_eq!(
        replies(&hs.take_output()),
        vec![(OPT_ABORT, REP_ACK, vec![])]
    );
}

#[test]
fn oversized_option_is_refused_and_skipped_in_pieces() {
    let (mut hs, set) = started(1);
    let big = vec![7u8; 70_000];
    let bytes = opt(0x77, &big);
    for piece in bytes.chunks(1000) {
        hs.feed(piece);
        assert_eq!(hs.step(&set), HandshakeStep::NeedMore);
    }
    hs.feed(&opt(OPT_LIST, b""));
    assert_eq!(hs.step(&set), HandshakeStep::NeedMore);
    let r = replies(&hs.take_output());
    assert_eq!((r[0].0, r[0].1), (0x77, REP_ERR_TOO_BIG));
    assert_eq!(r.last().unwrap().1, REP_ACK);
}

#[test]
fn info_then_go_with_block_size_name_and_description() {
    let (mut hs, set) = started(1);
    hs.feed(&opt(OPT_INFO, &name_data("nope", &[])));
    hs.feed(&opt(OPT_INFO, &[0, 0, 0, 9, b'd'])); // name length past the data
    hs.feed(&opt(
        OPT_INFO,
        &name_data("disk", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]),
    ));
    assert_eq!(hs.step(&set), HandshakeStep::NeedMore);
    let r = replies(&hs.take_output());
    assert_eq!((r[0].0, r[0].1), (OPT_INFO, REP_ERR_UNKNOWN));
    assert_eq!((r[1].0, r[1].1), (OPT_INFO, REP_ERR_INVALID));
    let flags = TF_HAS_FLAGS
        | TF_SEND_FLUSH
        | TF_SEND_FUA
        | TF_SEND_TRIM
        | TF_SEND_WRITE_ZEROES
        | TF_CAN_MULTI_CONN
        | TF_SEND_CACHE
        | TF_SEND_FAST_ZERO;
    let mut export = vec![0, 0];
    export.extend_from_slice(&(1u64 << 20).to_be_bytes());
    export.extend_from_slice(&flags.to_be_bytes());
    assert_eq!(r[2], (OPT_INFO, REP_INFO, export));
    assert_eq!(
        r[3],
        (OPT_INFO, REP_INFO, [&[0u8, 1][..], b"disk"].concat())
    );
    assert_eq!(
        r[4],
        (OPT_INFO, REP_INFO, [&[0u8, 2][..], b"the disk"].concat())
    );
    let mut bs = vec![0, 3];
    for v in [1u32, 4096, 32 << 20] {
        bs.extend_from_slice(&v.to_be_bytes());
    }
    assert_eq!(r[5], (OPT_INFO, REP_INFO, bs));
    assert_eq!(r[6], (OPT_INFO, REP_ACK, vec![]));
    hs.feed(&opt(OPT_STRUCTURED_REPLY, b""));
    hs.feed(&opt(OPT_GO, &name_data("other", &[])));
    let HandshakeStep::Done(n) = hs.step(&set) else {
        panic!()
    };
    assert!(n.structured);
    assert_eq!(n.size, 4096);
    assert_ne!(n.flags & TF_SEND_DF, 0);
    assert_eq!(n.base_allocation, None);
}

#[test]
fn meta_contexts_need_structured_and_follow_the_export() {
    let (mut hs, set) = started(1);
    hs.feed(&opt(
        OPT_SET_META_CONTEXT,
        &meta_data("disk", &[BASE_ALLOCATION]),
    ));
    assert_eq!(hs.step(&set), HandshakeStep::NeedMore);
    assert_eq!(replies(&hs.take_output())[0].1, REP_ERR_INVALID);
    hs.feed(&opt(OPT_STRUCTURED_REPLY, b""));
    hs.feed(&opt(OPT_LIST_META_CONTEXT, &meta_data("disk", &[])));
    hs.feed(&opt(
        OPT_LIST_META_CONTEXT,
        &meta_data("disk", &["qemu:dirty-bitmap:x"]),
    ));
    hs.feed(&opt(
        OPT_SET_META_CONTEXT,
        &meta_data("nope", &[BASE_ALLOCATION]),
    ));
    hs.feed(&opt(
        OPT_SET_META_CONTEXT,
        &meta_data("disk", &["x-foo:bar", BASE_ALLOCATION]),
    ));
    assert_eq!(hs.step(&set), HandshakeStep::NeedMore);
    let r = replies(&hs.take_output());
    let ctx = |id: u32| [&id.to_be_bytes()[..], BASE_ALLOCATION.as_bytes()].concat();
    assert_eq!(r[0], (OPT_STRUCTURED_REPLY, REP_ACK, vec![]));
    assert_eq!(r[1], (OPT_LIST_META_CONTEXT, REP_META_CONTEXT, ctx(0)));
    assert_eq!(r[2], (OPT_LIST_META_CONTEXT, REP_ACK, vec![]));
    assert_eq!(r[3], (OPT_LIST_META_CONTEXT, REP_ACK, vec![]));
    assert_eq!(r[4].1, REP_ERR_UNKNOWN);
    assert_eq!(r[5], (OPT_SET_META_CONTEXT, REP_META_CONTEXT, ctx(1)));
    assert_eq!(r[6], (OPT_SET_META_CONTEXT, REP_ACK, vec![]));
    // GO to a different export than the selection: no context.
    let mut other = Handshake::new();
    other.feed(&1u32.to_be_bytes());
    other.feed(&opt(OPT_STRUCTURED_REPLY, b""));
    other.feed(&opt(
        OPT_SET_META_CONTEXT,
        &meta_data("disk", &[BASE_ALLOCATION]),
    ));
    other.feed(&opt(OPT_GO, &name_data("other", &[])));
    let HandshakeStep::Done(n) = other.step(&set) else {
        panic!()
    };
    assert_eq!(n.base_allocation, None);
    hs.feed(&opt(OPT_GO, &name_data("disk", &[])));
    let HandshakeStep::Done(n) = hs.step(&set) else {
        panic!()
    };
    assert_eq!(n.base_allocation, Some(1));
}

#[test]
fn shutdown_refuses_options() {
    let (mut hs, set) = started(1);
    hs.begin_shutdown();
    hs.feed(&opt(OPT_LIST, b""));
    assert_eq!(hs.step(&set), HandshakeStep::NeedMore);
    assert_eq!(replies(&hs.take_output())[0].1, REP_ERR_SHUTDOWN);
    hs.feed(&opt(OPT_EXPORT_NAME, b"disk"));
    assert_eq!(
        hs.step(&set),
        HandshakeStep::Close(HandshakeClose::Shutdown)
    );
}

// ---- transmission ----

const SIZE: u64 = 1 << 20;

fn params(structured: bool) -> Params {
    Params {
        size: SIZE,
        flags: TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES,
        max_request: 32 << 20,
        structured,
        base_allocation: structured.then_some(1),
    }
}

fn req(kind: u16, flags: u16, handle: u64, offset: u64, length: u32) -> [u8; REQUEST_LEN] {
    RequestHeader {
        flags,
        kind,
        handle,
        offset,
        length,
    }
    .encode()
}

fn simple(handle: u64, err: u32) -> Vec<u8> {
    let mut v = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&err.to_be_bytes());
    v.extend_from_slice(&handle.to_be_bytes());
    v
}

fn reply_of(a: Option<Action>) -> Vec<u8> {
    match a {
        Some(Action::Reply(b)) => b,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn request_header_layout() {
    let b = req(
        CMD_WRITE,
        CMD_FLAG_FUA,
        0x0102030405060708,
        0x1112131415161718,
        0x21222324,
    );
    assert_eq!(
        b,
        [
            0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14,
            0x15, 0x16, 0x17, 0x18, 0x21, 0x22, 0x23, 0x24
        ]
    );
}

#[test]
fn write_payload_split_across_feeds() {
    let mut t = Transmission::new(params(false));
    let mut bytes = req(CMD_WRITE, CMD_FLAG_FUA, 9, 4096, 10).to_vec();
    bytes.extend_from_slice(b"0123456789");
    bytes.extend_from_slice(&req(CMD_FLUSH, 0, 10, 0, 0));
    for b in bytes.chunks(3) {
        t.feed(b);
    }
    match t.poll() {
        Some(Action::Execute(c)) => match c.op {
            Op::Write { offset, data, fua } => {
                assert_eq!((c.handle, offset, fua), (9, 4096, true));
                assert_eq!(data.as_slice(), b"0123456789");
            }
            o => panic!("{o:?}"),
        },
        o => panic!("{o:?}"),
    }
    assert!(
        matches!(t.poll(), Some(Action::Execute(c)) if c.handle == 10 && matches!(c.op, Op::Flush))
    );
    assert!(t.poll().is_none());
}

#[test]
fn errors_per_spec_simple() {
    let mut t = Transmission::new(params(false));
    t.feed(&req(CMD_READ, 0, 1, SIZE - 1, 2));
    assert_eq!(reply_of(t.poll()), simple(1, errno::EINVAL));
    t.feed(&req(CMD_READ, 0, 2, 0, (32 << 20) + 1));
    assert_eq!(reply_of(t.poll()), simple(2, errno::EOVERFLOW));
    t.feed(&req(CMD_READ, CMD_FLAG_DF, 3, 0, 1)); // DF without structured replies
    assert_eq!(reply_of(t.poll()), simple(3, errno::EINVAL));
    t.feed(&req(99, 0, 4, 0, 0));
    assert_eq!(reply_of(t.poll()), simple(4, errno::EINVAL));
    t.feed(&req(CMD_BLOCK_STATUS, 0, 5, 0, 10)); // no context negotiated
    assert_eq!(reply_of(t.poll()), simple(5, errno::EINVAL));
    t.feed(&req(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 6, 0, 10)); // not advertised
    assert_eq!(reply_of(t.poll()), simple(6, errno::EINVAL));
    t.feed(&req(CMD_TRIM, 0, 7, u64::MAX - 1, 5)); // offset + length overflows
    assert_eq!(reply_of(t.poll()), simple(7, errno::EINVAL));
    // A write past the end: its payload is consumed, then ENOSPC.
    t.feed(&req(CMD_WRITE, 0, 8, SIZE - 2, 4));
    assert!(t.poll().is_none());
    t.feed(b"abcd");
    assert_eq!(reply_of(t.poll()), simple(8, errno::ENOSPC));
    // An oversized write is skipped without being buffered.
    t.feed(&req(CMD_WRITE, 0, 9, 0, (32 << 20) + 1));
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..32 {
        t.feed(&chunk);
        assert!(t.poll().is_none());
    }
    t.feed(&[0]);
    assert_eq!(reply_of(t.poll()), simple(9, errno::EOVERFLOW));
    // The stream is still in sync.
    t.feed(&req(CMD_CACHE, 0, 10, 0, 4096));
    assert!(matches!(t.poll(), Some(Action::Execute(c)) if c.handle == 10));
    t.begin_shutdown();
    t.feed(&req(CMD_READ, 0, 11, 0, 1));
    assert_eq!(reply_of(t.poll()), simple(11, errno::ESHUTDOWN));
    t.feed(&req(CMD_DISC, 0, 12, 0, 0));
    assert!(matches!(t.poll(), Some(Action::Disconnect)));
    t.feed(&req(CMD_FLUSH, 0, 13, 0, 0));
    assert!(t.poll().is_none(), "nothing after DISC");
}

#[test]
fn bad_magic_closes() {
    let mut t = Transmission::new(params(true));
    let mut b = req(CMD_READ, 0, 1, 0, 1);
    b[0] = 0;
    t.feed(&b);
    assert!(matches!(t.poll(), Some(Action::Close(_))));
    t.feed(&req(CMD_READ, 0, 2, 0, 1));
    assert!(t.poll().is_none());
}

#[test]
fn structured_error_chunk_layout() {
    let mut t = Transmission::new(params(true));
    t.feed(&req(CMD_READ, 0, 0xaa, SIZE, 1));
    let r = reply_of(t.poll());
    let msg = b"range past the end of the export";
    let mut want = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
    want.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
    want.extend_from_slice(&REPLY_TYPE_ERROR.to_be_bytes());
    want.extend_from_slice(&0xaau64.to_be_bytes());
    want.extend_from_slice(&(6 + msg.len() as u32).to_be_bytes());
    want.extend_from_slice(&errno::EINVAL.to_be_bytes());
    want.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    want.extend_from_slice(msg);
    assert_eq!(r, want);
    // Zero-length block status is refused.
    t.feed(&req(CMD_BLOCK_STATUS, 0, 1, 0, 0));
    assert_eq!(&reply_of(t.poll())[20..24], &errno::EINVAL.to_be_bytes());
}

fn chunk(flags: u16, kind: u16, handle: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    wire::put_chunk_header(&mut v, flags, kind, handle, payload.len() as u32);
    v.extend_from_slice(payload);
    v
}

#[test]
fn structured_read_sends_holes_and_df_does_not() {
    let enc = ReplyEncoder {
        structured: true,
        context_id: 1,
    };
    let mut data = vec![0u8; 8192];
    data[..4096].fill(0x5a);
    let read = ReadData {
        data: iobuf::IoBuf::from_slice(&data),
        holes: std::iter::once(4096..8192).collect(),
    };
    let r = enc.read(7, 1000, &read, false);
    let mut d = 1000u64.to_be_bytes().to_vec();
    d.extend_from_slice(&data[..4096]);
    let mut h = 5096u64.to_be_bytes().to_vec();
    h.extend_from_slice(&4096u32.to_be_bytes());
    let want = [
        chunk(0, REPLY_TYPE_OFFSET_DATA, 7, &d),
        chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_HOLE, 7, &h),
    ]
    .concat();
    assert_eq!(r, want);
    let r = enc.read(7, 1000, &read, true);
    let mut d = 1000u64.to_be_bytes().to_vec();
    d.extend_from_slice(&data);
    assert_eq!(r, chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 7, &d));
    let simple_enc = ReplyEncoder {
        structured: false,
        context_id: 0,
    };
    assert_eq!(
        simple_enc.read(7, 0, &read, false),
        [simple(7, 0), data].concat()
    );
}

#[test]
fn block_status_layout_clips_and_merges() {
    let enc = ReplyEncoder {
        structured: true,
        context_id: 1,
    };
    let ext = [
        Extent {
            length: 100,
            hole: false,
            zero: false,
        },
        Extent {
            length: 50,
            hole: false,
            zero: false,
        },
        Extent {
            length: 1000,
            hole: true,
            zero: true,
        },
    ];
    let r = enc.block_status(3, 200, &ext, false);
    let mut p = 1u32.to_be_bytes().to_vec();
    for (n, f) in [(150u32, 0u32), (50, STATE_HOLE | STATE_ZERO)] {
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&f.to_be_bytes());
    }
    assert_eq!(r, chunk(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, 3, &p));
    let r = enc.block_status(3, 200, &ext, true);
    let mut p = 1u32.to_be_bytes().to_vec();
    p.extend_from_slice(&100u32.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes());
    assert_eq!(r, chunk(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, 3, &p));
}
