//! `ReplicatedRecords` against a reference model: three clients commit
//! random guarded changes (some with stale guards, some at the same time)
//! on a replica-3 set of in-process bricks while links between clients and
//! bricks are cut (or lose the replies of commits the bricks applied) and
//! restored at random. Every acknowledged commit must
//! match the model (its guards held there, and it applied there), every
//! conflict must be one the model sees too, and a commit that failed
//! otherwise must either be in the log or never be (its marker key tells,
//! once another commit settled the sequencer role). At the end, after a
//! heal, every brick holds exactly the model's records.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use common::{client_opts, spec, InBrick, Pool};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use transport::wire::{RecordListReq, LIST_MORE};
use transport::{
    BoxFuture, Channel, ConnState, Payload, Request, Response, Secret, TcpClient, TransportError,
};
use volume::link::BrickLink;
use volume::records::{Expect, RecordError, RecordOp, RecordStore};
use volume::records_replicated::ReplicatedRecords;
use volume::VolumeKind;

const SEEDS: u64 = 4;

const FINE: u8 = 0;
/// Calls fail before they are sent; the link reads down.
const CUT: u8 = 1;
/// Commits are sent and applied but their replies are lost.
const LOSSY: u8 = 2;

/// A link a test can cut, or make lose commit replies.
struct Faulty {
    inner: TcpClient,
    mode: AtomicU8,
    state: watch::Sender<ConnState>,
}

impl Faulty {
    fn set(&self, mode: u8) {
        let was = self.mode.swap(mode, Ordering::SeqCst);
        let st = if mode == CUT {
            ConnState::Down
        } else {
            ConnState::Up
        };
        if (was == CUT) != (mode == CUT) {
            self.state.send_replace(st);
        }
    }
}

impl Channel for Faulty {
    fn call(
        &self,
        req: Request,
        payload: Payload,
    ) -> BoxFuture<'_, Result<(Response, Payload), TransportError>> {
        Box::pin(async move {
            let opcode = req.opcode();
            let lost = || TransportError::ConnectionLost {
                opcode,
                request_id: 0,
                peer: self.inner.peer().to_owned(),
            };
            match self.mode.load(Ordering::SeqCst) {
                CUT => Err(TransportError::NotConnected {
                    opcode,
                    peer: self.inner.peer().to_owned(),
                    state: ConnState::Down,
                }),
                LOSSY if matches!(req, Request::RecordCommit(_)) => {
                    let _ = self.inner.call(req, payload).await;
                    Err(lost())
                }
                _ => self.inner.call(req, payload).await,
            }
        })
    }

    fn state(&self) -> ConnState {
        if self.mode.load(Ordering::SeqCst) == CUT {
            ConnState::Down
        } else {
            self.inner.state()
        }
    }

    fn watch_state(&self) -> watch::Receiver<ConnState> {
        self.state.subscribe()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.close())
    }
}

async fn faulty_links(
    addrs: &[String],
    secret: &Secret,
) -> (Vec<Arc<BrickLink>>, Vec<Arc<Faulty>>) {
    let mut links = Vec::new();
    let mut chans = Vec::new();
    for a in addrs {
        let inner = TcpClient::connect(a, secret.clone(), client_opts())
            .await
            .expect("connect");
        let f = Arc::new(Faulty {
            inner,
            mode: AtomicU8::new(FINE),
            state: watch::channel(ConnState::Up).0,
        });
        links.push(BrickLink::with_channel(a, f.clone() as Arc<dyn Channel>));
        chans.push(f);
    }
    (links, chans)
}
const STEPS: usize = 120;
const CLIENTS: usize = 3;
const KEYS: usize = 6;

type Model = BTreeMap<Vec<u8>, (u64, Vec<u8>)>;

/// The first op whose guard fails on `m`, with the version found.
fn model_conflict(m: &Model, ops: &[RecordOp]) -> Option<(Vec<u8>, Option<u64>)> {
    for op in ops {
        let found = m.get(&op.key).map(|r| r.0);
        let ok = match op.expect {
            Expect::Any => true,
            Expect::Absent => found.is_none(),
            Expect::Version(v) => found == Some(v),
        };
        if !ok {
            return Some((op.key.clone(), found));
        }
    }
    None
}

