//! The two exports against a reference model, the trait's defaults, and
//! backend errors reaching the client as the right NBD error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use iobuf::IoBuf;
use nbd::wire::*;
use nbd::{
    Export, ExportError, ExportFuture, ExportSet, FileExport, Handshake, HandshakeStep,
    MemoryExport, ReadData, ZeroFlags,
};
use rand::{Rng, SeedableRng};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const SIZE: u64 = 1 << 20;

/// Random writes, trims, zeroes (punching or not) against a byte-array
/// model; after each step a random read must match, holes must read as zero,
/// and block status must cover the range with holes only where zeroes are.
async fn model_check(export: &dyn Export, seed: u64, steps: usize) {
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut trimmed: Vec<(u64, u64)> = Vec::new();
    for step in 0..steps {
        let off = rng.gen_range(0..SIZE);
        let len = rng.gen_range(1..=(SIZE - off).min(64 * 1024)) as u32;
        match rng.gen_range(0..4) {
            0 | 1 => {
                let fill: u8 = rng.gen_range(1..=255);
                let buf = IoBuf::from_slice(&vec![fill; len as usize]);
                export.write(off, buf, rng.gen()).await.unwrap();
                model[off as usize..off as usize + len as usize].fill(fill);
            }
            2 => {
                let flags = ZeroFlags {
                    may_punch: rng.gen(),
                    fast: false,
                    fua: rng.gen(),
                };
                export.write_zeroes(off, len, flags).await.unwrap();
                model[off as usize..off as usize + len as usize].fill(0);
            }
            _ => {
                // Trim leaves contents unspecified: the model forgets the range.
                export.trim(off, len, false).await.unwrap();
                trimmed.push((off, off + u64::from(len)));
            }
        }
        let roff = rng.gen_range(0..SIZE);
        let rlen = rng.gen_range(1..=(SIZE - roff).min(256 * 1024)) as usize;
        let mut buf = IoBuf::alloc(rlen);
        buf.set_len(rlen);
        let ReadData { data, holes } = export.read(roff, buf).await.unwrap();
        assert_eq!(data.len(), rlen);
        for h in &holes {
            assert!(
                h.start < h.end && h.end as usize <= rlen,
                "step {step}: bad hole {h:?}"
            );
            assert!(data.as_slice()[h.start as usize..h.end as usize]
                .iter()
                .all(|&b| b == 0));
        }
        for (i, (&got, &want)) in data
            .as_slice()
            .iter()
            .zip(&model[roff as usize..])
            .enumerate()
        {
            let at = roff + i as u64;
            if trimmed.iter().any(|&(s, e)| at >= s && at < e) {
                continue;
            }
            assert_eq!(got, want, "step {step} seed {seed}: byte at {at}");
        }
        let ext = export.block_status(roff, rlen as u32).await.unwrap();
        let mut at = 0u64;
        for e in &ext {
            assert!(e.length > 0);
            if e.zero {
                assert!(
                    data.as_slice()[at as usize..(at + e.length).min(rlen as u64) as usize]
                        .iter()
                        .all(|&b| b == 0)
                );
            }
            at += e.length;
        }
        assert!(at >= rlen as u64, "block status covers {at} of {rlen}");
    }
    export.flush().await.unwrap();
}

#[test]
fn memory_export_matches_model() {
    let e = MemoryExport::new(SIZE);
    rt().block_on(model_check(&e, 1, 400));
}

#[test]
fn file_export_matches_model_and_punches_holes() {
    let dir = tempfile::tempdir().unwrap();
    let e = FileExport::create(dir.path().join("f"), SIZE).unwrap();
    let rt = rt();
    rt.block_on(model_check(&e, 2, 300));
    // A punched, aligned range is a hole afterwards.
    rt.block_on(async {
        e.write(0, IoBuf::from_slice(&[9u8; 65536]), false)
            .await
            .unwrap();
        let before = e.block_status(0, 65536).await.unwrap();
        assert!(!before[0].hole);
        e.write_zeroes(
            0,
            65536,
            ZeroFlags {
                may_punch: true,
                fast: true,
                fua: true,
            },
        )
        .await
        .unwrap();
        let after = e.block_status(0, 65536).await.unwrap();
        assert!(
            after[0].hole && after[0].zero && after[0].length >= 65536,
            "{after:?}"
        );
        // NO_HOLE keeps it readable as zeroes (allocated or not is the fs's call).
        e.write_zeroes(
            4096,
            4096,
            ZeroFlags {
                may_punch: false,
                fast: false,
                fua: false,
            },
        )
        .await
        .unwrap();
        let mut b = IoBuf::alloc(8192);
        b.set_len(8192);
        assert!(e
            .read(0, b)
            .await
            .unwrap()
            .data
            .as_slice()
            .iter()
            .all(|&x| x == 0));
    });
    // Reopening sees the same size.
    assert_eq!(FileExport::open(dir.path().join("f")).unwrap().size(), SIZE);
}

