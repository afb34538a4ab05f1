use volume::records::{Expect, MemRecords, RecordOp};

use super::*;
use crate::inode::{entry_key, inode_key, Timespec};

fn fid(vnode: u32) -> Fid {
    Fid {
        volume: 7,
        vnode,
        unique: 9,
    }
}

fn sample() -> Snapshot {
    let mut link = Inode::new(Kind::Symlink, 0o777, 1, 2, Timespec { sec: 5, nsec: 6 });
    link.target = b"../there".to_vec();
    link.xattrs.insert(b"user.a".to_vec(), vec![1, 2, 3]);
    let mut file = Inode::new(Kind::File, 0o640, 3, 4, Timespec { sec: -1, nsec: 2 });
    file.size = 1 << 40;
    Snapshot {
        volume: 7,
        name: "fs".into(),
        pos: FeedPos {
            seq: 42,
            tag: 0xabc,
        },
        inodes: vec![(fid(1), 3, link), (fid(2), 1, file)],
        entries: vec![
            (
                fid(0),
                b"a".to_vec(),
                Dirent {
                    fid: fid(1),
                    kind: Kind::Symlink,
                },
            ),
            (
                fid(0),
                vec![0xff; 255],
                Dirent {
                    fid: fid(2),
                    kind: Kind::File,
                },
            ),
        ],
    }
}

/// `b` with its checksum made right again (to reach the checks after it).
fn reseal(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len() - CRC;
    let crc = crc32c::crc32c(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn round_trip_and_offsets() {
    let s = sample();
    let b = encode(&s);
    assert_eq!(&b[..8], MAGIC);
    assert_eq!(&b[OFF_VERSION..OFF_VERSION + 4], &1u32.to_le_bytes());
    assert_eq!(&b[OFF_SEQ..OFF_SEQ + 8], &42u64.to_le_bytes());
    assert_eq!(&b[OFF_INODES..OFF_INODES + 4], &2u32.to_le_bytes());
    assert_eq!(b[OFF_NAME_LEN], 2);
    assert_eq!(&b[HEADER..HEADER + 2], b"fs");
    assert_eq!(decode(&b).unwrap(), s);
    let empty = Snapshot {
        inodes: Vec::new(),
        entries: Vec::new(),
        ..s
    };
    assert_eq!(decode(&encode(&empty)).unwrap(), empty);
}

#[test]
fn truncated_extended_and_corrupt_bytes_are_refused() {
    let b = encode(&sample());
    for n in 0..b.len() {
        assert!(decode(&b[..n]).is_err(), "a prefix of {n} bytes decoded");
    }
    for i in 0..b.len() {
        let mut c = b.clone();
        c[i] ^= 0x10;
        assert!(decode(&c).is_err(), "a flip at byte {i} decoded");
    }
    let mut c = b.clone();
    c.insert(b.len() - CRC, 0);
    assert_eq!(decode(&reseal(c)), Err(SnapshotError::Trailing(1)));
    let mut c = b.clone();
    c[OFF_VERSION] = 2;
    assert_eq!(decode(&reseal(c)), Err(SnapshotError::Version(2)));
    let mut c = b.clone();
    c[0] = b'X';
    assert_eq!(decode(&c), Err(SnapshotError::Magic));
    let mut c = b.clone();
    c[OFF_TAG..OFF_TAG + 8].fill(0);
    assert!(matches!(decode(&reseal(c)), Err(SnapshotError::Field(_))));
    // A count larger than the records present: short, not a huge allocation.
    let mut c = b.clone();
    c[OFF_ENTRIES..OFF_ENTRIES + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(decode(&reseal(c)), Err(SnapshotError::Short(_))));
    // An inode record that does not decode.
    let mut c = b;
    let rec = HEADER + 2 + INODE_FIXED;
    c[rec] = 9;
    assert_eq!(
        decode(&reseal(c)),
        Err(SnapshotError::Record(FormatError::Version(9)))
    );
}

#[test]
fn the_cap_keeps_a_prefix() {
    let s = sample();
    let whole = encode(&s).len();
    let mut e = Encoder::new(s.volume, &s.name, s.pos, whole - 1);
    for (f, v, i) in &s.inodes {
        assert!(e.push_inode(*f, *v, i));
    }
    assert!(e.push_entry(s.entries[0].0, &s.entries[0].1, &s.entries[0].2));
    assert!(!e.push_entry(s.entries[1].0, &s.entries[1].1, &s.entries[1].2));
    // Full: nothing more, even what would fit.
    assert!(!e.push_entry(s.entries[0].0, b"b", &s.entries[0].2));
    assert_eq!(e.counts(), (2, 1));
    let b = e.finish();
    assert!(b.len() < whole);
    let d = decode(&b).unwrap();
    assert_eq!(d.inodes, s.inodes);
    assert_eq!(d.entries, s.entries[..1]);
}

fn put(key: Vec<u8>) -> RecordOp {
    RecordOp {
        key,
        expect: Expect::Any,
        value: Some(b"x".to_vec()),
    }
}

async fn commit(store: &MemRecords, keys: Vec<Vec<u8>>) {
    store
        .commit(keys.into_iter().map(put).collect())
        .await
        .unwrap();
}

#[tokio::test]
async fn check_drops_exactly_the_keys_changed_since() {
    let store = MemRecords::new();
    commit(&store, vec![inode_key(fid(1)), inode_key(fid(2))]).await;
    let mut s = sample();
    s.pos = store.feed_head().await.unwrap().unwrap();
    // Nothing changed: everything is kept.
    let mut same = s.clone();
    let c = check(&store, &mut same).await.unwrap();
    assert_eq!((c.reached, c.dropped), (1, 0));
    assert_eq!(same, s);
    // Inode 2 and name "a" change (and a key of no interest).
    commit(&store, vec![inode_key(fid(2)), b"other".to_vec()]).await;
    commit(&store, vec![entry_key(fid(0), b"a")]).await;
    let c = check(&store, &mut s).await.unwrap();
    assert_eq!(c.reached, 3);
    assert_eq!(c.dropped, 2);
    assert_eq!(c.changed_inodes, vec![fid(2)]);
    assert_eq!(
        s.inodes.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![fid(1)]
    );
    assert_eq!(s.entries.len(), 1);
    assert_eq!(s.entries[0].1, vec![0xff; 255]);
}

#[tokio::test]
async fn check_refuses_gaps_and_other_logs() {
    let store = MemRecords::new();
    commit(&store, vec![inode_key(fid(1))]).await;
    let pos = store.feed_head().await.unwrap().unwrap();
    commit(&store, vec![inode_key(fid(2))]).await;
    // The feed no longer reaches back to the snapshot.
    store.trim_feed(2);
    let mut s = Snapshot { pos, ..sample() };
    assert!(matches!(
        check(&store, &mut s).await,
        Err(RecordError::FeedGap { .. })
    ));
    // Another store (a volume made again) at the same sequence number.
    let again = MemRecords::new();
    commit(&again, vec![inode_key(fid(1))]).await;
    let mut s = Snapshot { pos, ..sample() };
    assert!(check(&again, &mut s).await.is_err());
    // A position past the head.
    let ahead = FeedPos {
        seq: 5,
        tag: pos.tag,
    };
    let mut s = Snapshot {
        pos: ahead,
        ..sample()
    };
    assert!(check(&store, &mut s).await.is_err());
}