fn model_apply(m: &mut Model, ops: &[RecordOp]) {
    for op in ops {
        let cur = m.get(&op.key).map_or(0, |r| r.0);
        match &op.value {
            Some(v) => {
                m.insert(op.key.clone(), (cur + 1, v.clone()));
            }
            None => {
                m.remove(&op.key);
            }
        }
    }
}

fn random_ops(rng: &mut StdRng, m: &Model, keys: &[String], marker: String) -> Vec<RecordOp> {
    let n = rng.gen_range(1..=3);
    let mut ops = Vec::new();
    for _ in 0..n {
        let key = keys[rng.gen_range(0..keys.len())].as_bytes().to_vec();
        let cur = m.get(&key).map(|r| r.0);
        let expect = match rng.gen_range(0..8) {
            0..=3 => match cur {
                Some(v) => Expect::Version(v),
                None => Expect::Absent,
            },
            4 | 5 => Expect::Any,
            6 => Expect::Version(rng.gen_range(1..4)),
            _ => Expect::Absent,
        };
        let value = if rng.gen_range(0..5) == 0 {
            None
        } else {
            Some(format!("v{}", rng.gen::<u16>()).into_bytes())
        };
        ops.push(RecordOp { key, expect, value });
    }
    ops.push(RecordOp {
        key: marker.into_bytes(),
        expect: Expect::Absent,
        value: Some(b"m".to_vec()),
    });
    ops
}

struct World {
    stores: Vec<Arc<ReplicatedRecords>>,
    cuts: Vec<Vec<Arc<Faulty>>>,
    model: Model,
    markers: u64,
}

impl World {
    fn restore_all(&self) {
        for c in self.cuts.iter().flatten() {
            c.set(FINE);
        }
    }

    /// A commit came back with neither success nor conflict: with every
    /// link back, another commit settles the role, then its marker says
    /// whether it is in the log.
    async fn settle(&mut self, ops: &[RecordOp]) {
        self.restore_all();
        self.markers += 1;
        let probe = format!("settle/{}", self.markers);
        let r = self.stores[0]
            .commit(vec![RecordOp {
                key: probe.clone().into_bytes(),
                expect: Expect::Absent,
                value: Some(b"s".to_vec()),
            }])
            .await;
        r.unwrap_or_else(|e| panic!("settling commit failed: {e}"));
        model_apply(
            &mut self.model,
            &[RecordOp {
                key: probe.into_bytes(),
                expect: Expect::Absent,
                value: Some(b"s".to_vec()),
            }],
        );
        let marker = &ops.last().expect("marker").key;
        let there = self.stores[0].get(marker).await.expect("get marker");
        // Careful: the settle commit above was applied to the model after
        // the unknown one; their keys are disjoint, so order does not
        // matter.
        if there.is_some() {
            assert!(
                model_conflict(&self.model, ops).is_none(),
                "a commit whose guards fail in the model is in the log"
            );
            model_apply(&mut self.model, ops);
        }
    }

    async fn check(&mut self, c: usize, ops: Vec<RecordOp>) {
        let r = self.stores[c].commit(ops.clone()).await;
        match r {
            Ok(_) => {
                assert_eq!(
                    model_conflict(&self.model, &ops),
                    None,
                    "acknowledged a commit whose guards fail in the model: {ops:?}"
                );
                model_apply(&mut self.model, &ops);
            }
            Err(RecordError::Conflict { key, found, .. }) => {
                assert_eq!(
                    model_conflict(&self.model, &ops),
                    Some((key, found)),
                    "conflict the model does not see: {ops:?}"
                );
            }
            Err(e) => {
                tracing::info!(error = %e, "commit failed; settling");
                self.settle(&ops).await;
            }
        }
    }
}

async fn brick_listing(addr: &str, secret: &transport::Secret, volume: u32) -> Model {
    let c = TcpClient::connect(addr, secret.clone(), client_opts())
        .await
        .expect("connect");
    let mut out = Model::new();
    let mut after = Vec::new();
    loop {
        let (r, _) = c
            .call(
                Request::RecordList(RecordListReq {
                    volume,
                    limit: 1000,
                    prefix: Vec::new(),
                    after: after.clone(),
                }),
                Payload::None,
            )
            .await
            .expect("list");
        let Response::RecordList(l) = r else {
            panic!("{r:?}")
        };
        for e in &l.entries {
            out.insert(
                e.key.clone(),
                (e.version, e.value.clone().unwrap_or_default()),
            );
        }
        match l.entries.last() {
            Some(e) if l.flags & LIST_MORE != 0 => after = e.key.clone(),
            _ => break,
        }
    }
    c.close().await;
    out
}

