//! Wire format tests: byte fixtures (so the format cannot drift silently),
//! decoder behaviour on truncated, garbled and oversized input, and
//! round-trip property tests for every message.

use super::*;
use proptest::prelude::*;

/// `Ping { token: 0x1122334455667788 }`, request id 1.
#[rustfmt::skip]
const PING_FRAME: [u8; 40] = [
    b'S', b'T', b'R', b'B',                         // magic
    0x01,                                           // version
    0x03,                                           // opcode Ping
    0x00, 0x00,                                     // flags: request
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // request id 1
    0x08, 0x00, 0x00, 0x00,                         // body_len 8
    0x00, 0x00, 0x00, 0x00,                         // data_len 0
    0x16, 0x51, 0x59, 0xaf,                         // body crc32c
    0xd3, 0x50, 0x25, 0x62,                         // header crc32c
    0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // token
];

/// A write of 5 inline bytes to object (1, 2, 3) chunk 4 at 0x1000, epoch 7,
/// FUA, data crc 0xdeadbeef; request id 10.
#[rustfmt::skip]
const WRITE_FRAME: [u8; 104] = [
    b'S', b'T', b'R', b'B', 0x01, 0x11, 0x00, 0x00, // magic, version, Write, flags
    0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // request id 10
    0x48, 0x00, 0x00, 0x00,                         // body_len 72
    0x05, 0x00, 0x00, 0x00,                         // data_len 5
    0x90, 0x46, 0x89, 0xc1,                         // body crc32c
    0xbb, 0x9c, 0x91, 0x43,                         // header crc32c
    // body
    0x01, 0x00, 0x00, 0x00,                         // object.volume 1
    0x02, 0x00, 0x00, 0x00,                         // object.vnode 2
    0x03, 0x00, 0x00, 0x00,                         // object.unique 3
    0x00, 0x00, 0x00, 0x00,                         // object.reserved
    0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // object.chunk 4
    0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // offset 0x1000
    0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // epoch 7
    0x01, 0x00, 0x00, 0x00,                         // flags FUA
    0xef, 0xbe, 0xad, 0xde,                         // data crc32c
    0x01, 0x00, 0x00, 0x00,                         // data.kind inline, reserved
    0x05, 0x00, 0x00, 0x00,                         // data.len 5
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // data.addr
    0x00, 0x00, 0x00, 0x00,                         // data.rkey
    0x00, 0x00, 0x00, 0x00,                         // data.reserved
];

/// Error reply NotFound "gone" to request 9.
#[rustfmt::skip]
const ERROR_FRAME: [u8; 44] = [
    b'S', b'T', b'R', b'B', 0x01, 0x7f, 0x01, 0x00, // magic, version, Error, flags: reply
    0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // request id 9
    0x0c, 0x00, 0x00, 0x00,                         // body_len 12
    0x00, 0x00, 0x00, 0x00,                         // data_len 0
    0xdf, 0xf6, 0x0f, 0x16,                         // body crc32c
    0x22, 0x4f, 0xe9, 0x43,                         // header crc32c
    0x01, 0x00,                                     // code 1 NotFound
    0x04, 0x00,                                     // message length 4
    0x00, 0x00, 0x00, 0x00,                         // reserved
    b'g', b'o', b'n', b'e',
];

fn fixture_write() -> Request {
    Request::Write(WriteReq {
        object: ObjectId {
            volume: 1,
            vnode: 2,
            unique: 3,
            chunk: 4,
        },
        offset: 0x1000,
        epoch: 7,
        flags: FLAG_FUA,
        crc32c: 0xdead_beef,
        data: DataRef::Inline { len: 5 },
    })
}

fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
    let mut d = FrameDecoder::default();
    d.feed(bytes);
    d.next_frame()
}

#[test]
fn fixtures_encode_byte_for_byte() {
    assert_eq!(
        encode_request(
            1,
            &Request::Ping(Ping {
                token: 0x1122_3344_5566_7788
            })
        ),
        PING_FRAME
    );
    assert_eq!(encode_request(10, &fixture_write()), WRITE_FRAME);
    assert_eq!(
        encode_response(9, &Response::error(ErrorCode::NotFound, "gone")),
        ERROR_FRAME
    );
}

#[test]
fn fixtures_decode() {
    let f = decode_one(&PING_FRAME).unwrap().unwrap();
    assert_eq!(f.header.request_id, 1);
    assert_eq!(
        f.request().unwrap(),
        Request::Ping(Ping {
            token: 0x1122_3344_5566_7788
        })
    );
    let mut d = FrameDecoder::default();
    d.feed(&WRITE_FRAME);
    d.feed(b"hello");
    let f = d.next_frame().unwrap().unwrap();
    assert_eq!(f.request().unwrap(), fixture_write());
    assert_eq!(d.data_remaining(), 5);
    let mut data = [0u8; 5];
    assert_eq!(d.take_data(&mut data), 5);
    assert_eq!(&data, b"hello");
    assert!(d.is_idle());
    let f = decode_one(&ERROR_FRAME).unwrap().unwrap();
    assert!(f.header.is_reply());
    assert_eq!(
        f.response().unwrap(),
        Response::Error(ErrorReply::new(ErrorCode::NotFound, "gone"))
    );
    // A reply is not a request and vice versa.
    assert!(matches!(
        f.request(),
        Err(BodyError::UnexpectedReply { .. })
    ));
}

