//! The volfile encoding: round trips (property), a byte fixture, and
//! corrupt, truncated and unknown-version records failing clearly.

use std::collections::BTreeMap;

use proptest::prelude::*;
use volume::volfile::{
    decode, encode, encode_spec, ImageEntry, ImageTable, PoolEntry, PoolTable, Record, StagedWrite,
    VolfileError, MAGIC,
};
use volume::{VolumeKind, VolumeSpec, VolumeState};

fn fixture_spec() -> VolumeSpec {
    VolumeSpec {
        name: "v1".into(),
        id: 7,
        kind: VolumeKind::Replicate { replica: 2 },
        bricks: vec!["h:1".into(), "h:2".into()],
        chunk_size: 1 << 20,
        options: BTreeMap::from([("quorum-type".to_string(), "none".to_string())]),
        state: VolumeState::Started,
        generation: 3,
    }
}

/// The exact bytes of a small volume record; if this changes, the format
/// changed and VERSION must move (and the old version stay readable).
#[test]
fn volume_record_byte_fixture() {
    let bytes = encode_spec(&fixture_spec()).unwrap();
    #[rustfmt::skip]
    let body: Vec<u8> = [
        &[7, 0, 0, 0][..],          // id
        &[1],                       // layout: replicate
        &[1],                       // state: started
        &[0, 0],                    // reserved
        &[2, 0, 0, 0],              // replica
        &[2, 0, 0, 0],              // brick count
        &[0, 0, 0x10, 0, 0, 0, 0, 0], // chunk size 1 MiB
        &[3, 0, 0, 0, 0, 0, 0, 0],  // generation
        &[1, 0, 0, 0],              // option count
        &[0, 0, 0, 0],              // reserved
        &[2, 0], b"v1",
        &[3, 0], b"h:1",
        &[3, 0], b"h:2",
        &[11, 0], b"quorum-type",
        &[4, 0], b"none",
    ]
    .concat();
    let mut head = Vec::new();
    head.extend_from_slice(b"SVOL");
    head.extend_from_slice(&[1, 0]); // version
    head.extend_from_slice(&[1, 0]); // kind: volume
    head.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let crc = crc32c_of(&head, &body);
    head.extend_from_slice(&crc.to_le_bytes());
    let expected = [head, body].concat();
    assert_eq!(bytes, expected);
    assert_eq!(&bytes[..4], &MAGIC);
    assert_eq!(decode(&expected).unwrap(), Record::Volume(fixture_spec()));
}

/// A disperse 4+2 volume: layout 2, K and M as two u16 in the `replica`
/// field; bad geometries are refused.
#[test]
fn disperse_record_bytes() {
    let mut spec = fixture_spec();
    spec.kind = VolumeKind::Disperse {
        data: 4,
        redundancy: 2,
    };
    let bytes = encode_spec(&spec).unwrap();
    // 16-byte envelope, then the body: layout at 4, K at 8, M at 10.
    assert_eq!(bytes[16 + 4], 2);
    assert_eq!(&bytes[16 + 8..16 + 12], &[4, 0, 2, 0]);
    assert_eq!(decode(&bytes).unwrap(), Record::Volume(spec.clone()));
    for (k, m) in [(0u8, 2u8), (4, 0)] {
        let mut body = bytes[16..].to_vec();
        body[8] = k;
        body[10] = m;
        let mut head = bytes[..12].to_vec();
        let crc = crc32c_of(&head, &body);
        head.extend_from_slice(&crc.to_le_bytes());
        assert!(decode(&[head, body].concat()).is_err(), "{k}+{m} accepted");
    }
}

/// CRC32C (Castagnoli), bitwise, written out here so the fixture does not
/// trust the code under test for its checksum.
fn crc32c_of(a: &[u8], b: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in a.iter().chain(b) {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn unknown_version_fails_clearly() {
    let mut bytes = encode_spec(&fixture_spec()).unwrap();
    bytes[4] = 2;
    let err = decode(&bytes).unwrap_err();
    assert_eq!(err, VolfileError::UnknownVersion { found: 2 });
    let msg = err.to_string();
    assert!(msg.contains("version 2 is not supported"), "{msg}");
}

#[test]
fn bad_magic_checksum_and_lengths_fail() {
    let good = encode_spec(&fixture_spec()).unwrap();

    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(decode(&b), Err(VolfileError::BadMagic { .. })));

    // A flipped bit anywhere after the magic and version fails (checksum,
    // length, or the kind check catch it; never a wrong record).
    for i in 6..good.len() {
        for bit in 0..8 {
            let mut b = good.clone();
            b[i] ^= 1 << bit;
            assert!(decode(&b).is_err(), "flip byte {i} bit {bit} decoded");
        }
    }

    for cut in 0..good.len() {
        assert!(decode(&good[..cut]).is_err(), "cut at {cut} decoded");
    }
    assert!(matches!(
        decode(&good[..10]),
        Err(VolfileError::Short { len: 10 })
    ));

    let mut longer = good.clone();
    longer.push(0);
    assert!(matches!(decode(&longer), Err(VolfileError::Length { .. })));
}

#[test]
fn body_length_lies_are_caught_even_with_a_good_checksum() {
    // A body whose inner counts overrun, re-sealed with a valid checksum:
    // decode must report truncation, not panic.
    let good = encode_spec(&fixture_spec()).unwrap();
    let mut body = good[16..].to_vec();
    body[12] = 200; // brick count 200
    let mut head = good[..12].to_vec();
    let crc = crc32c_of(&head, &body);
    head.extend_from_slice(&crc.to_le_bytes());
    let b = [head, body].concat();
    assert!(matches!(decode(&b), Err(VolfileError::Truncated { .. })));
}

fn arb_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,20}"
}