async fn run(seed: u64) {
    let pool = Pool::new();
    let mut bricks = Vec::new();
    for i in 0..3 {
        let dir = pool.init_brick(i);
        bricks.push(InBrick::start(&dir, &pool.secret, "127.0.0.1:0").await);
    }
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let spec = spec(
        40 + seed as u32,
        VolumeKind::Replicate { replica: 3 },
        addrs.clone(),
        1 << 20,
    );
    let mut w = World {
        stores: Vec::new(),
        cuts: Vec::new(),
        model: Model::new(),
        markers: 0,
    };
    for c in 0..CLIENTS {
        let (links, cuts) = faulty_links(&addrs, &pool.secret).await;
        w.stores.push(Arc::new(
            ReplicatedRecords::new(&spec, links, 100 + c as u64).expect("store"),
        ));
        w.cuts.push(cuts);
    }
    let keys: Vec<String> = (0..KEYS).map(|k| format!("k{k}")).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    for step in 0..STEPS {
        // Faults: cut or restore one client's link to one brick.
        if rng.gen_range(0..4) == 0 {
            let link = &w.cuts[rng.gen_range(0..CLIENTS)][rng.gen_range(0..3)];
            link.set(match rng.gen_range(0..4) {
                0 => CUT,
                1 => LOSSY,
                _ => FINE,
            });
        }
        if rng.gen_range(0..5) == 0 {
            // Two clients at once, on disjoint keys (both may succeed).
            let a = rng.gen_range(0..CLIENTS);
            let b = (a + 1 + rng.gen_range(0..CLIENTS - 1)) % CLIENTS;
            let ka: Vec<String> = keys[..KEYS / 2].to_vec();
            let kb: Vec<String> = keys[KEYS / 2..].to_vec();
            let oa = random_ops(&mut rng, &w.model, &ka, format!("m/{step}/a"));
            let ob = random_ops(&mut rng, &w.model, &kb, format!("m/{step}/b"));
            let (ra, rb) = tokio::join!(
                w.stores[a].commit(oa.clone()),
                w.stores[b].commit(ob.clone())
            );
            for (r, ops) in [(ra, oa), (rb, ob)] {
                match r {
                    Ok(_) => {
                        assert_eq!(model_conflict(&w.model, &ops), None, "step {step}");
                        model_apply(&mut w.model, &ops);
                    }
                    Err(RecordError::Conflict { key, found, .. }) => {
                        assert_eq!(
                            model_conflict(&w.model, &ops),
                            Some((key, found)),
                            "seed {seed} step {step}: {ops:?}"
                        );
                    }
                    Err(_) => w.settle(&ops).await,
                }
            }
        } else {
            let c = rng.gen_range(0..CLIENTS);
            let ops = random_ops(&mut rng, &w.model, &keys, format!("m/{step}"));
            w.check(c, ops).await;
        }
    }
    w.restore_all();
    let report = w.stores[1].heal().await.expect("heal");
    assert!(report.down.is_empty());
    for a in &addrs {
        let got = brick_listing(a, &pool.secret, spec.id).await;
        assert_eq!(
            got, w.model,
            "seed {seed}: brick {a} differs from the model"
        );
    }
    for c in &w.stores {
        let listed = c.list(b"k", b"", 100).await.expect("list");
        let want: Vec<_> = w
            .model
            .iter()
            .filter(|(k, _)| k.starts_with(b"k"))
            .map(|(k, r)| (k.clone(), r.0, r.1.clone()))
            .collect();
        let got: Vec<_> = listed
            .into_iter()
            .map(|(k, r)| (k, r.version, r.value))
            .collect();
        assert_eq!(got, want);
    }
    for b in bricks {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_records_match_a_model_under_partitions() {
    for seed in 0..SEEDS {
        run(seed).await;
    }
}