#[test]
fn truncated_frames_ask_for_more() {
    for cut in 0..WRITE_FRAME.len() {
        let mut d = FrameDecoder::default();
        d.feed(&WRITE_FRAME[..cut]);
        assert_eq!(d.next_frame(), Ok(None), "cut at {cut}");
        assert!(d.want() >= 1);
        d.feed(&WRITE_FRAME[cut..]);
        assert!(d.next_frame().unwrap().is_some(), "cut at {cut}");
    }
}

#[test]
fn want_never_reaches_past_the_body() {
    // A reader that reads exactly `want()` bytes never pulls data into the
    // decoder.
    let mut d = FrameDecoder::default();
    let mut fed = 0;
    let mut stream = WRITE_FRAME.to_vec();
    stream.extend_from_slice(b"hello");
    loop {
        if let Some(f) = d.next_frame().unwrap() {
            assert_eq!(fed, WRITE_FRAME.len());
            assert_eq!(f.header.data_len, 5);
            break;
        }
        let n = d.want();
        d.feed(&stream[fed..fed + n]);
        fed += n;
    }
    d.data_read_outside(5);
    assert!(d.is_idle());
}

fn with_header_crc(mut b: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&b[..H_HEAD_CRC]);
    b[H_HEAD_CRC..H_HEAD_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn garbled_headers_are_refused() {
    let mut b = PING_FRAME.to_vec();
    b[0] = b'X';
    assert!(matches!(decode_one(&b), Err(FrameError::BadMagic { .. })));

    let mut b = PING_FRAME.to_vec();
    b[H_VERSION] = 2;
    assert_eq!(decode_one(&b), Err(FrameError::BadVersion { found: 2 }));

    let mut b = PING_FRAME.to_vec();
    b[H_REQUEST_ID] ^= 1;
    assert!(matches!(decode_one(&b), Err(FrameError::HeaderCrc { .. })));

    let mut b = PING_FRAME.to_vec();
    b[HEADER_LEN] ^= 1;
    assert!(matches!(decode_one(&b), Err(FrameError::BodyCrc { .. })));

    let mut b = PING_FRAME.to_vec();
    b[H_FLAGS] = 0x02;
    let b = with_header_crc(b);
    assert_eq!(decode_one(&b), Err(FrameError::ReservedFlags { flags: 2 }));
}

#[test]
fn oversized_frames_are_refused() {
    let mut b = PING_FRAME.to_vec();
    b[H_DATA_LEN..H_DATA_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let b = with_header_crc(b);
    assert_eq!(
        decode_one(&b),
        Err(FrameError::DataTooLarge {
            len: u32::MAX,
            max: MAX_DATA
        })
    );
    let mut b = PING_FRAME.to_vec();
    b[H_BODY_LEN..H_BODY_LEN + 4].copy_from_slice(&(MAX_BODY + 1).to_le_bytes());
    let b = with_header_crc(b);
    assert!(matches!(
        decode_one(&b),
        Err(FrameError::BodyTooLarge { .. })
    ));
    // The handshake limits refuse data outright.
    let mut d = FrameDecoder::new(Limits::HANDSHAKE);
    d.feed(&WRITE_FRAME);
    assert!(matches!(
        d.next_frame(),
        Err(FrameError::DataTooLarge { .. })
    ));
}

#[test]
fn malformed_bodies_are_body_errors() {
    let op = Opcode::Ping as u8;
    assert!(matches!(
        Request::decode(op, &[0; 7], 0),
        Err(BodyError::Length { .. })
    ));
    assert_eq!(
        Request::decode(0x5f, &[], 0),
        Err(BodyError::UnknownOpcode { opcode: 0x5f })
    );
    assert!(matches!(
        Request::decode(Opcode::Error as u8, &[], 0),
        Err(BodyError::NotARequest { .. })
    ));
    // The write fixture's body with a reserved byte set, unknown flags, a
    // data length that disagrees with the header, a bad data kind.
    let body = &WRITE_FRAME[HEADER_LEN..];
    let wr = Opcode::Write as u8;
    assert_eq!(Request::decode(wr, body, 5), Ok(fixture_write()));
    let mut b = body.to_vec();
    b[12] = 1;
    assert!(matches!(
        Request::decode(wr, &b, 5),
        Err(BodyError::Reserved { .. })
    ));
    let mut b = body.to_vec();
    b[WR_FLAGS_AT] = 0x02;
    assert!(matches!(
        Request::decode(wr, &b, 5),
        Err(BodyError::UnknownFlags { .. })
    ));
    assert!(matches!(
        Request::decode(wr, body, 4),
        Err(BodyError::DataLen { .. })
    ));
    let mut b = body.to_vec();
    b[WR_DATA_AT] = 9;
    assert!(matches!(
        Request::decode(wr, &b, 5),
        Err(BodyError::DataRefKind { kind: 9, .. })
    ));
    let mut b = body.to_vec();
    b[WR_DATA_AT + 8] = 1; // inline data with an address
    assert!(matches!(
        Request::decode(wr, &b, 5),
        Err(BodyError::Reserved { .. })
    ));
    // Error reply with a length past the body, and with bad UTF-8.
    let eb = &ERROR_FRAME[HEADER_LEN..];
    let er = Opcode::Error as u8;
    let mut b = eb.to_vec();
    b[2] = 5;
    assert!(matches!(
        Response::decode(er, &b, 0),
        Err(BodyError::Length { .. })
    ));
    let mut b = eb.to_vec();
    b[8] = 0xff;
    assert!(matches!(
        Response::decode(er, &b, 0),
        Err(BodyError::NotUtf8 { .. })
    ));
}

#[test]
fn long_error_messages_are_cut_at_a_character_boundary() {
    let long = "é".repeat(MAX_ERROR_MESSAGE); // 2 bytes each
    let e = ErrorReply::new(ErrorCode::Io, long.clone());
    assert!(e.message.len() <= MAX_ERROR_MESSAGE);
    // Built by hand past the limit: still encodes to valid UTF-8.
    let raw = Response::Error(ErrorReply {
        code: ErrorCode::Io,
        message: format!("x{long}"),
    });
    let f = decode_one(&encode_response(1, &raw)).unwrap().unwrap();
    let Ok(Response::Error(got)) = f.response() else {
        panic!("not an error reply")
    };
    assert!(got.message.len() <= MAX_ERROR_MESSAGE && got.message.starts_with("xé"));
}

// Offsets inside the write body used by the test above.
const WR_FLAGS_AT: usize = 40;
const WR_DATA_AT: usize = 48;

fn object() -> impl Strategy<Value = ObjectId> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
        |(volume, vnode, unique, chunk)| ObjectId {
            volume,
            vnode,
            unique,
            chunk,
        },
    )
}

