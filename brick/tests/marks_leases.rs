//! The brick's lease and mark tables through its request handler, with no
//! network: semantics and persistence across a reopen.

use std::sync::Arc;

use brick::Brick;
use transport::wire::{
    LeaseOp, LeaseReq, Mark, MarksOp, MarksReq, ObjectId, RangeReq, LEASE_UNCLEAN,
};
use transport::{ErrorCode, Handler, Request, Response, ServerPayload};

fn open() -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("brick");
    brick::init(&dir, &root.path().join("secret")).expect("init");
    (root, dir)
}

async fn call(b: &Brick, req: Request) -> Response {
    let mut p = ServerPayload::none(Arc::from("test"), 1);
    b.handle(req, &mut p).await
}

fn oid(chunk: u64) -> ObjectId {
    ObjectId {
        volume: 4,
        vnode: 5,
        unique: 6,
        chunk,
    }
}

fn marks(op: MarksOp, target: u32, chunk: u64, first: u32, count: u32, amount: u64) -> Request {
    Request::Marks(MarksReq {
        op,
        target,
        object: oid(chunk),
        first,
        count,
        amount,
    })
}

fn list(r: Response) -> Vec<Mark> {
    match r {
        Response::Marks(m) => m.marks,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn pending_counts_add_subtract_and_survive_a_reopen() {
    let (_root, dir) = open();
    let b = Brick::open(&dir).expect("open");
    call(&b, marks(MarksOp::AddPending, 2, 0, 3, 2, 1)).await;
    call(&b, marks(MarksOp::AddPending, 2, 0, 4, 1, 1)).await;
    call(&b, marks(MarksOp::SetActive, 0, 1, 0, 1, 9)).await;
    let l = list(call(&b, marks(MarksOp::ListPending, 0, 0, 0, 0, 0)).await);
    let got: Vec<(u32, u32, u64)> = l.iter().map(|m| (m.region, m.target, m.value)).collect();
    assert_eq!(got, vec![(3, 2, 1), (4, 2, 2)]);
    // Heal saw count 1 on region 4, but another write was missed since.
    call(&b, marks(MarksOp::ClearPending, 2, 0, 3, 2, 1)).await;
    b.shutdown().expect("shutdown");
    drop(b);
    let b = Brick::open(&dir).expect("reopen");
    let l = list(call(&b, marks(MarksOp::ListPending, 0, 0, 0, 0, 0)).await);
    assert_eq!(l.len(), 1);
    assert_eq!((l[0].region, l[0].value), (4, 1));
    let a = list(call(&b, marks(MarksOp::ListActive, 0, 0, 0, 0, 0)).await);
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].object.chunk, a[0].value), (1, 9));
    // Other volumes are not listed.
    let other = Request::Marks(MarksReq {
        op: MarksOp::ListPending,
        target: 0,
        object: ObjectId {
            volume: 99,
            ..oid(0)
        },
        first: 0,
        count: 0,
        amount: 0,
    });
    assert!(list(call(&b, other).await).is_empty());
    // Too many regions at once is refused.
    let r = call(&b, marks(MarksOp::AddPending, 1, 0, 0, 100_000, 1)).await;
    assert!(
        matches!(r, Response::Error(ref e) if e.code == ErrorCode::Invalid),
        "{r:?}"
    );
}

#[tokio::test]
async fn lease_epochs_fence_punches_and_survive_a_reopen() {
    let (_root, dir) = open();
    let b = Brick::open(&dir).expect("open");
    let lease = |op, owner, epoch| {
        Request::Lease(LeaseReq {
            object: oid(0),
            op,
            duration_ms: 60_000,
            owner,
            epoch,
        })
    };
    let Response::Lease(l1) = call(&b, lease(LeaseOp::Acquire, 1, 0)).await else {
        panic!()
    };
    let punch = |epoch| {
        Request::Punch(RangeReq {
            object: oid(0),
            offset: 0,
            len: 4096,
            epoch,
            flags: 0,
        })
    };
    assert!(matches!(call(&b, punch(l1.epoch)).await, Response::Punch));
    let r = call(&b, punch(0)).await;
    assert!(
        matches!(r, Response::Error(ref e) if e.code == ErrorCode::StaleEpoch),
        "{r:?}"
    );
    let r = call(&b, punch(l1.epoch + 5)).await;
    assert!(
        matches!(r, Response::Error(ref e) if e.code == ErrorCode::Invalid),
        "{r:?}"
    );
    // Chunk index must be 0 for a lease.
    let r = call(
        &b,
        Request::Lease(LeaseReq {
            object: oid(3),
            op: LeaseOp::Acquire,
            duration_ms: 1,
            owner: 1,
            epoch: 0,
        }),
    )
    .await;
    assert!(
        matches!(r, Response::Error(ref e) if e.code == ErrorCode::Invalid),
        "{r:?}"
    );
    b.shutdown().expect("shutdown");
    drop(b);
    let b = Brick::open(&dir).expect("reopen");
    // The holder may renew after a restart if nobody took the lease.
    let r = call(&b, lease(LeaseOp::Renew, 1, l1.epoch)).await;
    assert!(matches!(r, Response::Lease(_)), "{r:?}");
    let r = call(&b, lease(LeaseOp::Release, 1, l1.epoch)).await;
    assert!(matches!(r, Response::Lease(_)), "{r:?}");
    let Response::Lease(l2) = call(&b, lease(LeaseOp::Acquire, 2, 0)).await else {
        panic!()
    };
    assert_eq!(l2.epoch, l1.epoch + 1);
    assert_eq!(l2.flags & LEASE_UNCLEAN, 0, "released cleanly");
    let r = call(&b, punch(l1.epoch)).await;
    assert!(
        matches!(r, Response::Error(ref e) if e.code == ErrorCode::StaleEpoch),
        "{r:?}"
    );
}
