//! `ListChunks` through the brick's request handler, with no network: only
//! the asked volume, in id order, cut at `MAX_CHUNK_ENTRIES` and resumed from
//! the last id.

use std::sync::Arc;

use brick::Brick;
use transport::wire::{
    ChunkEntry, ListChunksReq, ObjectId, RangeReq, CHUNKS_MORE, MAX_CHUNK_ENTRIES,
};
use transport::{Handler, Request, Response, ServerPayload};

async fn call(b: &Brick, req: Request) -> Response {
    let mut p = ServerPayload::none(Arc::from("test"), 1);
    b.handle(req, &mut p).await
}

async fn punch(b: &Brick, object: ObjectId, len: u64) {
    let r = call(
        b,
        Request::Punch(RangeReq {
            object,
            offset: 0,
            len,
            epoch: 0,
            flags: 0,
        }),
    )
    .await;
    assert!(matches!(r, Response::Punch), "{r:?}");
}

async fn list(b: &Brick, volume: u32, start: ObjectId) -> (u32, Vec<ChunkEntry>) {
    match call(b, Request::ListChunks(ListChunksReq { volume, start })).await {
        Response::ListChunks(l) => (l.flags, l.chunks),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn lists_one_volume_in_order_page_by_page() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("brick");
    brick::init(&dir, &root.path().join("secret")).expect("init");
    let b = Brick::open(&dir).expect("open");
    // Volume 4: two objects; the second has more chunks than one reply
    // holds. Volume 5 and 3: one chunk each, never listed for 4.
    let n = MAX_CHUNK_ENTRIES as u64 + 50;
    let id = |vnode, chunk| ObjectId {
        volume: 4,
        vnode,
        unique: 1,
        chunk,
    };
    let mut want = Vec::new();
    for c in 0..3 {
        punch(&b, id(9, c), 100 + c).await;
        want.push((id(9, c), 100 + c));
    }
    for c in (0..n).rev() {
        punch(&b, id(2, c), 1 + c % 7).await;
    }
    for c in 0..n {
        want.push((id(2, c), 1 + c % 7));
    }
    want.sort();
    for v in [3, 5] {
        punch(
            &b,
            ObjectId {
                volume: v,
                ..id(2, 0)
            },
            10,
        )
        .await;
    }

    let (flags, first) = list(&b, 4, id(0, 0)).await;
    assert_eq!(flags, CHUNKS_MORE);
    assert_eq!(first.len(), MAX_CHUNK_ENTRIES);
    let last = first.last().unwrap().object;
    let (flags, rest) = list(
        &b,
        4,
        ObjectId {
            chunk: last.chunk + 1,
            ..last
        },
    )
    .await;
    assert_eq!(flags, 0);
    let got: Vec<(ObjectId, u64)> = first
        .iter()
        .chain(rest.iter())
        .map(|e| (e.object, e.size))
        .collect();
    assert_eq!(got, want);
    assert!(first.iter().chain(rest.iter()).all(|e| e.version == 1));

    // Another volume sees only its own chunk; an unknown volume nothing.
    let (_, five) = list(&b, 5, id(0, 0)).await;
    assert_eq!(five.len(), 1);
    assert_eq!(five[0].object.volume, 5);
    let (flags, none) = list(&b, 77, id(0, 0)).await;
    assert_eq!((flags, none.len()), (0, 0));
}
