//! The record tables through their request handlers, on a real RVM in a
//! temporary directory (no network).

use super::*;
use storage::rvm::RvmOptions;
use transport::wire::RecordOpWire;

const VOL: u32 = 7;

fn open(dir: &std::path::Path, create: bool) -> Records {
    let opts = RvmOptions::default();
    let rvm = if create {
        Rvm::create(dir, &opts).expect("create rvm")
    } else {
        Rvm::open(dir, &opts).expect("open rvm")
    };
    Records::open(Arc::new(rvm)).expect("records")
}

fn put(key: &str, expect: RecordExpect, value: &str) -> RecordOpWire {
    RecordOpWire {
        key: key.as_bytes().to_vec(),
        expect,
        value: Some(value.as_bytes().to_vec()),
    }
}

fn del(key: &str, expect: RecordExpect) -> RecordOpWire {
    RecordOpWire {
        key: key.as_bytes().to_vec(),
        expect,
        value: None,
    }
}

/// Commits `ops` on top of the brick's head under `ballot`.
fn commit(r: &Records, ballot: u64, ops: Vec<RecordOpWire>) -> RecordCommitReply {
    let head = head(r);
    r.commit(&RecordCommitReq {
        volume: VOL,
        ballot,
        prev: head.id,
        tag: head.id.seq * 31 + 17,
        ops,
    })
    .expect("commit")
}

fn head(r: &Records) -> RecordHead {
    r.head(&RecordHeadReq {
        volume: VOL,
        op: HeadOp::Query,
        ballot: 0,
    })
    .expect("head")
    .head
}

fn get(r: &Records, key: &str) -> Option<(u64, Vec<u8>)> {
    r.get(&RecordGetReq {
        volume: VOL,
        key: key.as_bytes().to_vec(),
    })
    .record
    .map(|v| (v.version, v.value))
}

fn all(r: &Records) -> Vec<(Vec<u8>, u64, Vec<u8>)> {
    r.list(&RecordListReq {
        volume: VOL,
        limit: 10_000,
        prefix: Vec::new(),
        after: Vec::new(),
    })
    .entries
    .into_iter()
    .map(|e| (e.key, e.version, e.value.unwrap_or_default()))
    .collect()
}

#[test]
fn guards_are_all_or_nothing_and_say_which_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = open(dir.path(), true);
    let c = commit(&r, 0, vec![put("a", RecordExpect::Absent, "1")]);
    assert_eq!(c.outcome, CommitOutcome::Applied);
    assert_eq!(c.head.id.seq, 1);
    let c = commit(
        &r,
        0,
        vec![
            put("b", RecordExpect::Absent, "2"),
            put("a", RecordExpect::Absent, "3"),
        ],
    );
    assert_eq!(
        c.outcome,
        CommitOutcome::Conflict {
            index: 1,
            found: Some(1)
        }
    );
    assert_eq!(c.head.id.seq, 1, "a refused commit leaves the head");
    assert_eq!(get(&r, "b"), None);
    let c = commit(&r, 0, vec![put("a", RecordExpect::Version(1), "4")]);
    assert_eq!(c.outcome, CommitOutcome::Applied);
    assert_eq!(get(&r, "a"), Some((2, b"4".to_vec())));
    let c = commit(&r, 0, vec![put("a", RecordExpect::Version(1), "5")]);
    assert!(matches!(
        c.outcome,
        CommitOutcome::Conflict {
            index: 0,
            found: Some(2)
        }
    ));
    // A key named twice: the second op sees the first; delete then put
    // restarts the version at 1.
    let c = commit(
        &r,
        0,
        vec![
            del("a", RecordExpect::Version(2)),
            put("a", RecordExpect::Any, "6"),
        ],
    );
    assert_eq!(c.outcome, CommitOutcome::Applied);
    assert_eq!(get(&r, "a"), Some((1, b"6".to_vec())));
}

