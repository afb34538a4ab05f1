//! A fragment read answered with an error (here `Corrupt`, as the brick
//! answers for data that rotted on disk) counts as a
//! missing fragment: the read decodes around it and returns the right
//! data, and the brick gets the rebuilt fragment written back.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use transport::wire::{DataRef, WriteReq};
use transport::{
    BoxFuture, Channel, ConnState, ErrorCode, ErrorReply, Payload, Request, Response, TcpClient,
    TransportError,
};
use volume::disperse::FRAGMENT_UNIT;
use volume::link::BrickLink;
use volume::{Client, Fid, VolumeKind};

/// A brick channel that, when armed, answers every read with `Corrupt`
/// and counts the writes it forwards.
struct Rotten {
    inner: TcpClient,
    armed: AtomicBool,
    writes: AtomicUsize,
}

impl Channel for Rotten {
    fn call(
        &self,
        req: Request,
        payload: Payload,
    ) -> BoxFuture<'_, Result<(Response, Payload), TransportError>> {
        Box::pin(async move {
            if self.armed.load(Ordering::SeqCst) {
                match req {
                    Request::ReadBlocks(_) => {
                        return Ok((
                            Response::Error(ErrorReply::new(
                                ErrorCode::Corrupt,
                                "injected: a block at rest fails its CRC32C",
                            )),
                            payload,
                        ))
                    }
                    Request::WriteBlocks(_) => {
                        self.writes.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
            self.inner.call(req, payload).await
        })
    }

    fn state(&self) -> ConnState {
        self.inner.state()
    }

    fn watch_state(&self) -> tokio::sync::watch::Receiver<ConnState> {
        self.inner.watch_state()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.close())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_reply_is_decoded_around_and_the_fragment_rewritten() {
    let pool = Pool::new();
    let mut bricks = Vec::new();
    for i in 0..3 {
        let d = pool.init_brick(i);
        bricks.push(InBrick::start(&d, &pool.secret, "127.0.0.1:0").await);
    }
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let rotten = Arc::new(Rotten {
        inner: TcpClient::connect(&addrs[0], pool.secret.clone(), client_opts())
            .await
            .expect("connect"),
        armed: AtomicBool::new(false),
        writes: AtomicUsize::new(0),
    });
    let mut links = vec![BrickLink::with_channel(
        &addrs[0],
        rotten.clone() as Arc<dyn Channel>,
    )];
    for a in &addrs[1..] {
        links.push(BrickLink::connect(a, pool.secret.clone(), client_opts()).await);
    }
    let kind = VolumeKind::Disperse {
        data: 2,
        redundancy: 1,
    };
    let client = Client::with_links(spec(41, kind, addrs.clone(), 1 << 20), links).expect("client");
    let fid = Fid {
        volume: 41,
        vnode: 1,
        unique: 1,
    };
    let data = bytes(41, 256 << 10);
    let obj = client.object(fid);
    obj.write(0, &data).await.expect("write");
    let flen = data.len() / 2;
    let (good, _) = brick_chunk(&addrs[0], &pool.secret, fid.chunk(0), flen as u64).await;

    // The data brick's fragment rots (written straight to the brick), and
    // the brick reports it with an error reply.
    let raw = TcpClient::connect(&addrs[0], pool.secret.clone(), client_opts())
        .await
        .expect("raw");
    let junk = vec![0xa5u8; flen];
    let (r, _) = raw
        .call(
            Request::Write(WriteReq {
                object: fid.chunk(0),
                offset: 0,
                epoch: 0,
                flags: 0,
                crc32c: crc32c::crc32c(&junk),
                data: DataRef::None,
            }),
            Payload::Out(iobuf::IoBuf::from_slice(&junk)),
        )
        .await
        .expect("raw write");
    assert!(matches!(r, Response::Write(_)), "{r:?}");
    rotten.armed.store(true, Ordering::SeqCst);

    let got = obj.read(0, data.len() as u64).await.expect("read");
    assert!(got == data, "read did not decode around the bad fragment");
    assert!(
        rotten.writes.load(Ordering::SeqCst) > 0,
        "the bad fragment was not written back"
    );
    rotten.armed.store(false, Ordering::SeqCst);
    let (now, _) = brick_chunk(&addrs[0], &pool.secret, fid.chunk(0), flen as u64).await;
    assert!(now == good, "brick 0 does not hold the rebuilt fragment");
    // Unaligned reads too (the rewrite covers whole fragment units).
    let got = obj.read(5000, 100_000).await.expect("read");
    assert!(got == data[5000..105_000]);
    assert_eq!(flen % FRAGMENT_UNIT as usize, 0);
    raw.close().await;
    client.close().await;
    for b in bricks {
        b.stop().await;
    }
}