fn data_ref() -> impl Strategy<Value = DataRef> {
    prop_oneof![
        Just(DataRef::None),
        (0..=MAX_DATA).prop_map(|len| DataRef::Inline { len }),
        (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(addr, len, rkey)| DataRef::Remote {
            addr,
            len,
            rkey
        }),
    ]
}

fn range() -> impl Strategy<Value = RangeReq> {
    (
        object(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        0..=FLAG_FUA,
    )
        .prop_map(|(object, offset, len, epoch, flags)| RangeReq {
            object,
            offset,
            len,
            epoch,
            flags,
        })
}

fn config() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..300)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|client_nonce| Request::Hello(Hello { client_nonce })),
        any::<[u8; 32]>().prop_map(|client_proof| Request::Auth(AuthProof { client_proof })),
        any::<u64>().prop_map(|token| Request::Ping(Ping { token })),
        (object(), any::<u64>(), any::<u32>(), data_ref()).prop_map(
            |(object, offset, len, data)| {
                Request::Read(ReadReq {
                    object,
                    offset,
                    len,
                    data,
                })
            }
        ),
        (
            object(),
            any::<u64>(),
            any::<u64>(),
            0..=FLAG_FUA,
            any::<u32>(),
            data_ref()
        )
            .prop_map(
                |(object, offset, epoch, flags, crc32c, data)| Request::Write(WriteReq {
                    object,
                    offset,
                    epoch,
                    flags,
                    crc32c,
                    data,
                })
            ),
        range().prop_map(Request::Punch),
        range().prop_map(Request::Zero),
        object().prop_map(|object| Request::Flush(ObjectReq { object })),
        object().prop_map(|object| Request::Stat(ObjectReq { object })),
        (object(), any::<u64>())
            .prop_map(|(object, epoch)| Request::Remove(RemoveReq { object, epoch })),
        any::<u32>().prop_map(|volume| Request::GetVolConfig(GetVolConfig { volume })),
        (any::<u32>(), any::<u64>(), config()).prop_map(|(volume, generation, config)| {
            Request::PutVolConfig(PutVolConfig {
                volume,
                generation,
                config,
            })
        }),
        Just(Request::BrickStats),
        (any::<u32>(), object())
            .prop_map(|(volume, start)| Request::ListChunks(ListChunksReq { volume, start })),
        write_blocks(),
        (object(), any::<u64>(), any::<u32>(), data_ref()).prop_map(
            |(object, offset, len, data)| {
                Request::ReadBlocks(ReadReq {
                    object,
                    offset,
                    len,
                    data,
                })
            }
        ),
        (object(), any::<u64>(), any::<u32>()).prop_map(|(object, offset, len)| Request::Verify(
            VerifyReq {
                object,
                offset,
                len
            }
        )),
        (any::<u32>(), SCRUB_GET..=SCRUB_PUT, scrub_counts()).prop_map(|(volume, op, counts)| {
            Request::ScrubStatus(ScrubStatusReq { volume, op, counts })
        }),
        record_request(),
    ]
}

fn rkey() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..40)
}

fn commit_id() -> impl Strategy<Value = CommitId> {
    (any::<u64>(), any::<u64>()).prop_map(|(seq, tag)| CommitId { seq, tag })
}

fn entry() -> impl Strategy<Value = RecordEntry> {
    (rkey(), proptest::option::of(rkey()), any::<u64>()).prop_map(|(key, value, version)| {
        RecordEntry {
            version: if value.is_some() { version } else { 0 },
            key,
            value,
        }
    })
}

