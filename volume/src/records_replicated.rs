//! [`ReplicatedRecords`]: the [`RecordStore`] of a volume, kept on the
//! bricks of its first set (`brick/src/records.rs`) and replicated like
//! object writes: a commit goes to every brick of the set that is up and
//! in step, and is acknowledged once a quorum applied it.
//!
//! One order per volume: a client that commits first becomes the set's
//! *sequencer* by having a quorum promise its ballot (a Paxos prepare);
//! bricks then refuse commits and heal pages under lower ballots. From the
//! promises' heads it picks the authoritative log (highest head ballot,
//! then highest seq, among bricks not mid-sync), brings the other bricks it
//! reached to it (heal), and only then commits, each commit naming the head
//! it builds on. A brick applies a commit only on that head, so bricks at
//! the same head hold the same records and judge guards alike. Another
//! client that wants to commit takes over with a higher ballot; the first
//! then sees `StaleBallot` and takes it back when it commits again
//! (clients back off at random to settle such duels). `docs/volume.md`,
//! "Namespace records", has the argument for why acknowledged commits
//! survive any change of sequencer.
//!
//! Reads go to one brick that is up and at the newest head this client has
//! seen; `changes` long-polls one such brick.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinSet;
use transport::wire::{
    CommitId, CommitOutcome, FeedStatus, HeadOp, RecordChangesReq, RecordCommitReq, RecordEntry,
    RecordExpect, RecordGetReq, RecordHead, RecordHeadReq, RecordListReq, RecordOpWire,
    RecordSyncReq, LIST_MORE, MAX_BODY, MAX_RECORD_ENTRIES, MAX_RECORD_KEY, MAX_RECORD_OPS,
    MAX_RECORD_VALUE, RECORD_ENTRY_FIXED, RECORD_SYNC_FIXED, SYNC_BEGIN, SYNC_FINISH, SYNC_RESET,
};
use transport::{BoxFuture, Payload, Request, Response};

use crate::error::VolumeError;
use crate::link::{BrickLink, CallFail};
use crate::records::{
    Change, Expect, FeedPos, Listing, Record, RecordError, RecordOp, RecordStore,
};
use crate::replicate::Quorum;
use crate::spec::VolumeSpec;

/// How many times a commit is tried (taking the sequencer role back from
/// another client, or after bricks came back) before it gives up.
const MAX_ATTEMPTS: u32 = 60;

/// What a sync page may hold (room for the fixed part and the frame).
const SYNC_BUDGET: usize = MAX_BODY as usize - RECORD_SYNC_FIXED - 1024;

type Answers = Vec<(usize, Result<Response, CallFail>)>;

/// The sequencer role as this client holds it.
struct Sequencer {
    /// Our promised ballot (0: we are not sequencing).
    ballot: u64,
    /// The head every in-step brick is at.
    head: RecordHead,
    /// Bricks at `head` (they get commits).
    in_step: Vec<bool>,
    /// Each link's `ups` when we took the role (a brick that came back is
    /// brought in step by taking the role again).
    seen_ups: Vec<u64>,
}

/// Which bricks reads may use.
struct ReadView {
    /// The newest head seq seen (our commits, brick replies).
    newest: u64,
    stale: Vec<bool>,
    seen_ups: Vec<u64>,
}

/// What one heal of the records did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordHealReport {
    /// The head the set agrees on now.
    pub head: CommitId,
    /// Bricks brought to it.
    pub synced: Vec<String>,
    /// Bricks that were down.
    pub down: Vec<String>,
}

/// One brick's record log, for `heal info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBrickInfo {
    pub brick: String,
    pub up: bool,
    /// Its head seq (None when down).
    pub head_seq: Option<u64>,
    /// How many commits it is behind the newest head among the set's
    /// bricks that are up (None when down); a brick mid-sync or on another
    /// branch counts as behind by the newest head's seq.
    pub backlog: Option<u64>,
    pub syncing: bool,
}

/// The records of one volume over the bricks of its first set.
pub struct ReplicatedRecords {
    volume: String,
    volume_id: u32,
    links: Vec<Arc<BrickLink>>,
    quorum: Quorum,
    owner: u64,
    /// Longest wait one `RecordChanges` call asks for (under the
    /// transport's request timeout).
    max_wait_ms: u32,
    seq: tokio::sync::Mutex<Sequencer>,
    view: Mutex<ReadView>,
    next: AtomicUsize,
}

impl std::fmt::Debug for ReplicatedRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedRecords")
            .field("volume", &self.volume)
            .field("links", &self.links)
            .finish()
    }
}

