//! The brick's integrity layer over a real object store, no network:
//! unaligned writes, punches and zeroes keep every block's stored CRC in
//! step with its data (checked against a model after every step); a write
//! whose piece CRC is wrong touches nothing; a byte changed behind the
//! store's back makes reads `Corrupt` and `Verify` name the block, until
//! the block is rewritten; chunks without a table are served unverified.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use brick::integrity::Integrity;
use iobuf::IoBuf;
use storage::objects::{ChunkId, Fid, MemoryMeta, ObjectStore, StoreOptions};
use transport::wire::{block_crcs, ErrorCode};

const SPAN: u64 = 256 << 10;

fn chunk(i: u64) -> ChunkId {
    ChunkId::new(
        Fid {
            volume: 1,
            vnode: 2,
            unique: 3,
        },
        i,
    )
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn setup(dir: &std::path::Path) -> (ObjectStore, Integrity) {
    let store = ObjectStore::open(
        dir,
        Arc::new(MemoryMeta::new()),
        StoreOptions {
            buf_size: 64 * 1024,
            bufs_per_worker: 4,
            ..StoreOptions::default()
        },
    )
    .expect("store");
    (store, Integrity::open(dir).expect("integrity"))
}

#[tokio::test]
async fn tables_follow_unaligned_changes_and_catch_rot() {
    let root = tempfile::tempdir().unwrap();
    let (store, integ) = setup(root.path());
    let c = chunk(0);
    let mut model = vec![0u8; SPAN as usize];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for step in 0..150 {
        let off = rng.below(SPAN - 1);
        let len = 1 + rng.below((SPAN - off).min(20_000));
        match rng.below(4) {
            0 | 1 => {
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let crcs = block_crcs(off, &data);
                integ
                    .write(&store, c, off, IoBuf::from_slice(&data), Some(&crcs))
                    .await
                    .unwrap_or_else(|e| panic!("step {step}: write: {e}"));
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            2 => {
                integ.range(&store, c, off, len, false).await.unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            _ => {
                integ.range(&store, c, off, len, true).await.unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
        }
        let (roff, rlen) = {
            let o = rng.below(SPAN - 1);
            (o, 1 + rng.below((SPAN - o).min(30_000)))
        };
        let (buf, crcs) = integ
            .read(&store, c, roff, rlen)
            .await
            .unwrap_or_else(|e| panic!("step {step}: read: {e}"));
        assert_eq!(
            buf.as_slice(),
            &model[roff as usize..(roff + rlen) as usize],
            "step {step}"
        );
        assert_eq!(crcs, block_crcs(roff, buf.as_slice()), "step {step}");
    }
    let v = integ.verify(&store, c, 0, SPAN).await.unwrap();
    assert_eq!(v.checked as u64, SPAN / 4096);
    assert!(v.bad.is_empty());

    // A piece that fails its CRC on receipt is refused; nothing changes.
    let data = vec![0x5au8; 6000];
    let mut crcs = block_crcs(100, &data);
    crcs[1] ^= 1;
    let e = integ
        .write(&store, c, 100, IoBuf::from_slice(&data), Some(&crcs))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Checksum);
    let (buf, _) = integ.read(&store, c, 0, 8192).await.unwrap();
    assert_eq!(buf.as_slice(), &model[..8192]);

    // Rot behind the store's back.
    store.flush().await.unwrap();
    let path = store.chunk_path(c);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let at = 3 * 4096 + 17;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 1]).unwrap();
    f.sync_all().unwrap();
    let e = integ.read(&store, c, 3 * 4096 + 100, 10).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Corrupt);
    assert!(integ.read(&store, c, 0, 3 * 4096).await.is_ok());
    let v = integ.verify(&store, c, 0, SPAN).await.unwrap();
    assert_eq!(v.bad, vec![3 * 4096]);
    assert!(integ.corrupt_blocks() >= 2);
    // Rewriting the whole block repairs it.
    let block = model[3 * 4096..4 * 4096].to_vec();
    integ
        .write(&store, c, 3 * 4096, IoBuf::from_slice(&block), None)
        .await
        .unwrap();
    let (buf, _) = integ.read(&store, c, 0, SPAN).await.unwrap();
    assert_eq!(buf.as_slice(), &model[..]);

    // A chunk written with no table (older bricks) is served unverified.
    let old = chunk(1);
    let (r, _) = store.write(old, 0, IoBuf::from_slice(&[7u8; 5000])).await;
    r.unwrap();
    let v = integ.verify(&store, old, 0, 8192).await.unwrap();
    assert_eq!(v.checked, 0);
    integ
        .write(&store, old, 10, IoBuf::from_slice(&[1, 2, 3]), None)
        .await
        .unwrap();
    assert!(!integ.tables().exists(old).unwrap());
    let (buf, _) = integ.read(&store, old, 0, 16).await.unwrap();
    assert_eq!(&buf.as_slice()[9..14], &[7, 1, 2, 3, 7]);
}