fn record_request() -> impl Strategy<Value = Request> {
    let expect = prop_oneof![
        Just(RecordExpect::Any),
        Just(RecordExpect::Absent),
        any::<u64>().prop_map(RecordExpect::Version),
    ];
    let op = (rkey(), expect, proptest::option::of(rkey()))
        .prop_map(|(key, expect, value)| RecordOpWire { key, expect, value });
    prop_oneof![
        (any::<u32>(), rkey())
            .prop_map(|(volume, key)| Request::RecordGet(RecordGetReq { volume, key })),
        (any::<u32>(), any::<u32>(), rkey(), rkey()).prop_map(|(volume, limit, prefix, after)| {
            Request::RecordList(RecordListReq {
                volume,
                limit,
                prefix,
                after,
            })
        }),
        (
            any::<u32>(),
            any::<u64>(),
            commit_id(),
            any::<u64>(),
            proptest::collection::vec(op, 0..6)
        )
            .prop_map(|(volume, ballot, prev, tag, ops)| {
                Request::RecordCommit(RecordCommitReq {
                    volume,
                    ballot,
                    prev,
                    tag,
                    ops,
                })
            }),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(|(volume, limit, since, since_tag, wait_ms)| {
                Request::RecordChanges(RecordChangesReq {
                    volume,
                    limit,
                    since,
                    since_tag,
                    wait_ms,
                })
            }),
        (any::<u32>(), any::<bool>(), any::<u64>()).prop_map(|(volume, p, ballot)| {
            Request::RecordHead(RecordHeadReq {
                volume,
                op: if p { HeadOp::Promise } else { HeadOp::Query },
                ballot,
            })
        }),
        (
            any::<u32>(),
            0..8u32,
            (any::<u64>(), any::<u64>()),
            commit_id(),
            commit_id(),
            any::<u64>(),
            proptest::collection::vec(entry(), 0..6)
        )
            .prop_map(
                |(volume, flags, (session, ballot), base, head, head_ballot, entries)| {
                    Request::RecordSync(RecordSyncReq {
                        volume,
                        flags,
                        session,
                        ballot,
                        base,
                        head,
                        head_ballot,
                        entries,
                    })
                }
            ),
    ]
}

fn record_head() -> impl Strategy<Value = RecordHead> {
    (
        commit_id(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        0..=HEAD_SYNCING,
        any::<u32>(),
    )
        .prop_map(
            |(id, ballot, promised, feed_start, flags, records)| RecordHead {
                id,
                ballot,
                promised,
                feed_start,
                flags,
                records,
            },
        )
}

fn record_response() -> impl Strategy<Value = Response> {
    let outcome = prop_oneof![
        Just(CommitOutcome::Applied),
        (any::<u32>(), proptest::option::of(1..u64::MAX))
            .prop_map(|(index, found)| CommitOutcome::Conflict { index, found }),
        Just(CommitOutcome::HeadMismatch),
        Just(CommitOutcome::StaleBallot),
    ];
    let status = prop_oneof![
        Just(FeedStatus::Ok),
        Just(FeedStatus::Gap),
        Just(FeedStatus::Diverged)
    ];
    prop_oneof![
        (any::<u64>(), proptest::option::of((any::<u64>(), rkey()))).prop_map(|(head_seq, r)| {
            Response::RecordGet(RecordGetReply {
                head_seq,
                record: r.map(|(version, value)| RecordValue { version, value }),
            })
        }),
        (
            0..=LIST_MORE,
            any::<u64>(),
            proptest::collection::vec(entry(), 0..6)
        )
            .prop_map(
                |(flags, head_seq, entries)| Response::RecordList(RecordListReply {
                    flags,
                    head_seq,
                    entries: entries
                        .into_iter()
                        .map(|mut e| {
                            e.value.get_or_insert_with(Vec::new);
                            e
                        })
                        .collect(),
                })
            ),
        (outcome, record_head()).prop_map(|(outcome, head)| Response::RecordCommit(
            RecordCommitReply { outcome, head }
        )),
        (
            status,
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), rkey()), 0..6)
        )
            .prop_map(|(status, newest, oldest, c)| Response::RecordChanges(
                RecordChangesReply {
                    status,
                    newest,
                    oldest,
                    changes: c
                        .into_iter()
                        .map(|(seq, key)| FeedEntry { seq, key })
                        .collect(),
                }
            )),
        (any::<bool>(), record_head())
            .prop_map(|(refused, head)| Response::RecordHead(RecordHeadReply { refused, head })),
        (any::<bool>(), record_head())
            .prop_map(|(refused, head)| Response::RecordSync(RecordHeadReply { refused, head })),
    ]
}

fn scrub_counts() -> impl Strategy<Value = ScrubCounts> {
    any::<[u64; 7]>().prop_map(|f| ScrubCounts {
        started: f[0],
        finished: f[1],
        chunks: f[2],
        bytes: f[3],
        corrupt: f[4],
        repaired: f[5],
        unrepairable: f[6],
    })
}