fn rec_err(e: VolumeError) -> RecordError {
    RecordError::Volume(Box::new(e))
}

fn random_nonzero() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

fn to_wire(op: &RecordOp) -> RecordOpWire {
    RecordOpWire {
        key: op.key.clone(),
        expect: match op.expect {
            Expect::Any => RecordExpect::Any,
            Expect::Absent => RecordExpect::Absent,
            Expect::Version(v) => RecordExpect::Version(v),
        },
        value: op.value.clone(),
    }
}

/// What one commit round did.
enum Sent {
    /// A quorum applied it at this seq.
    Acked(u64),
    /// Op `index`'s guard failed (`found`: the version stored).
    Conflict(u32, Option<u64>),
    /// Applied nowhere: try again (after a pause if another client took
    /// the role).
    Retry { stale: bool },
    /// Applied on too few bricks, or lost in transit: it may or may not be
    /// in the log.
    Unsure(CommitId),
}

/// Why taking the sequencer role failed.
enum LeadFail {
    /// Another client holds a higher ballot: back off and try again.
    Contended,
    Failed(VolumeError),
}

impl ReplicatedRecords {
    /// The bricks the records live on (the first set's), in set order.
    pub fn links(&self) -> &[Arc<BrickLink>] {
        &self.links
    }

    /// The records of `spec`'s volume over `links`, the bricks of its
    /// first set in set order; `owner` is this client's random id.
    pub fn new(
        spec: &VolumeSpec,
        links: Vec<Arc<BrickLink>>,
        owner: u64,
    ) -> crate::Result<ReplicatedRecords> {
        let quorum = Quorum::from_spec(spec, links.len())?;
        let timeout = crate::client::ping_timeout(spec)?;
        let max_wait_ms = u32::try_from((timeout / 2).as_millis()).unwrap_or(u32::MAX);
        let n = links.len();
        Ok(ReplicatedRecords {
            volume: spec.name.clone(),
            volume_id: spec.id,
            quorum,
            owner,
            max_wait_ms,
            seq: tokio::sync::Mutex::new(Sequencer {
                ballot: 0,
                head: RecordHead::default(),
                in_step: vec![false; n],
                seen_ups: vec![0; n],
            }),
            view: Mutex::new(ReadView {
                newest: 0,
                stale: vec![false; n],
                seen_ups: vec![u64::MAX; n],
            }),
            links,
            next: AtomicUsize::new(0),
        })
    }