/// Only the required methods; everything else is the trait's default.
struct Minimal {
    inner: MemoryExport,
}

impl Export for Minimal {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read(&self, offset: u64, buf: IoBuf) -> ExportFuture<'_, ReadData> {
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: IoBuf, fua: bool) -> ExportFuture<'_, ()> {
        self.inner.write(offset, data, fua)
    }
    fn flush(&self) -> ExportFuture<'_, ()> {
        self.inner.flush()
    }
}

#[test]
fn trait_defaults_are_correct_and_advertised_honestly() {
    let m = Arc::new(Minimal {
        inner: MemoryExport::new(SIZE),
    });
    rt().block_on(async {
        m.write(0, IoBuf::from_slice(&[7u8; 3 << 20 >> 2]), false)
            .await
            .unwrap();
        m.write_zeroes(100, 500_000, ZeroFlags::default())
            .await
            .unwrap();
        let mut b = IoBuf::alloc(600_000);
        b.set_len(600_000);
        let d = m.read(0, b).await.unwrap().data;
        assert!(d.as_slice()[..100].iter().all(|&x| x == 7));
        assert!(d.as_slice()[100..500_100].iter().all(|&x| x == 0));
        assert!(d.as_slice()[500_100..].iter().all(|&x| x == 7));
        let fast = ZeroFlags {
            fast: true,
            ..ZeroFlags::default()
        };
        let err = m.write_zeroes(0, 10, fast).await.unwrap_err();
        assert_eq!(err.errno(), errno::ENOTSUP);
        assert_eq!(
            m.trim(0, 10, false).await.unwrap_err().errno(),
            errno::EINVAL
        );
        let ext = m.block_status(0, 4096).await.unwrap();
        assert_eq!((ext.len(), ext[0].length, ext[0].hole), (1, 4096, false));
        m.cache(0, 4096).await.unwrap();
    });
    let mut set = ExportSet::new();
    set.add("m", "", m).unwrap();
    let mut hs = Handshake::new();
    hs.feed(&1u32.to_be_bytes());
    let mut o = IHAVEOPT.to_be_bytes().to_vec();
    o.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    o.extend_from_slice(&1u32.to_be_bytes());
    o.push(b'm');
    hs.feed(&o);
    let HandshakeStep::Done(n) = hs.step(&set) else {
        panic!()
    };
    assert_eq!(
        n.flags & (TF_SEND_TRIM | TF_SEND_FAST_ZERO | TF_CAN_MULTI_CONN | TF_READ_ONLY),
        0
    );
    assert_ne!(
        n.flags & (TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_WRITE_ZEROES),
        0
    );
}

/// Fails every read with EIO and every write with ENOSPC, at the backend.
struct Failing;

impl Export for Failing {
    fn size(&self) -> u64 {
        SIZE
    }
    fn read(&self, offset: u64, buf: IoBuf) -> ExportFuture<'_, ReadData> {
        let len = buf.len() as u64;
        Box::pin(std::future::ready(Err(ExportError::io(
            "read",
            offset,
            len,
            std::io::Error::from_raw_os_error(libc::EIO),
        ))))
    }
    fn write(&self, offset: u64, data: IoBuf, _fua: bool) -> ExportFuture<'_, ()> {
        let len = data.len() as u64;
        Box::pin(std::future::ready(Err(ExportError::io(
            "write",
            offset,
            len,
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        ))))
    }
    fn flush(&self) -> ExportFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn is_read_only(&self) -> bool {
        false
    }
}

#[test]
fn backend_errors_reach_the_client_as_nbd_errors() {
    let rt = rt();
    let mut set = ExportSet::new();
    set.add("bad", "", Arc::new(Failing)).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = rt.spawn(nbd::serve(listener, Arc::new(set), rx));
    let mut s = TcpStream::connect(addr).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut o = IHAVEOPT.to_be_bytes().to_vec();
    o.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    o.extend_from_slice(&3u32.to_be_bytes());
    o.extend_from_slice(b"bad");
    s.write_all(&o).unwrap();
    let mut x = [0u8; 10];
    s.read_exact(&mut x).unwrap();
    let req = |kind, handle, len: u32| {
        RequestHeader {
            flags: 0,
            kind,
            handle,
            offset: 0,
            length: len,
        }
        .encode()
    };
    s.write_all(&req(CMD_READ, 1, 512)).unwrap();
    let mut w = req(CMD_WRITE, 2, 4).to_vec();
    w.extend_from_slice(b"abcd");
    s.write_all(&w).unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut r = [0u8; 16];
        s.read_exact(&mut r).unwrap();
        assert_eq!(&r[0..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        got.push((
            u64::from_be_bytes(r[8..16].try_into().unwrap()),
            u32::from_be_bytes(r[4..8].try_into().unwrap()),
        ));
    }
    got.sort();
    assert_eq!(got, vec![(1, errno::EIO), (2, errno::ENOSPC)]);
    tx.send(true).unwrap();
    rt.block_on(server).unwrap().unwrap();
}