/// A `WriteBlocks` whose CRC table has as many entries as its data has grid
/// pieces (anything else is a body error).
fn write_blocks() -> impl Strategy<Value = Request> {
    (
        object(),
        0u64..1 << 40,
        any::<u64>(),
        0..=FLAG_FUA,
        0u32..40_000,
        0u8..3,
        any::<u32>(),
    )
        .prop_flat_map(|(object, offset, epoch, flags, len, kind, seed)| {
            let data = match kind {
                0 => DataRef::None,
                1 => DataRef::Inline { len },
                _ => DataRef::Remote {
                    addr: seed as u64,
                    len,
                    rkey: seed,
                },
            };
            let count = if kind == 0 {
                (seed % 8) as usize
            } else {
                block_count(offset, len as u64)
            };
            proptest::collection::vec(any::<u32>(), count).prop_map(move |crcs| {
                Request::WriteBlocks(WriteBlocksReq {
                    write: WriteReq {
                        object,
                        offset,
                        epoch,
                        flags,
                        crc32c: 0,
                        data,
                    },
                    crcs,
                })
            })
        })
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(server_nonce, server_proof)| {
            Response::Challenge(Challenge {
                server_nonce,
                server_proof,
            })
        }),
        Just(Response::AuthOk),
        any::<u64>().prop_map(|token| Response::Pong(Ping { token })),
        (data_ref(), any::<u32>())
            .prop_map(|(data, crc32c)| Response::Read(ReadReply { data, crc32c })),
        any::<u32>().prop_map(|written| Response::Write(WriteReply { written })),
        Just(Response::Punch),
        Just(Response::Zero),
        Just(Response::Flush),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(size, allocated, version)| {
            Response::Stat(StatReply {
                size,
                allocated,
                version,
            })
        }),
        Just(Response::Remove),
        (any::<u64>(), config())
            .prop_map(|(generation, config)| Response::VolConfig(VolConfig { generation, config })),
        any::<u64>().prop_map(|generation| Response::VolConfigStored { generation }),
        (
            proptest::collection::vec(any::<u64>(), 9 + LATENCY_BUCKETS),
            any::<u64>()
        )
            .prop_map(|(f, corrupt)| Response::BrickStats(BrickStats {
                corrupt_blocks: corrupt,
                ..BrickStats::from_test_fields(f)
            })),
        (
            0..=CHUNKS_MORE,
            proptest::collection::vec(
                (object(), any::<u64>(), any::<u64>()).prop_map(|(object, size, version)| {
                    ChunkEntry {
                        object,
                        size,
                        version,
                    }
                }),
                0..20
            )
        )
            .prop_map(|(flags, chunks)| Response::ListChunks(ChunkList { flags, chunks })),
        any::<u32>().prop_map(|written| Response::WriteBlocks(WriteReply { written })),
        (data_ref(), proptest::collection::vec(any::<u32>(), 0..300))
            .prop_map(|(data, crcs)| Response::ReadBlocks(ReadBlocksReply { data, crcs })),
        (
            any::<u32>(),
            proptest::collection::vec(any::<u64>(), 0..300)
        )
            .prop_map(|(checked, bad)| Response::Verify(VerifyReply { checked, bad })),
        (0..=SCRUB_FOUND, scrub_counts())
            .prop_map(|(flags, counts)| Response::ScrubStatus(ScrubStatusReply { flags, counts })),
        record_response(),
        (any::<u16>(), "\\PC{0,80}").prop_map(|(code, msg)| Response::Error(ErrorReply::new(
            ErrorCode::from_code(code),
            msg
        ))),
    ]
}

impl BrickStats {
    fn from_test_fields(f: Vec<u64>) -> BrickStats {
        let mut a = [0u64; 9 + LATENCY_BUCKETS];
        a.copy_from_slice(&f);
        BrickStats::from_fields(a)
    }
}

/// Feeds `bytes` to a decoder in chunks of `chunk` and collects the frames,
/// skipping their data.
fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<Frame>, FrameError> {
    let mut d = FrameDecoder::default();
    let mut frames = Vec::new();
    let mut sink = vec![0u8; 4096];
    for piece in bytes.chunks(chunk.max(1)) {
        d.feed(piece);
        loop {
            while d.take_data(&mut sink) > 0 {}
            match d.next_frame()? {
                Some(f) => frames.push(f),
                None => break,
            }
        }
    }
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn requests_round_trip(req in request(), id in any::<u64>(), chunk in 1usize..100) {
        let bytes = encode_request(id, &req);
        let frames = decode_all(&bytes, chunk).unwrap();
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(frames[0].header.request_id, id);
        prop_assert_eq!(frames[0].header.data_len, req.inline_data_len());
        prop_assert_eq!(frames[0].request().unwrap(), req);
    }

    #[test]
    fn responses_round_trip(resp in response(), id in any::<u64>(), chunk in 1usize..100) {
        let bytes = encode_response(id, &resp);
        let frames = decode_all(&bytes, chunk).unwrap();
        prop_assert_eq!(frames.len(), 1);
        prop_assert!(frames[0].header.is_reply());
        prop_assert_eq!(frames[0].response().unwrap(), resp);
    }

    #[test]
    fn streams_of_frames_with_data_decode_in_order(
        reqs in proptest::collection::vec((request(), 0usize..64), 1..8),
        chunk in 1usize..200,
    ) {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (i, (mut req, n)) in reqs.into_iter().enumerate() {
            if let Some(d) = req.data_ref_mut() {
                *d = DataRef::Inline { len: n as u32 };
            }
            if let Request::WriteBlocks(w) = &mut req {
                // The CRC table follows the data it describes.
                w.crcs.resize(block_count(w.write.offset, n as u64), 0);
            }
            bytes.extend(encode_request(i as u64, &req));
            bytes.extend(std::iter::repeat_n(0xa5, req.inline_data_len() as usize));
            expected.push(req);
        }
        let frames = decode_all(&bytes, chunk).unwrap();
        let got: Vec<Request> = frames.iter().map(|f| f.request().unwrap()).collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), chunk in 1usize..64) {
        if let Ok(frames) = decode_all(&bytes, chunk) {
            for f in frames {
                let _ = f.request();
                let _ = f.response();
            }
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic_and_decode_canonically(
        opcode in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..200),
        data_len in prop_oneof![Just(0u32), any::<u32>()],
    ) {
        // Whatever decodes re-encodes to the very same bytes: every byte of
        // a body is either a field or a checked reserved zero.
        if let Ok(req) = Request::decode(opcode, &body, data_len) {
            let mut out = Vec::new();
            req.encode_body(&mut out);
            prop_assert_eq!(out, body.clone());
        }
        if let Ok(resp) = Response::decode(opcode, &body, data_len) {
            let mut out = Vec::new();
            resp.encode_body(&mut out);
            prop_assert_eq!(out, body);
        }
    }

    #[test]
    fn any_flipped_bit_is_caught(req in request(), bit in any::<usize>()) {
        let bytes = encode_request(3, &req);
        let mut bad = bytes.clone();
        let bit = bit % (bad.len() * 8);
        bad[bit / 8] ^= 1 << (bit % 8);
        // CRC32C catches every single-bit error in header and body.
        prop_assert!(decode_one(&bad).is_err());
    }
}