    fn view(&self) -> MutexGuard<'_, ReadView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn up(&self) -> Vec<bool> {
        self.links.iter().map(|l| l.is_up()).collect()
    }

    fn ups(&self) -> Vec<u64> {
        self.links.iter().map(|l| l.ups()).collect()
    }

    fn no_quorum(&self, op: &'static str, ok: &[bool]) -> VolumeError {
        VolumeError::NoQuorum {
            volume: self.volume.clone(),
            op,
            need: self.quorum.need,
            set: self.links.len(),
            up: ok.iter().filter(|b| **b).count(),
        }
    }

    fn records_err(&self, op: &'static str, detail: String) -> VolumeError {
        VolumeError::Records {
            volume: self.volume.clone(),
            op,
            detail,
        }
    }

    async fn call(&self, i: usize, req: Request) -> Result<Response, CallFail> {
        self.links[i].call(req, Payload::None).await.map(|(r, _)| r)
    }

    async fn fan_out(&self, targets: &[usize], mk: impl Fn(usize) -> Request) -> Answers {
        let mut js = JoinSet::new();
        for &i in targets {
            let req = mk(i);
            let link = self.links[i].clone();
            js.spawn(async move { (i, link.call(req, Payload::None).await.map(|(r, _)| r)) });
        }
        let mut out = Vec::with_capacity(targets.len());
        while let Some(r) = js.join_next().await {
            if let Ok(x) = r {
                out.push(x);
            }
        }
        out
    }

    async fn heads(
        &self,
        targets: &[usize],
        op: HeadOp,
        ballot: u64,
    ) -> Vec<(usize, bool, RecordHead)> {
        let vol = self.volume_id;
        self.fan_out(targets, |_| {
            Request::RecordHead(RecordHeadReq {
                volume: vol,
                op,
                ballot,
            })
        })
        .await
        .into_iter()
        .filter_map(|(i, a)| match a {
            Ok(Response::RecordHead(h)) => Some((i, h.refused, h.head)),
            _ => None,
        })
        .collect()
    }

    /// Takes the sequencer role: a quorum promises a new ballot, the
    /// authoritative head is picked from their heads, and the bricks that
    /// promised are brought to it.
    async fn lead(&self, g: &mut Sequencer) -> Result<Vec<String>, LeadFail> {
        g.ballot = 0;
        let ups = self.ups();
        let up = self.up();
        if !self.quorum.met(&up) {
            return Err(LeadFail::Failed(self.no_quorum("record commit", &up)));
        }
        let upi: Vec<usize> = (0..up.len()).filter(|&i| up[i]).collect();
        let known = self.heads(&upi, HeadOp::Query, 0).await;
        let top = known.iter().map(|(_, _, h)| h.promised).max().unwrap_or(0);
        // Ballots are unique per client: a round number over our id.
        let ballot = (((top >> 32) + 1) << 32) | (self.owner & 0xffff_ffff).max(1);
        let answers = self.heads(&upi, HeadOp::Promise, ballot).await;
        let mut granted = vec![false; self.links.len()];
        let mut refused = false;
        for (i, r, _) in &answers {
            granted[*i] = !r;
            refused |= *r;
        }
        if !self.quorum.met(&granted) {
            return Err(if refused {
                LeadFail::Contended
            } else {
                LeadFail::Failed(self.no_quorum("record commit", &granted))
            });
        }
        // Bricks mid-sync hold partial records: they cannot vouch for the
        // log, so the others that promised must make a quorum themselves.
        let whole: Vec<(usize, RecordHead)> = answers
            .iter()
            .filter(|(_, r, h)| !r && !h.syncing())
            .map(|(i, _, h)| (*i, *h))
            .collect();
        let mut voters = vec![false; self.links.len()];
        for (i, _) in &whole {
            voters[*i] = true;
        }
        if !self.quorum.met(&voters) {
            return Err(LeadFail::Failed(self.records_err(
                "record commit",
                "too few bricks outside a sync to pick the record log; run `stretto volume heal`"
                    .into(),
            )));
        }
        let Some(&(src, auth)) = whole
            .iter()
            .max_by_key(|(i, h)| (h.ballot, h.id.seq, std::cmp::Reverse(*i)))
        else {
            return Err(LeadFail::Failed(self.no_quorum("record commit", &voters)));
        };
        let mut in_step = vec![false; self.links.len()];
        let mut synced = Vec::new();
        let mut contended = false;
        for (i, _, h) in answers.iter().filter(|(_, r, _)| !r) {
            if !h.syncing() && h.id == auth.id {
                in_step[*i] = true;
                continue;
            }
            match self.sync_brick(src, *i, *h, auth, ballot).await {
                Ok(()) => {
                    in_step[*i] = true;
                    synced.push(self.links[*i].addr().to_owned());
                }
                Err(LeadFail::Contended) => contended = true,
                Err(LeadFail::Failed(e)) => {
                    tracing::warn!(volume = %self.volume, brick = self.links[*i].addr(), error = %e, "could not bring a brick's records in step");
                }
            }
        }
        if !self.quorum.met(&in_step) {
            return Err(if contended {
                LeadFail::Contended
            } else {
                LeadFail::Failed(self.no_quorum("record commit", &in_step))
            });
        }
        g.ballot = ballot;
        g.head = auth;
        g.in_step = in_step;
        g.seen_ups = ups;
        self.saw_head(auth.id.seq);
        Ok(synced)
    }

    /// Makes brick `dst` (at `dst_head`) hold what `src` holds at `auth`:
    /// the keys changed since `dst`'s head if `src`'s log contains it,
    /// else everything.
    async fn sync_brick(
        &self,
        src: usize,
        dst: usize,
        dst_head: RecordHead,
        auth: RecordHead,
        ballot: u64,
    ) -> Result<(), LeadFail> {
        let vol = self.volume_id;
        let bad = |d: String| LeadFail::Failed(self.records_err("record heal", d));
        let mut keys: Option<BTreeSet<Vec<u8>>> = None;
        if !dst_head.syncing() {
            let mut set = BTreeSet::new();
            let mut since = dst_head.id.seq;
            let mut since_tag = dst_head.id.tag;
            let mut prefix = true;
            while since < auth.id.seq {
                let r = self
                    .call(
                        src,
                        Request::RecordChanges(RecordChangesReq {
                            volume: vol,
                            limit: MAX_RECORD_ENTRIES as u32,
                            since,
                            since_tag,
                            wait_ms: 0,
                        }),
                    )
                    .await;
                match r {
                    Ok(Response::RecordChanges(c)) if c.status == FeedStatus::Ok => {
                        let Some(last) = c.changes.last().map(|c| c.seq) else {
                            break;
                        };
                        set.extend(c.changes.into_iter().map(|c| c.key));
                        since = last;
                        since_tag = 0;
                    }
                    Ok(Response::RecordChanges(_)) => {
                        prefix = false;
                        break;
                    }
                    other => return Err(bad(format!("feed of the source: {other:?}"))),
                }
            }
            if prefix && since >= auth.id.seq {
                keys = Some(set);
            }
        }
        // The source's records at `auth`, as absolute entries.
        let mut entries: Vec<RecordEntry> = Vec::new();
        match &keys {
            Some(keys) => {
                for k in keys {
                    match self
                        .call(
                            src,
                            Request::RecordGet(RecordGetReq {
                                volume: vol,
                                key: k.clone(),
                            }),
                        )
                        .await
                    {
                        // Another sequencer moved the source on.
                        Ok(Response::RecordGet(g)) if g.head_seq != auth.id.seq => {
                            return Err(LeadFail::Contended)
                        }
                        Ok(Response::RecordGet(g)) => entries.push(match g.record {
                            Some(r) => RecordEntry {
                                key: k.clone(),
                                version: r.version,
                                value: Some(r.value),
                            },
                            None => RecordEntry {
                                key: k.clone(),
                                version: 0,
                                value: None,
                            },
                        }),
                        other => return Err(bad(format!("source moved or failed: {other:?}"))),
                    }
                }
            }
            None => {
                let mut after = Vec::new();
                loop {
                    let r = self
                        .call(
                            src,
                            Request::RecordList(RecordListReq {
                                volume: vol,
                                limit: MAX_RECORD_ENTRIES as u32,
                                prefix: Vec::new(),
                                after: after.clone(),
                            }),
                        )
                        .await;
                    match r {
                        Ok(Response::RecordList(l)) if l.head_seq != auth.id.seq => {
                            return Err(LeadFail::Contended)
                        }
                        Ok(Response::RecordList(l)) => {
                            if let Some(e) = l.entries.last() {
                                after = e.key.clone();
                            }
                            let more = l.flags & LIST_MORE != 0 && !l.entries.is_empty();
                            entries.extend(l.entries);
                            if !more {
                                break;
                            }
                        }
                        other => return Err(bad(format!("source moved or failed: {other:?}"))),
                    }
                }
            }
        }
        // The reads above checked the source's head seq; that its head is
        // still the very commit and no newer sequencer reached it since
        // says they all saw the records at `auth`.
        let again = self.heads(&[src], HeadOp::Query, 0).await;
        match again.first() {
            Some((_, _, h)) if h.id == auth.id && h.promised <= ballot && !h.syncing() => {}
            Some(_) => return Err(LeadFail::Contended),
            None => return Err(bad("the source did not answer".into())),
        }
        // Pages, one RVM transaction each; the last one sets the head.
        let mut pages: Vec<Vec<RecordEntry>> = vec![Vec::new()];
        let mut size = 0;
        for e in entries {
            let len = e.encoded_len().max(RECORD_ENTRY_FIXED);
            let last = pages.last_mut().expect("one page");
            if !last.is_empty() && (size + len > SYNC_BUDGET || last.len() == MAX_RECORD_ENTRIES) {
                pages.push(Vec::new());
                size = 0;
            }
            size += len;
            pages.last_mut().expect("one page").push(e);
        }
        let session = random_nonzero();
        let n = pages.len();
        for (p, entries) in pages.into_iter().enumerate() {
            let mut flags = 0;
            if p == 0 {
                flags |= SYNC_BEGIN;
                if keys.is_none() {
                    flags |= SYNC_RESET;
                }
            }
            if p + 1 == n {
                flags |= SYNC_FINISH;
            }
            let r = self
                .call(
                    dst,
                    Request::RecordSync(RecordSyncReq {
                        volume: vol,
                        flags,
                        session,
                        ballot,
                        base: dst_head.id,
                        head: auth.id,
                        head_ballot: auth.ballot,
                        entries,
                    }),
                )
                .await;
            match r {
                Ok(Response::RecordSync(h)) if !h.refused => {}
                // A newer sequencer (or healer) took over.
                Ok(Response::RecordSync(h)) if h.head.promised > ballot => {
                    return Err(LeadFail::Contended)
                }
                other => return Err(bad(format!("sync page refused: {other:?}"))),
            }
        }
        tracing::info!(volume = %self.volume, brick = self.links[dst].addr(), head = auth.id.seq, full = keys.is_none(), "brought a brick's records in step");
        Ok(())
    }

    fn saw_head(&self, seq: u64) {
        let mut v = self.view();
        v.newest = v.newest.max(seq);
    }

    /// Sends one commit of `ops` on our head to the bricks in step.
    async fn send(&self, g: &mut Sequencer, ops: &[RecordOpWire]) -> Result<Sent, RecordError> {
        let up = self.up();
        let targets: Vec<usize> = (0..up.len()).filter(|&i| up[i] && g.in_step[i]).collect();
        let mut mask = vec![false; up.len()];
        for &i in &targets {
            mask[i] = true;
        }
        if !self.quorum.met(&mask) {
            // Bricks went down: take the role again (it re-checks who is
            // up and in step).
            g.ballot = 0;
            return Ok(Sent::Retry { stale: false });
        }
        let req = RecordCommitReq {
            volume: self.volume_id,
            ballot: g.ballot,
            prev: g.head.id,
            tag: random_nonzero(),
            ops: ops.to_vec(),
        };
        if req.encoded_len() > MAX_BODY as usize - 64 {
            return Err(RecordError::Other(format!(
                "commit of {} bytes is over the {MAX_BODY}-byte message limit",
                req.encoded_len()
            )));
        }
        let new = CommitId {
            seq: req.prev.seq + 1,
            tag: req.tag,
        };
        let answers = self
            .fan_out(&targets, |_| Request::RecordCommit(req.clone()))
            .await;
        let mut applied = vec![false; up.len()];
        let mut judged = vec![false; up.len()];
        let mut conflict = None;
        let mut stale = false;
        let mut unsure = false;
        for (i, a) in answers {
            match a {
                Ok(Response::RecordCommit(c)) => match c.outcome {
                    CommitOutcome::Applied => applied[i] = true,
                    CommitOutcome::Conflict { index, found } => {
                        judged[i] = true;
                        conflict = Some((index, found));
                    }
                    CommitOutcome::HeadMismatch => g.in_step[i] = false,
                    CommitOutcome::StaleBallot => stale = true,
                },
                Ok(Response::Error(e)) => {
                    tracing::warn!(volume = %self.volume, brick = self.links[i].addr(), error = %e, "brick refused a record commit");
                    g.in_step[i] = false;
                }
                Ok(other) => {
                    tracing::warn!(volume = %self.volume, brick = self.links[i].addr(), reply = ?other, "unexpected reply to a record commit");
                    g.in_step[i] = false;
                }
                Err(CallFail::Down) => g.in_step[i] = false,
                Err(CallFail::Transport(e)) => {
                    // It may have applied: its head is unknown now.
                    tracing::warn!(volume = %self.volume, brick = self.links[i].addr(), error = %e, "record commit lost");
                    g.in_step[i] = false;
                    unsure = true;
                }
            }
        }
        if applied.iter().any(|a| *a) {
            g.head = RecordHead {
                id: new,
                ballot: g.ballot,
                ..g.head
            };
            for (i, a) in applied.iter().enumerate() {
                if !a {
                    g.in_step[i] = false;
                }
            }
            self.saw_head(new.seq);
            if self.quorum.met(&applied) {
                return Ok(Sent::Acked(new.seq));
            }
            g.ballot = 0;
            return Ok(Sent::Unsure(new));
        }
        if let Some((index, found)) = conflict {
            // Bricks at one head judge alike; but a brick a newer
            // sequencer never reached may still be at our old head, so
            // only a quorum's judgement is the log's.
            if self.quorum.met(&judged) {
                return Ok(Sent::Conflict(index, found));
            }
        }
        g.ballot = 0;
        if unsure {
            return Ok(Sent::Unsure(new));
        }
        Ok(Sent::Retry { stale })
    }

    /// Takes the sequencer role and stamps the log with our ballot (an
    /// empty commit, like a Raft leader's no-op): after it, no log an older
    /// sequencer left on bricks we did not reach can win a later election,
    /// so a commit of ours that is not in the log we picked never will be.
    async fn take_role(&self, g: &mut Sequencer) -> Result<Vec<String>, LeadFail> {
        let synced = self.lead(g).await?;
        if g.head.ballot != g.ballot {
            match self.send(g, &[]).await {
                Ok(Sent::Acked(_)) => {}
                Ok(_) => return Err(LeadFail::Contended),
                Err(e) => {
                    return Err(LeadFail::Failed(
                        self.records_err("record commit", e.to_string()),
                    ))
                }
            }
        }
        Ok(synced)
    }

    /// Is commit `id` in the log we sequence? `None`: cannot tell (the
    /// feed no longer reaches back to it).
    async fn in_log(&self, g: &Sequencer, id: CommitId) -> Option<bool> {
        if id.seq > g.head.id.seq {
            return Some(false);
        }
        if id == g.head.id {
            return Some(true);
        }
        for i in (0..self.links.len()).filter(|&i| g.in_step[i] && self.links[i].is_up()) {
            let r = self
                .call(
                    i,
                    Request::RecordChanges(RecordChangesReq {
                        volume: self.volume_id,
                        limit: 1,
                        since: id.seq,
                        since_tag: id.tag,
                        wait_ms: 0,
                    }),
                )
                .await;
            if let Ok(Response::RecordChanges(c)) = r {
                match c.status {
                    FeedStatus::Ok => return Some(true),
                    FeedStatus::Diverged => return Some(false),
                    // A brick brought in step lately: its feed starts at
                    // its sync; another may reach back further.
                    FeedStatus::Gap => {}
                }
            }
        }
        None
    }

    async fn commit_ops(&self, ops: Vec<RecordOp>) -> Result<u64, RecordError> {
        if ops.len() > MAX_RECORD_OPS {
            return Err(RecordError::Other(format!(
                "a commit holds at most {MAX_RECORD_OPS} ops, not {}",
                ops.len()
            )));
        }
        for op in &ops {
            if op.key.len() > MAX_RECORD_KEY
                || op
                    .value
                    .as_ref()
                    .is_some_and(|v| v.len() > MAX_RECORD_VALUE)
            {
                return Err(RecordError::Other(format!(
                    "record {:?}: keys are at most {MAX_RECORD_KEY} bytes and values {MAX_RECORD_VALUE}",
                    String::from_utf8_lossy(&op.key[..op.key.len().min(64)])
                )));
            }
        }
        let wire: Vec<RecordOpWire> = ops.iter().map(to_wire).collect();
        let mut g = self.seq.lock().await;
        // An earlier try that reached some bricks but not a quorum: once
        // we hold the role again, it is either in the log or dead for good.
        let mut pending: Option<CommitId> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if attempt > MAX_ATTEMPTS {
                return Err(rec_err(self.records_err(
                    "record commit",
                    format!("gave up after {MAX_ATTEMPTS} tries (other clients kept the sequencer role)"),
                )));
            }
            if g.ballot == 0 || g.seen_ups != self.ups() {
                match self.take_role(&mut g).await {
                    Ok(_) => {}
                    Err(LeadFail::Contended) => {
                        backoff(attempt).await;
                        continue;
                    }
                    Err(LeadFail::Failed(e)) => return Err(rec_err(e)),
                }
            }
            if let Some(id) = pending {
                match self.in_log(&g, id).await {
                    Some(true) => return Ok(id.seq),
                    Some(false) => pending = None,
                    None => {
                        return Err(rec_err(self.records_err(
                            "record commit",
                            "the commit reached too few bricks and its fate cannot be told".into(),
                        )))
                    }
                }
            }
            match self.send(&mut g, &wire).await? {
                Sent::Acked(seq) => return Ok(seq),
                Sent::Conflict(index, found) => {
                    let op = ops.get(index as usize).or(ops.first());
                    return Err(match op {
                        Some(op) => RecordError::Conflict {
                            key: op.key.clone(),
                            expected: op.expect,
                            found,
                        },
                        None => RecordError::Other("conflict in an empty commit".into()),
                    });
                }
                Sent::Retry { stale } => {
                    if stale {
                        backoff(attempt).await;
                    }
                }
                Sent::Unsure(id) => pending = Some(id),
            }
        }
    }

    /// Brings every brick of the set that is up to the authoritative
    /// record log (`stretto volume heal`).
    pub async fn heal(&self) -> crate::Result<RecordHealReport> {
        let mut g = self.seq.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.take_role(&mut g).await {
                Ok(synced) => {
                    let down = (0..self.links.len())
                        .filter(|&i| !self.links[i].is_up())
                        .map(|i| self.links[i].addr().to_owned())
                        .collect();
                    return Ok(RecordHealReport {
                        head: g.head.id,
                        synced,
                        down,
                    });
                }
                Err(LeadFail::Contended) if attempt < MAX_ATTEMPTS => backoff(attempt).await,
                Err(LeadFail::Contended) => {
                    return Err(self.records_err(
                        "record heal",
                        "other clients kept the sequencer role".into(),
                    ))
                }
                Err(LeadFail::Failed(e)) => return Err(e),
            }
        }
    }

    /// Each brick's record head and backlog.
    pub async fn info(&self) -> Vec<RecordBrickInfo> {
        let up = self.up();
        let upi: Vec<usize> = (0..up.len()).filter(|&i| up[i]).collect();
        let heads = self.heads(&upi, HeadOp::Query, 0).await;
        let best = heads
            .iter()
            .filter(|(_, _, h)| !h.syncing())
            .max_by_key(|(_, _, h)| (h.ballot, h.id.seq))
            .map(|(_, _, h)| *h);
        (0..self.links.len())
            .map(|i| {
                let h = heads.iter().find(|(j, _, _)| *j == i).map(|(_, _, h)| *h);
                let backlog = h.map(|h| match best {
                    Some(b) if !h.syncing() && h.id == b.id => 0,
                    Some(b) if !h.syncing() && h.ballot == b.ballot && h.id.seq < b.id.seq => {
                        b.id.seq - h.id.seq
                    }
                    Some(b) => b.id.seq.max(1),
                    None => 0,
                });
                RecordBrickInfo {
                    brick: self.links[i].addr().to_owned(),
                    up: h.is_some(),
                    head_seq: h.map(|h| h.id.seq),
                    backlog,
                    syncing: h.is_some_and(|h| h.syncing()),
                }
            })
            .collect()
    }

    /// Bricks reads may use now, best first; refreshes the view when a
    /// brick came back or none is left.
    async fn readers(&self) -> Vec<usize> {
        let ups = self.ups();
        let refresh = {
            let v = self.view();
            v.seen_ups != ups
                || !(0..self.links.len()).any(|i| self.links[i].is_up() && !v.stale[i])
        };
        if refresh {
            self.refresh_view(ups).await;
        }
        let v = self.view();
        let cands: Vec<usize> = (0..self.links.len())
            .filter(|&i| self.links[i].is_up() && !v.stale[i])
            .collect();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..cands.len())
            .map(|k| cands[(start + k) % cands.len()])
            .collect()
    }

    async fn refresh_view(&self, ups: Vec<u64>) {
        let upi: Vec<usize> = (0..self.links.len())
            .filter(|&i| self.links[i].is_up())
            .collect();
        let heads = self.heads(&upi, HeadOp::Query, 0).await;
        let mut v = self.view();
        let newest = heads
            .iter()
            .filter(|(_, _, h)| !h.syncing())
            .map(|(_, _, h)| h.id.seq)
            .max()
            .unwrap_or(0)
            .max(v.newest);
        v.newest = newest;
        for i in 0..self.links.len() {
            v.stale[i] = match heads.iter().find(|(j, _, _)| *j == i) {
                Some((_, _, h)) => h.syncing() || h.id.seq < newest,
                None => true,
            };
        }
        v.seen_ups = ups;
    }

    /// A reply from brick `i` at `head_seq`: usable unless it is behind
    /// what this client has seen (then the brick is marked stale).
    fn fresh(&self, i: usize, head_seq: u64) -> bool {
        let mut v = self.view();
        if head_seq < v.newest {
            v.stale[i] = true;
            return false;
        }
        v.newest = head_seq;
        true
    }

    fn no_reader(&self) -> RecordError {
        rec_err(self.no_quorum("record read", &self.up()))
    }

    async fn get_record(&self, key: &[u8]) -> Result<Option<Record>, RecordError> {
        for _round in 0..2 {
            for i in self.readers().await {
                let r = self
                    .call(
                        i,
                        Request::RecordGet(RecordGetReq {
                            volume: self.volume_id,
                            key: key.to_vec(),
                        }),
                    )
                    .await;
                if let Ok(Response::RecordGet(g)) = r {
                    if self.fresh(i, g.head_seq) {
                        return Ok(g.record.map(|r| Record {
                            version: r.version,
                            value: r.value,
                        }));
                    }
                }
            }
        }
        Err(self.no_reader())
    }

    async fn list_records(
        &self,
        prefix: &[u8],
        after: &[u8],
        limit: usize,
    ) -> Result<Listing, RecordError> {
        for _round in 0..2 {
            'brick: for i in self.readers().await {
                let mut out: Listing = Vec::new();
                let mut from = after.to_vec();
                loop {
                    let want = (limit - out.len()).min(MAX_RECORD_ENTRIES);
                    if want == 0 {
                        return Ok(out);
                    }
                    let r = self
                        .call(
                            i,
                            Request::RecordList(RecordListReq {
                                volume: self.volume_id,
                                limit: want as u32,
                                prefix: prefix.to_vec(),
                                after: from.clone(),
                            }),
                        )
                        .await;
                    let Ok(Response::RecordList(l)) = r else {
                        continue 'brick;
                    };
                    if !self.fresh(i, l.head_seq) {
                        continue 'brick;
                    }
                    let more = l.flags & LIST_MORE != 0 && !l.entries.is_empty();
                    for e in l.entries {
                        from = e.key.clone();
                        out.push((
                            e.key,
                            Record {
                                version: e.version,
                                value: e.value.unwrap_or_default(),
                            },
                        ));
                    }
                    if !more {
                        return Ok(out);
                    }
                }
            }
        }
        Err(self.no_reader())
    }

    /// The feed after `since`; with a non-zero `since_tag` only if the
    /// brick's log holds that very commit (else a gap).
    async fn feed(
        &self,
        since: u64,
        since_tag: u64,
        limit: usize,
        wait_ms: u32,
    ) -> Result<(Vec<Change>, u64), RecordError> {
        for i in self.readers().await {
            let r = self
                .call(
                    i,
                    Request::RecordChanges(RecordChangesReq {
                        volume: self.volume_id,
                        limit: limit.clamp(1, MAX_RECORD_ENTRIES) as u32,
                        since,
                        since_tag,
                        wait_ms: wait_ms.min(self.max_wait_ms),
                    }),
                )
                .await;
            match r {
                Ok(Response::RecordChanges(c)) => match c.status {
                    FeedStatus::Ok => {
                        self.saw_head(c.newest);
                        let changes = c
                            .changes
                            .into_iter()
                            .map(|e| Change {
                                seq: e.seq,
                                key: e.key,
                            })
                            .collect();
                        return Ok((changes, c.newest));
                    }
                    FeedStatus::Gap | FeedStatus::Diverged => {
                        return Err(RecordError::FeedGap {
                            asked: since,
                            oldest: c.oldest,
                        })
                    }
                },
                _ => continue,
            }
        }
        Err(self.no_reader())
    }

    /// The newest head among the bricks reads may use, if they agree on
    /// the commit at that sequence number.
    async fn feed_head_pos(&self) -> Result<Option<FeedPos>, RecordError> {
        let readers = self.readers().await;
        let heads = self.heads(&readers, HeadOp::Query, 0).await;
        let whole = || heads.iter().filter(|(_, _, h)| !h.syncing());
        let Some(top) = whole().map(|(_, _, h)| h.id).max_by_key(|id| id.seq) else {
            return Err(self.no_reader());
        };
        if whole().any(|(_, _, h)| h.id.seq == top.seq && h.id.tag != top.tag) {
            return Ok(None);
        }
        // Reads from now on come from bricks at least this new.
        self.saw_head(top.seq);
        Ok(Some(FeedPos {
            seq: top.seq,
            tag: top.tag,
        }))
    }
}