#[test]
fn ballots_and_heads_fence_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = open(dir.path(), true);
    let promise = |b| {
        r.head(&RecordHeadReq {
            volume: VOL,
            op: HeadOp::Promise,
            ballot: b,
        })
        .expect("promise")
    };
    assert!(!promise(5).refused);
    assert!(promise(5).refused, "a ballot is promised once");
    assert!(promise(3).refused);
    assert_eq!(
        commit(&r, 4, vec![put("k", RecordExpect::Any, "x")]).outcome,
        CommitOutcome::StaleBallot
    );
    assert_eq!(
        commit(&r, 5, vec![put("k", RecordExpect::Any, "x")]).outcome,
        CommitOutcome::Applied
    );
    // A higher ballot is accepted (the brick missed the promise) and
    // raises the promise.
    let c = commit(&r, 9, vec![put("k", RecordExpect::Any, "y")]);
    assert_eq!(c.outcome, CommitOutcome::Applied);
    assert_eq!((c.head.ballot, c.head.promised), (9, 9));
    // A commit on a head the brick is not at applies nothing.
    let c = r
        .commit(&RecordCommitReq {
            volume: VOL,
            ballot: 9,
            prev: CommitId { seq: 2, tag: 999 },
            tag: 1,
            ops: vec![put("k", RecordExpect::Any, "z")],
        })
        .expect("commit");
    assert_eq!(c.outcome, CommitOutcome::HeadMismatch);
    assert_eq!(get(&r, "k"), Some((2, b"y".to_vec())));
}

#[test]
fn records_head_and_feed_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let long = "L".repeat(700);
    let before = {
        let r = open(dir.path(), true);
        commit(&r, 1, vec![put("d/1", RecordExpect::Absent, "one")]);
        commit(
            &r,
            1,
            vec![
                put("d/2", RecordExpect::Absent, "two"),
                put(&long, RecordExpect::Absent, "long key"),
            ],
        );
        commit(&r, 1, vec![del("d/1", RecordExpect::Version(1))]);
        (all(&r), head(&r))
    };
    let r = open(dir.path(), false);
    assert_eq!(all(&r), before.0);
    assert_eq!(head(&r), before.1);
    assert_eq!(get(&r, &long), Some((1, b"long key".to_vec())));
    let ch = r.changes_now(
        r.lock().get(&VOL).expect("volume"),
        &RecordChangesReq {
            volume: VOL,
            limit: 100,
            since: 0,
            since_tag: 0,
            wait_ms: 0,
        },
    );
    let ch = ch.expect("changes");
    let seqs: Vec<u64> = ch.changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, vec![1, 2, 2, 3]);
}

#[test]
fn list_is_ordered_and_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = open(dir.path(), true);
    for k in ["d/3", "d/1", "e/1", "d/2", "c/9"] {
        commit(&r, 0, vec![put(k, RecordExpect::Absent, k)]);
    }
    let l = r.list(&RecordListReq {
        volume: VOL,
        limit: 2,
        prefix: b"d/".to_vec(),
        after: Vec::new(),
    });
    let keys: Vec<_> = l.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(keys, vec![b"d/1".to_vec(), b"d/2".to_vec()]);
    assert_eq!(l.flags, LIST_MORE);
    let l = r.list(&RecordListReq {
        volume: VOL,
        limit: 2,
        prefix: b"d/".to_vec(),
        after: b"d/2".to_vec(),
    });
    let keys: Vec<_> = l.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(keys, vec![b"d/3".to_vec()]);
    assert_eq!(l.flags, 0);
    assert_eq!(l.head_seq, 5);
}

#[test]
fn feed_is_bounded_and_checks_tags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = open(dir.path(), true);
    let n = FEED_KEEP as u64 + 10;
    for i in 0..n {
        commit(
            &r,
            0,
            vec![put(&format!("k{}", i % 3), RecordExpect::Any, "v")],
        );
    }
    let ask = |since, since_tag| {
        let vols = r.lock();
        r.changes_now(
            vols.get(&VOL).expect("volume"),
            &RecordChangesReq {
                volume: VOL,
                limit: 5,
                since,
                since_tag,
                wait_ms: 0,
            },
        )
    };
    let gap = ask(3, 0).expect("answer");
    assert_eq!(gap.status, FeedStatus::Gap);
    assert_eq!(gap.oldest, n - FEED_KEEP as u64);
    let ok = ask(n - 3, 0).expect("answer");
    assert_eq!(ok.status, FeedStatus::Ok);
    assert_eq!(
        ok.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![n - 2, n - 1, n]
    );
    // The tag commit n-3 got from `commit()`: (seq - 1) * 31 + 17.
    let tag = (n - 4) * 31 + 17;
    assert_eq!(ask(n - 3, tag).expect("answer").status, FeedStatus::Ok);
    assert_eq!(
        ask(n - 3, tag + 1).expect("answer").status,
        FeedStatus::Diverged
    );
    assert!(ask(n, 0).is_none(), "nothing new: the caller may wait");
}