/// `ListChunks` body: volume 7, start (7, 2, 1) chunk 3.
#[rustfmt::skip]
const LIST_CHUNKS_BODY: [u8; 32] = [
    0x07, 0x00, 0x00, 0x00,                         // volume 7
    0x00, 0x00, 0x00, 0x00,                         // reserved
    0x07, 0x00, 0x00, 0x00,                         // start.volume 7
    0x02, 0x00, 0x00, 0x00,                         // start.vnode 2
    0x01, 0x00, 0x00, 0x00,                         // start.unique 1
    0x00, 0x00, 0x00, 0x00,                         // start.reserved
    0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // start.chunk 3
];

/// `ListChunks` reply body: one chunk (7, 2, 1) chunk 3, size 0x100000,
/// version 9, list cut (MORE).
#[rustfmt::skip]
const CHUNK_LIST_BODY: [u8; 48] = [
    0x01, 0x00, 0x00, 0x00,                         // count 1
    0x01, 0x00, 0x00, 0x00,                         // flags MORE
    0x07, 0x00, 0x00, 0x00,                         // object.volume 7
    0x02, 0x00, 0x00, 0x00,                         // object.vnode 2
    0x01, 0x00, 0x00, 0x00,                         // object.unique 1
    0x00, 0x00, 0x00, 0x00,                         // object.reserved
    0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // object.chunk 3
    0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, // size 0x100000
    0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // version 9
];

fn list_chunks_fixture() -> (Request, Response) {
    let object = ObjectId {
        volume: 7,
        vnode: 2,
        unique: 1,
        chunk: 3,
    };
    (
        Request::ListChunks(ListChunksReq {
            volume: 7,
            start: object,
        }),
        Response::ListChunks(ChunkList {
            flags: CHUNKS_MORE,
            chunks: vec![ChunkEntry {
                object,
                size: 0x10_0000,
                version: 9,
            }],
        }),
    )
}

#[test]
fn list_chunks_fixtures() {
    let (req, resp) = list_chunks_fixture();
    let mut out = Vec::new();
    req.encode_body(&mut out);
    assert_eq!(out, LIST_CHUNKS_BODY);
    assert_eq!(Request::decode(0x42, &LIST_CHUNKS_BODY, 0), Ok(req));
    let mut out = Vec::new();
    resp.encode_body(&mut out);
    assert_eq!(out, CHUNK_LIST_BODY);
    assert_eq!(Response::decode(0x42, &CHUNK_LIST_BODY, 0), Ok(resp));
}

#[test]
fn list_chunks_rejects_bad_bodies() {
    let mut bad = LIST_CHUNKS_BODY;
    bad[4] = 1;
    assert!(matches!(
        Request::decode(0x42, &bad, 0),
        Err(BodyError::Reserved { .. })
    ));
    assert!(matches!(
        Request::decode(0x42, &LIST_CHUNKS_BODY[..31], 0),
        Err(BodyError::Length { .. })
    ));
    let mut bad = CHUNK_LIST_BODY;
    bad[4] = 2;
    assert!(matches!(
        Response::decode(0x42, &bad, 0),
        Err(BodyError::UnknownFlags { .. })
    ));
    // A count the body does not hold.
    let mut bad = CHUNK_LIST_BODY;
    bad[0] = 2;
    assert!(matches!(
        Response::decode(0x42, &bad, 0),
        Err(BodyError::Length { .. })
    ));
    let mut bad = CHUNK_LIST_BODY;
    bad[0..4].copy_from_slice(&(MAX_CHUNK_ENTRIES as u32 + 1).to_le_bytes());
    assert!(matches!(
        Response::decode(0x42, &bad, 0),
        Err(BodyError::TooLong { .. })
    ));
}

/// `WriteBlocks` body: 5000 inline bytes to (1, 2, 3) chunk 4 at 0xf00,
/// epoch 7, FUA: pieces [0xf00, 0x1000), [0x1000, 0x2000), [0x2000, 0x2288),
/// so three CRCs 0x11111111, 0x22222222, 0x33333333.
#[rustfmt::skip]
const WRITE_BLOCKS_BODY: [u8; 84] = [
    0x01, 0x00, 0x00, 0x00,                         // object.volume 1
    0x02, 0x00, 0x00, 0x00,                         // object.vnode 2
    0x03, 0x00, 0x00, 0x00,                         // object.unique 3
    0x00, 0x00, 0x00, 0x00,                         // object.reserved
    0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // object.chunk 4
    0x00, 0x0f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // offset 0xf00
    0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // epoch 7
    0x01, 0x00, 0x00, 0x00,                         // flags FUA
    0x03, 0x00, 0x00, 0x00,                         // count 3
    0x01, 0x00, 0x00, 0x00,                         // data.kind inline, reserved
    0x88, 0x13, 0x00, 0x00,                         // data.len 5000
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // data.addr
    0x00, 0x00, 0x00, 0x00,                         // data.rkey
    0x00, 0x00, 0x00, 0x00,                         // data.reserved
    0x11, 0x11, 0x11, 0x11,                         // crcs[0]
    0x22, 0x22, 0x22, 0x22,                         // crcs[1]
    0x33, 0x33, 0x33, 0x33,                         // crcs[2]
];