fn arb_spec() -> impl Strategy<Value = VolumeSpec> {
    (
        arb_name(),
        1u32..1000,
        prop_oneof![
            Just(VolumeKind::Distribute),
            (1u32..5).prop_map(|replica| VolumeKind::Replicate { replica }),
            (2u32..9).prop_map(|count| VolumeKind::Stripe { count }),
            (1u32..200, 1u32..57)
                .prop_map(|(data, redundancy)| VolumeKind::Disperse { data, redundancy })
        ],
        prop::collection::vec("[a-z0-9.]{1,12}:[0-9]{1,5}", 0..8),
        any::<u64>(),
        prop::collection::btree_map("[a-z-]{1,12}", "\\PC{0,10}", 0..5),
        prop_oneof![
            Just(VolumeState::Created),
            Just(VolumeState::Started),
            Just(VolumeState::Stopped)
        ],
        any::<u64>(),
    )
        .prop_map(
            |(name, id, kind, bricks, chunk_size, options, state, generation)| VolumeSpec {
                name,
                id,
                kind,
                bricks,
                chunk_size,
                options,
                state,
                generation,
            },
        )
}

fn arb_table() -> impl Strategy<Value = PoolTable> {
    (
        any::<u32>(),
        prop::collection::btree_map(
            arb_name(),
            (any::<u32>(), prop::collection::vec("[a-z0-9:]{1,12}", 0..4))
                .prop_map(|(id, bricks)| PoolEntry { id, bricks }),
            0..6,
        ),
    )
        .prop_map(|(next_id, volumes)| PoolTable { next_id, volumes })
}

fn arb_record() -> impl Strategy<Value = Record> {
    prop_oneof![
        arb_spec().prop_map(Record::Volume),
        (any::<u32>(), arb_name(), any::<u64>()).prop_map(|(id, name, generation)| {
            Record::Deleted {
                id,
                name,
                generation,
            }
        }),
        arb_table().prop_map(Record::PoolTable),
        prop::collection::vec(
            (
                any::<u32>(),
                any::<u64>(),
                prop::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(volume, generation, config)| StagedWrite {
                    volume,
                    generation,
                    config
                }),
            0..4
        )
        .prop_map(Record::Staged),
        (
            any::<u32>(),
            prop::collection::btree_map(
                arb_name(),
                (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(vnode, unique, size)| {
                    ImageEntry {
                        vnode,
                        unique,
                        size,
                    }
                }),
                0..6,
            ),
        )
            .prop_map(|(next_vnode, images)| Record::Images(ImageTable { next_vnode, images })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn record_round_trips(rec in arb_record()) {
        let bytes = encode(&rec).unwrap();
        prop_assert_eq!(decode(&bytes).unwrap(), rec);
    }

    #[test]
    fn staged_inner_records_round_trip(spec in arb_spec(), table in arb_table()) {
        let staged = Record::Staged(vec![
            StagedWrite { volume: spec.id, generation: spec.generation, config: encode_spec(&spec).unwrap() },
            StagedWrite { volume: 0, generation: 9, config: encode(&Record::PoolTable(table.clone())).unwrap() },
        ]);
        let Record::Staged(writes) = decode(&encode(&staged).unwrap()).unwrap() else {
            panic!("not staged");
        };
        prop_assert_eq!(decode(&writes[0].config).unwrap(), Record::Volume(spec));
        prop_assert_eq!(decode(&writes[1].config).unwrap(), Record::PoolTable(table));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&bytes);
        // With a valid header around an arbitrary body as well.
        let mut head = b"SVOL\x01\x00".to_vec();
        head.extend_from_slice(&[(bytes.len() % 5) as u8 + 1, 0]);
        head.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        let crc = crc32c_of(&head, &bytes);
        head.extend_from_slice(&crc.to_le_bytes());
        let _ = decode(&[head, bytes].concat());
    }
}

#[test]
fn stripe_layout_bytes() {
    let mut spec = fixture_spec();
    spec.kind = VolumeKind::Stripe { count: 4 };
    let bytes = encode_spec(&spec).unwrap();
    // Body at 16: layout u8 at body offset 4, the count in `replica` at 8.
    assert_eq!(bytes[16 + 4], 3, "layout 3 = stripe");
    assert_eq!(&bytes[16 + 8..16 + 12], &4u32.to_le_bytes());
    assert_eq!(decode(&bytes).unwrap(), Record::Volume(spec.clone()));
    // A stripe of one brick is not a stripe.
    spec.kind = VolumeKind::Stripe { count: 1 };
    let bytes = encode_spec(&spec).unwrap();
    assert!(decode(&bytes).is_err());
}