#[test]
fn long_poll_returns_on_a_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = Arc::new(open(dir.path(), true));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let poller = {
            let r = r.clone();
            tokio::spawn(async move {
                r.changes(&RecordChangesReq {
                    volume: VOL,
                    limit: 10,
                    since: 0,
                    since_tag: 0,
                    wait_ms: 30_000,
                })
                .await
            })
        };
        // Let the poller register (it answers right away either way if the
        // commit comes first).
        tokio::task::yield_now().await;
        commit(&r, 0, vec![put("x", RecordExpect::Absent, "1")]);
        let got = poller.await.expect("poller");
        assert_eq!(got.status, FeedStatus::Ok);
        assert_eq!(got.changes.len(), 1);
        assert_eq!(got.changes[0].key, b"x".to_vec());
        // Stopping wakes a poll that has nothing to wait for.
        let poller = {
            let r = r.clone();
            tokio::spawn(async move {
                r.changes(&RecordChangesReq {
                    volume: VOL,
                    limit: 10,
                    since: 1,
                    since_tag: 0,
                    wait_ms: 30_000,
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        r.stop();
        let got = poller.await.expect("poller");
        assert!(got.changes.is_empty());
    });
}

#[test]
fn sync_sessions_copy_records_and_head() {
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst_dir = tempfile::tempdir().expect("tempdir");
    let src = open(src_dir.path(), true);
    let dst = open(dst_dir.path(), true);
    commit(&src, 2, vec![put("a", RecordExpect::Any, "1")]);
    commit(&src, 2, vec![put("b", RecordExpect::Any, "2")]);
    commit(&src, 2, vec![put("a", RecordExpect::Any, "3")]);
    // The destination diverged (a commit the source never had).
    commit(&dst, 1, vec![put("zz", RecordExpect::Any, "stray")]);
    let sh = head(&src);
    let page = |flags, session, base, entries| {
        dst.sync(&RecordSyncReq {
            volume: VOL,
            flags,
            session,
            ballot: 2,
            base,
            head: sh.id,
            head_ballot: sh.ballot,
            entries,
        })
        .expect("sync")
    };
    // Without reset the base must be the destination's head.
    assert!(page(SYNC_BEGIN, 5, CommitId::default(), Vec::new()).refused);
    // A page of an unknown session is refused.
    assert!(page(0, 5, CommitId::default(), Vec::new()).refused);
    let entries: Vec<RecordEntry> = all(&src)
        .into_iter()
        .map(|(key, version, value)| RecordEntry {
            key,
            version,
            value: Some(value),
        })
        .collect();
    let r = page(
        SYNC_BEGIN | SYNC_RESET,
        5,
        CommitId::default(),
        entries[..1].to_vec(),
    );
    assert!(!r.refused && r.head.syncing());
    // Commits are refused while syncing.
    let c = dst
        .commit(&RecordCommitReq {
            volume: VOL,
            ballot: 9,
            prev: r.head.id,
            tag: 1,
            ops: vec![put("q", RecordExpect::Any, "q")],
        })
        .expect("commit");
    assert_eq!(c.outcome, CommitOutcome::HeadMismatch);
    assert!(page(0, 6, CommitId::default(), Vec::new()).refused);
    let r = page(SYNC_FINISH, 5, CommitId::default(), entries[1..].to_vec());
    assert!(!r.refused && !r.head.syncing());
    assert_eq!(r.head.id, sh.id);
    assert_eq!(all(&dst), all(&src));
    // A healer under a lower ballot than promised is refused.
    assert!(
        dst.sync(&RecordSyncReq {
            volume: VOL,
            flags: SYNC_BEGIN | SYNC_RESET,
            session: 9,
            ballot: 1,
            base: CommitId::default(),
            head: sh.id,
            head_ballot: sh.ballot,
            entries: Vec::new(),
        })
        .expect("sync")
        .refused
    );
    // The synced brick takes the source's next commit.
    let c = commit(&src, 2, vec![put("c", RecordExpect::Absent, "4")]);
    let c2 = dst
        .commit(&RecordCommitReq {
            volume: VOL,
            ballot: 2,
            prev: sh.id,
            tag: sh.id.seq * 31 + 17,
            ops: vec![put("c", RecordExpect::Absent, "4")],
        })
        .expect("commit");
    assert_eq!(c2.outcome, CommitOutcome::Applied);
    assert_eq!(c2.head.id, c.head.id);
    assert_eq!(all(&dst), all(&src));
}