/// `ReadBlocks` reply body: 8192 inline bytes, CRCs 0xaabbccdd, 0x01020304.
#[rustfmt::skip]
const READ_BLOCKS_REPLY_BODY: [u8; 40] = [
    0x01, 0x00, 0x00, 0x00,                         // data.kind inline, reserved
    0x00, 0x20, 0x00, 0x00,                         // data.len 8192
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // data.addr
    0x00, 0x00, 0x00, 0x00,                         // data.rkey
    0x00, 0x00, 0x00, 0x00,                         // data.reserved
    0x02, 0x00, 0x00, 0x00,                         // count 2
    0x00, 0x00, 0x00, 0x00,                         // reserved
    0xdd, 0xcc, 0xbb, 0xaa,                         // crcs[0]
    0x04, 0x03, 0x02, 0x01,                         // crcs[1]
];

/// `Verify` body: (1, 2, 3) chunk 4, offset 0x2000, len 0x10000; and its
/// reply: 16 blocks checked, one bad at 0x3000.
#[rustfmt::skip]
const VERIFY_BODY: [u8; 40] = [
    0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, // object.volume, vnode
    0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // object.unique, reserved
    0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // object.chunk 4
    0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // offset 0x2000
    0x00, 0x00, 0x01, 0x00,                         // len 0x10000
    0x00, 0x00, 0x00, 0x00,                         // reserved
];
#[rustfmt::skip]
const VERIFY_REPLY_BODY: [u8; 16] = [
    0x10, 0x00, 0x00, 0x00,                         // checked 16
    0x01, 0x00, 0x00, 0x00,                         // count 1
    0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // bad[0] 0x3000
];

#[test]
fn integrity_fixtures() {
    let object = ObjectId {
        volume: 1,
        vnode: 2,
        unique: 3,
        chunk: 4,
    };
    let wb = Request::WriteBlocks(WriteBlocksReq {
        write: WriteReq {
            object,
            offset: 0xf00,
            epoch: 7,
            flags: FLAG_FUA,
            crc32c: 0,
            data: DataRef::Inline { len: 5000 },
        },
        crcs: vec![0x1111_1111, 0x2222_2222, 0x3333_3333],
    });
    let mut out = Vec::new();
    wb.encode_body(&mut out);
    assert_eq!(out, WRITE_BLOCKS_BODY);
    assert_eq!(Request::decode(0x43, &WRITE_BLOCKS_BODY, 5000), Ok(wb));
    // A table that does not match the data's pieces is a body error.
    let mut bad = WRITE_BLOCKS_BODY.to_vec();
    bad[44] = 2;
    bad.truncate(80);
    assert!(matches!(
        Request::decode(0x43, &bad, 5000),
        Err(BodyError::Length { .. })
    ));
    assert!(matches!(
        Request::decode(0x43, &WRITE_BLOCKS_BODY[..83], 5000),
        Err(BodyError::Length { .. })
    ));

    let rb = Response::ReadBlocks(ReadBlocksReply {
        data: DataRef::Inline { len: 8192 },
        crcs: vec![0xaabb_ccdd, 0x0102_0304],
    });
    let mut out = Vec::new();
    rb.encode_body(&mut out);
    assert_eq!(out, READ_BLOCKS_REPLY_BODY);
    assert_eq!(
        Response::decode(0x44, &READ_BLOCKS_REPLY_BODY, 8192),
        Ok(rb)
    );
    let mut bad = READ_BLOCKS_REPLY_BODY;
    bad[28] = 1;
    assert!(matches!(
        Response::decode(0x44, &bad, 8192),
        Err(BodyError::Reserved { .. })
    ));

    let v = Request::Verify(VerifyReq {
        object,
        offset: 0x2000,
        len: 0x1_0000,
    });
    let mut out = Vec::new();
    v.encode_body(&mut out);
    assert_eq!(out, VERIFY_BODY);
    assert_eq!(Request::decode(0x45, &VERIFY_BODY, 0), Ok(v));
    let vr = Response::Verify(VerifyReply {
        checked: 16,
        bad: vec![0x3000],
    });
    let mut out = Vec::new();
    vr.encode_body(&mut out);
    assert_eq!(out, VERIFY_REPLY_BODY);
    assert_eq!(Response::decode(0x45, &VERIFY_REPLY_BODY, 0), Ok(vr));
    assert_eq!(ErrorCode::from_code(14), ErrorCode::Corrupt);
    assert_eq!(ErrorCode::Corrupt.code(), 14);
}

#[test]
fn brick_stats_of_an_older_brick_still_decode() {
    let mut body = Vec::new();
    Response::BrickStats(BrickStats {
        requests: 5,
        corrupt_blocks: 3,
        ..BrickStats::default()
    })
    .encode_body(&mut body);
    assert_eq!(body.len(), 272);
    assert_eq!(&body[264..], &3u64.to_le_bytes());
    let Ok(Response::BrickStats(old)) = Response::decode(0x30, &body[..264], 0) else {
        panic!("a 264-byte reply must decode");
    };
    assert_eq!((old.requests, old.corrupt_blocks), (5, 0));
}