async fn backoff(attempt: u32) {
    let ms = rand::random::<u64>() % (2 + 3 * attempt.min(10) as u64) + 1;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

impl RecordStore for ReplicatedRecords {
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<Record>, RecordError>> {
        Box::pin(self.get_record(key))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a [u8],
        after: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, Result<Listing, RecordError>> {
        Box::pin(self.list_records(prefix, after, limit))
    }

    fn commit(&self, ops: Vec<RecordOp>) -> BoxFuture<'_, Result<u64, RecordError>> {
        Box::pin(self.commit_ops(ops))
    }

    fn changes(
        &self,
        since: u64,
        limit: usize,
        wait_ms: u32,
    ) -> BoxFuture<'_, Result<(Vec<Change>, u64), RecordError>> {
        Box::pin(self.feed(since, 0, limit, wait_ms))
    }

    fn feed_head(&self) -> BoxFuture<'_, Result<Option<FeedPos>, RecordError>> {
        Box::pin(self.feed_head_pos())
    }

    fn changes_from(
        &self,
        from: FeedPos,
        limit: usize,
        wait_ms: u32,
    ) -> BoxFuture<'_, Result<(Vec<Change>, u64), RecordError>> {
        if from.tag == 0 {
            // Tag 0 asks for no check: refuse rather than trust it.
            return Box::pin(async move { Err(from.not_found()) });
        }
        Box::pin(self.feed(from.seq, from.tag, limit, wait_ms))
    }
}