#[test]
fn scrub_status_fixture() {
    let counts = ScrubCounts {
        started: 1,
        finished: 2,
        chunks: 3,
        bytes: 4,
        corrupt: 5,
        repaired: 6,
        unrepairable: 7,
    };
    let mut want = vec![9, 0, 0, 0, 2, 0, 0, 0]; // volume 9, op PUT
    for v in 1u8..=7 {
        want.extend_from_slice(&[v, 0, 0, 0, 0, 0, 0, 0]);
    }
    let req = Request::ScrubStatus(ScrubStatusReq {
        volume: 9,
        op: SCRUB_PUT,
        counts,
    });
    let mut out = Vec::new();
    req.encode_body(&mut out);
    assert_eq!(out, want);
    assert_eq!(Request::decode(0x46, &want, 0), Ok(req));
    let mut bad = want.clone();
    bad[4] = 3;
    assert!(Request::decode(0x46, &bad, 0).is_err());
    let mut reply = vec![1, 0, 0, 0, 0, 0, 0, 0]; // FOUND, reserved
    reply.extend_from_slice(&want[8..]);
    assert_eq!(
        Response::decode(0x46, &reply, 0),
        Ok(Response::ScrubStatus(ScrubStatusReply {
            flags: SCRUB_FOUND,
            counts
        }))
    );
}
/// `RecordCommit` body: volume 7, ballot 0x0102, prev (4, 0xaa), tag 0xbb,
/// one op: key "k" expected at version 3, value "vv".
#[rustfmt::skip]
const RECORD_COMMIT_BODY: [u8; 59] = [
    0x07, 0x00, 0x00, 0x00,                         // volume 7
    0x01, 0x00, 0x00, 0x00,                         // count 1
    0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // ballot 0x0102
    0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // prev_seq 4
    0xaa, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // prev_tag 0xaa
    0xbb, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // tag 0xbb
    0x02,                                           // op.expect: version
    0x00,                                           // op.flags: put
    0x01, 0x00,                                     // op.key_len 1
    0x02, 0x00, 0x00, 0x00,                         // op.value_len 2
    0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // op.expect_version 3
    b'k', b'v', b'v',                               // key, value
];

/// `RecordCommit` reply body: conflict on op 0 (found version 5), head
/// (4, 0xaa) at ballot 0x0102, promised 0x0102, feed from 0, 9 records.
#[rustfmt::skip]
const RECORD_COMMIT_REPLY_BODY: [u8; 64] = [
    0x01, 0x00, 0x00, 0x00,                         // status 1 conflict
    0x00, 0x00, 0x00, 0x00,                         // index 0
    0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // found version 5
    0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // head.seq 4
    0xaa, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // head.tag
    0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // head.ballot
    0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // head.promised
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // head.feed_start
    0x00, 0x00, 0x00, 0x00,                         // head.flags
    0x09, 0x00, 0x00, 0x00,                         // head.records
];

fn record_commit_fixture() -> (Request, Response) {
    (
        Request::RecordCommit(RecordCommitReq {
            volume: 7,
            ballot: 0x0102,
            prev: CommitId { seq: 4, tag: 0xaa },
            tag: 0xbb,
            ops: vec![RecordOpWire {
                key: b"k".to_vec(),
                expect: RecordExpect::Version(3),
                value: Some(b"vv".to_vec()),
            }],
        }),
        Response::RecordCommit(RecordCommitReply {
            outcome: CommitOutcome::Conflict {
                index: 0,
                found: Some(5),
            },
            head: RecordHead {
                id: CommitId { seq: 4, tag: 0xaa },
                ballot: 0x0102,
                promised: 0x0102,
                feed_start: 0,
                flags: 0,
                records: 9,
            },
        }),
    )
}

#[test]
fn record_commit_fixtures() {
    let (req, resp) = record_commit_fixture();
    let mut out = Vec::new();
    req.encode_body(&mut out);
    assert_eq!(out, RECORD_COMMIT_BODY);
    assert_eq!(Request::decode(0x52, &RECORD_COMMIT_BODY, 0), Ok(req));
    let mut out = Vec::new();
    resp.encode_body(&mut out);
    assert_eq!(out, RECORD_COMMIT_REPLY_BODY);
    assert_eq!(
        Response::decode(0x52, &RECORD_COMMIT_REPLY_BODY, 0),
        Ok(resp)
    );
}

#[test]
fn record_bodies_reject_bad_input() {
    // A delete carrying a value length, an unknown expect kind, a key that
    // runs past the body, trailing bytes.
    let mut bad = RECORD_COMMIT_BODY;
    bad[41] = OP_DELETE;
    assert!(Request::decode(0x52, &bad, 0).is_err());
    let mut bad = RECORD_COMMIT_BODY;
    bad[40] = 3;
    assert!(matches!(
        Request::decode(0x52, &bad, 0),
        Err(BodyError::UnknownFlags { .. })
    ));
    assert!(matches!(
        Request::decode(0x52, &RECORD_COMMIT_BODY[..58], 0),
        Err(BodyError::Length { .. })
    ));
    let mut long = RECORD_COMMIT_BODY.to_vec();
    long.push(0);
    assert!(matches!(
        Request::decode(0x52, &long, 0),
        Err(BodyError::Length { .. })
    ));
    // Too many ops for the limit.
    let mut bad = RECORD_COMMIT_BODY;
    bad[4..8].copy_from_slice(&(MAX_RECORD_OPS as u32 + 1).to_le_bytes());
    assert!(matches!(
        Request::decode(0x52, &bad, 0),
        Err(BodyError::TooLong { .. })
    ));
    // An unknown status in the reply.
    let mut bad = RECORD_COMMIT_REPLY_BODY;
    bad[0] = 9;
    assert!(Response::decode(0x52, &bad, 0).is_err());
    // A key length over the limit in a get.
    let mut get = vec![7, 0, 0, 0];
    get.extend_from_slice(&(MAX_RECORD_KEY as u16 + 1).to_le_bytes());
    get.extend_from_slice(&[0, 0]);
    get.extend(std::iter::repeat_n(b'x', MAX_RECORD_KEY + 1));
    assert!(matches!(
        Request::decode(0x50, &get, 0),
        Err(BodyError::TooLong { .. })
    ));
}
