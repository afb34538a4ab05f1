//! `stretto brick serve`: the request handler over one brick's storage.
//!
//! Each request is checked for meaning here (the wire decoder checked its
//! syntax), then turned into object-store or RVM calls. A request that is
//! wrong gets an error reply and touches nothing. Write data arrive in a
//! buffer of the store's own registered pool (the transport reads the socket
//! straight into it) and that same buffer goes to io_uring.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use storage::chunkmeta::RvmChunkMeta;
use storage::objects::{ChunkId, Fid, ObjectStore, StoreError, StoreOptions};
use storage::rvm::{map::PMap, CommitMode, Rvm};
use transport::wire::{
    BrickStats, ChunkEntry, ChunkList, DataRef, ErrorCode, ErrorReply, GetVolConfig, ListChunksReq,
    ObjectId, PutVolConfig, ReadBlocksReply, ReadReply, ScrubCounts, ScrubStatusReply,
    ScrubStatusReq, StatReply, VerifyReq, VolConfig, WriteReply, CHUNKS_MORE, FLAG_FUA,
    MAX_CHUNK_ENTRIES, SCRUB_FOUND, SCRUB_PUT,
};
use transport::{
    BoxFuture, ClientOptions, Handler, Request, Response, Secret, ServerOptions, ServerPayload,
    TcpClient,
};

use crate::integrity::Integrity;
use crate::layout::{self, BrickDir, BrickInfo};
use crate::lease::Leases;
use crate::marks::Marks;
use crate::records::Records;
use crate::stats::{Counters, StatsReport};
use crate::BrickError;

/// RVM root slot of the volume-configuration map (volume id → generation +
/// opaque volfile bytes).
pub const VOLCONFIG_ROOT: u32 = 2;

/// RVM root slot of the last-scrub map (volume id u32 LE → the 56-byte
/// `ScrubCounts` of the volume's last scrub run, as `wire::ScrubCounts`
/// draws it).
pub const SCRUB_ROOT: u32 = 8;

/// Largest single read or write a request may ask for (the transport's data
/// limit).
pub const MAX_IO: u32 = transport::wire::MAX_DATA;

/// One opened brick: its metadata, object store and counters.
pub struct Brick {
    info: BrickInfo,
    dir: BrickDir,
    rvm: Arc<Rvm>,
    store: ObjectStore,
    /// The store's chunk metadata, also read directly to list chunks.
    meta: Arc<RvmChunkMeta>,
    volconfig: PMap,
    /// Last scrub counts per volume (`SCRUB_ROOT`).
    scrubs: PMap,
    leases: Leases,
    marks: Marks,
    /// Per-block CRC tables beside the data, and the locks that keep them
    /// in step with it.
    integrity: Integrity,
    records: Records,
    counters: Counters,
}

impl std::fmt::Debug for Brick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Brick")
            .field("id", &self.info.id)
            .field("dir", &self.dir.root())
            .finish()
    }
}

fn chunk_of(o: &ObjectId) -> ChunkId {
    ChunkId::new(
        Fid {
            volume: o.volume,
            vnode: o.vnode,
            unique: o.unique,
        },
        o.chunk,
    )
}

fn err(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply {
        code,
        message: message.into(),
    })
}

fn store_reply(e: &StoreError) -> ErrorReply {
    let code = match e {
        StoreError::NoSpace { .. } => ErrorCode::NoSpace,
        StoreError::Invalid { .. } => ErrorCode::Invalid,
        _ => ErrorCode::Io,
    };
    ErrorReply::new(code, e.to_string())
}

fn store_err(e: &StoreError) -> Response {
    Response::Error(store_reply(e))
}

impl Brick {
    /// Opens the brick in `dir`: checks its layout, recovers its RVM (replays
    /// the log after a crash) and starts the object store.
    pub fn open(dir: &Path) -> Result<Brick, BrickError> {
        let bdir = BrickDir::new(dir);
        let info = layout::read_info(&bdir)?;
        let rvm_dir = bdir.rvm();
        let rvm =
            Rvm::open(&rvm_dir, &layout::rvm_options()).map_err(|source| BrickError::Rvm {
                path: rvm_dir.clone(),
                source,
            })?;
        let rvm = Arc::new(rvm);
        let rvm_err = |source| BrickError::Rvm {
            path: rvm_dir.clone(),
            source,
        };
        let meta = Arc::new(RvmChunkMeta::open(rvm.clone()).map_err(rvm_err)?);
        let volconfig = PMap::open_or_create(&rvm, VOLCONFIG_ROOT).map_err(rvm_err)?;
        let scrubs = PMap::open_or_create(&rvm, SCRUB_ROOT).map_err(rvm_err)?;
        let leases = Leases::open(rvm.clone()).map_err(rvm_err)?;
        let marks = Marks::open(rvm.clone()).map_err(rvm_err)?;
        let records = Records::open(rvm.clone()).map_err(rvm_err)?;
        let store =
            ObjectStore::open(dir, meta.clone(), StoreOptions::default()).map_err(|source| {
                BrickError::Store {
                    path: dir.to_path_buf(),
                    source,
                }
            })?;
        let integrity = Integrity::open(dir).map_err(|source| BrickError::Io {
            what: "open the crc tables",
            path: dir.join("crc"),
            source,
        })?;
        Ok(Brick {
            info,
            dir: bdir,
            integrity,
            rvm,
            store,
            meta,
            volconfig,
            scrubs,
            leases,
            marks,
            records,
            counters: Counters::default(),
        })
    }

    /// The brick's identity.
    pub fn info(&self) -> &BrickInfo {
        &self.info
    }

    /// The namespace records (for in-process use and tests).
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// The object store (for in-process use, e.g. benchmarks).
    pub fn store(&self) -> &ObjectStore {
        &self.store
    }

    /// Makes everything acknowledged durable, then applies the RVM log to
    /// its segment (a clean stop leaves an empty log).
    pub fn shutdown(&self) -> Result<(), BrickError> {
        let rvm_err = |source| BrickError::Rvm {
            path: self.dir.rvm(),
            source,
        };
        self.store
            .flush()
            .wait()
            .map_err(|source| BrickError::Store {
                path: self.dir.root().to_path_buf(),
                source,
            })?;
        self.integrity.flush().map_err(|source| BrickError::Io {
            what: "sync the crc tables",
            path: self.dir.root().join("crc"),
            source,
        })?;
        self.rvm.flush().map_err(rvm_err)?;
        self.rvm.truncate().map_err(rvm_err)
    }

    /// `Read` and `ReadBlocks`: the data, checked at rest against the
    /// chunk's CRC table; `ReadBlocks` also gets the CRC of each grid piece.
    async fn read(
        &self,
        r: transport::wire::ReadReq,
        payload: &mut ServerPayload,
        blocks: bool,
    ) -> Response {
        if r.len > MAX_IO {
            return err(ErrorCode::TooLarge, format!("read of {} bytes", r.len));
        }
        if r.len > payload.sink_capacity() {
            return err(
                ErrorCode::Invalid,
                format!(
                    "read of {} bytes into a buffer of {}",
                    r.len,
                    payload.sink_capacity()
                ),
            );
        }
        let chunk = chunk_of(&r.object);
        let (buf, crcs) = match self
            .integrity
            .read(&self.store, chunk, r.offset, r.len as u64)
            .await
        {
            Ok(x) => x,
            Err(e) => return Response::Error(e),
        };
        let len = buf.len() as u32;
        if let Err(e) = payload.push_from(buf).await {
            return err(ErrorCode::Internal, e.to_string());
        }
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .read_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        // The transport fills in where the data went.
        if blocks {
            Response::ReadBlocks(ReadBlocksReply {
                data: DataRef::None,
                crcs,
            })
        } else {
            // A plain read's whole-data CRC is not computed (0).
            Response::Read(ReadReply {
                data: DataRef::None,
                crc32c: 0,
            })
        }
    }

    /// `Write` and `WriteBlocks` (`piece_crcs`: the writer's CRC per grid
    /// piece, checked before anything touches the disk).
    async fn write(
        &self,
        w: transport::wire::WriteReq,
        piece_crcs: Option<Vec<u32>>,
        payload: &mut ServerPayload,
    ) -> Response {
        let buf = match payload.data().await {
            Ok(buf) => buf,
            Err(e) => return err(ErrorCode::Invalid, e.to_string()),
        };
        // Fencing: checked after the data is in (the stream must be drained
        // either way), before anything touches the disk.
        if let Err((code, msg)) = self.leases.check(&w.object, w.epoch) {
            return err(code, msg);
        }
        let len = buf.len() as u32;
        if let Err(e) = self
            .integrity
            .write(
                &self.store,
                chunk_of(&w.object),
                w.offset,
                buf,
                piece_crcs.as_deref(),
            )
            .await
        {
            return Response::Error(e);
        }
        if w.flags & FLAG_FUA != 0 {
            if let Err(e) = self.flush_all().await {
                return Response::Error(e);
            }
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters
            .written_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        let reply = WriteReply { written: len };
        if piece_crcs.is_some() {
            Response::WriteBlocks(reply)
        } else {
            Response::Write(reply)
        }
    }

    /// The store's flush, then the CRC tables' (data before its CRCs).
    async fn flush_all(&self) -> Result<(), ErrorReply> {
        self.store.flush().await.map_err(|e| store_reply(&e))?;
        self.integrity
            .flush()
            .map_err(|e| ErrorReply::new(ErrorCode::Io, format!("syncing crc tables: {e}")))
    }

    /// `Punch` or `Zero` (`zero`), keeping the CRC table in step.
    async fn range(&self, r: &transport::wire::RangeReq, zero: bool) -> Response {
        match self
            .integrity
            .range(&self.store, chunk_of(&r.object), r.offset, r.len, zero)
            .await
        {
            Ok(()) if zero => Response::Zero,
            Ok(()) => Response::Punch,
            Err(e) => Response::Error(e),
        }
    }

    /// `Verify`: scrub a range at rest.
    async fn verify(&self, v: &VerifyReq) -> Response {
        if v.len > MAX_IO {
            return err(ErrorCode::TooLarge, format!("verify of {} bytes", v.len));
        }
        match self
            .integrity
            .verify(&self.store, chunk_of(&v.object), v.offset, v.len as u64)
            .await
        {
            Ok(r) => Response::Verify(r),
            Err(e) => Response::Error(e),
        }
    }

    fn stat(&self, object: &ObjectId) -> Response {
        let chunk = chunk_of(object);
        match self.store.stat(chunk) {
            Err(e) => store_err(&e),
            Ok(None) => err(ErrorCode::NotFound, format!("no object {chunk}")),
            Ok(Some(meta)) => {
                use std::os::unix::fs::MetadataExt;
                let allocated = std::fs::metadata(self.store.chunk_path(chunk))
                    .map(|m| m.blocks() * 512)
                    .unwrap_or(0);
                Response::Stat(StatReply {
                    size: meta.size,
                    allocated,
                    version: meta.version,
                })
            }
        }
    }

    /// The chunks of one volume from `start` on, in id order. The whole
    /// metadata map is scanned per call: listing is rare (full heals only)
    /// and this keeps the map's key order out of the reply's meaning.
    fn list_chunks(&self, l: &ListChunksReq) -> Response {
        let all = match self.meta.all() {
            Ok(all) => all,
            Err(e) => return err(ErrorCode::Io, e.to_string()),
        };
        let start = ObjectId {
            volume: l.volume,
            ..l.start
        };
        let mut chunks: Vec<ChunkEntry> = all
            .into_iter()
            .filter(|(c, _)| c.fid.volume == l.volume)
            .map(|(c, m)| ChunkEntry {
                object: ObjectId {
                    volume: c.fid.volume,
                    vnode: c.fid.vnode,
                    unique: c.fid.unique,
                    chunk: c.index,
                },
                size: m.size,
                version: m.version,
            })
            .filter(|e| e.object >= start)
            .collect();
        chunks.sort();
        let mut flags = 0;
        if chunks.len() > MAX_CHUNK_ENTRIES {
            chunks.truncate(MAX_CHUNK_ENTRIES);
            flags |= CHUNKS_MORE;
        }
        Response::ListChunks(ChunkList { flags, chunks })
    }

    fn get_volconfig(&self, g: &GetVolConfig) -> Response {
        match self.volconfig.get(&*self.rvm, &g.volume.to_le_bytes()) {
            Err(e) => err(ErrorCode::Io, e.to_string()),
            Ok(None) => err(
                ErrorCode::NotFound,
                format!("no configuration for volume {}", g.volume),
            ),
            Ok(Some(rec)) if rec.len() >= 8 => {
                let mut gen = [0u8; 8];
                gen.copy_from_slice(&rec[..8]);
                Response::VolConfig(VolConfig {
                    generation: u64::from_le_bytes(gen),
                    config: rec[8..].to_vec(),
                })
            }
            Ok(Some(_)) => err(ErrorCode::Internal, "volume configuration record is short"),
        }
    }

    fn put_volconfig(&self, p: PutVolConfig) -> Response {
        let key = p.volume.to_le_bytes();
        // Generations only move forward: a stale writer cannot undo a newer
        // configuration.
        if let Ok(Some(rec)) = self.volconfig.get(&*self.rvm, &key) {
            if rec.len() >= 8 {
                let mut gen = [0u8; 8];
                gen.copy_from_slice(&rec[..8]);
                let stored = u64::from_le_bytes(gen);
                if p.generation <= stored {
                    return err(
                        ErrorCode::StaleEpoch,
                        format!(
                            "volume {} is at generation {stored}, not below {}",
                            p.volume, p.generation
                        ),
                    );
                }
            }
        }
        let mut rec = Vec::with_capacity(8 + p.config.len());
        rec.extend_from_slice(&p.generation.to_le_bytes());
        rec.extend_from_slice(&p.config);
        let mut tx = self.rvm.begin();
        if let Err(e) = self.volconfig.insert(&mut tx, &key, &rec) {
            return err(ErrorCode::Io, e.to_string());
        }
        match tx.commit(CommitMode::Flush) {
            Ok(()) => Response::VolConfigStored {
                generation: p.generation,
            },
            Err(e) => err(ErrorCode::Io, e.to_string()),
        }
    }

    /// `ScrubStatus`: the volume's last scrub counts, or store new ones.
    fn scrub_status(&self, q: &ScrubStatusReq) -> Response {
        let key = q.volume.to_le_bytes();
        if q.op == SCRUB_PUT {
            let mut tx = self.rvm.begin();
            if let Err(e) = self.scrubs.insert(&mut tx, &key, &q.counts.to_bytes()) {
                return err(ErrorCode::Io, e.to_string());
            }
            if let Err(e) = tx.commit(CommitMode::Flush) {
                return err(ErrorCode::Io, e.to_string());
            }
            return Response::ScrubStatus(ScrubStatusReply {
                flags: SCRUB_FOUND,
                counts: q.counts,
            });
        }
        match self.scrubs.get(&*self.rvm, &key) {
            Err(e) => err(ErrorCode::Io, e.to_string()),
            Ok(None) => Response::ScrubStatus(ScrubStatusReply {
                flags: 0,
                counts: ScrubCounts::default(),
            }),
            Ok(Some(rec)) => match ScrubCounts::from_bytes(&rec) {
                Some(counts) => Response::ScrubStatus(ScrubStatusReply {
                    flags: SCRUB_FOUND,
                    counts,
                }),
                None => err(ErrorCode::Internal, "scrub record has the wrong length"),
            },
        }
    }

    fn brick_stats(&self) -> Response {
        let c = &self.counters;
        let (capacity, free) = disk_space(self.dir.root());
        Response::BrickStats(BrickStats {
            uptime_secs: c.uptime().as_secs(),
            requests: c.requests.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            reads: c.reads.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            read_bytes: c.read_bytes.load(Ordering::Relaxed),
            written_bytes: c.written_bytes.load(Ordering::Relaxed),
            capacity_bytes: capacity,
            free_bytes: free,
            latency: c.latency(),
            corrupt_blocks: self.integrity.corrupt_blocks(),
        })
    }

    async fn dispatch(&self, req: Request, payload: &mut ServerPayload) -> Response {
        // Fencing for the changes that carry no data (a write is checked
        // once its data is off the stream).
        let fence = match &req {
            Request::Punch(r) | Request::Zero(r) => Some((r.object, r.epoch)),
            Request::Remove(r) => Some((r.object, r.epoch)),
            _ => None,
        };
        if let Some((object, epoch)) = fence {
            if let Err((code, msg)) = self.leases.check(&object, epoch) {
                return err(code, msg);
            }
        }
        match req {
            Request::Ping(p) => Response::Pong(p),
            Request::Read(r) => self.read(r, payload, false).await,
            Request::ReadBlocks(r) => self.read(r, payload, true).await,
            Request::Write(w) => self.write(w, None, payload).await,
            Request::WriteBlocks(w) => self.write(w.write, Some(w.crcs), payload).await,
            Request::Verify(v) => self.verify(&v).await,
            Request::ScrubStatus(q) => self.scrub_status(&q),
            Request::Punch(r) => self.range(&r, false).await,
            Request::Zero(r) => self.range(&r, true).await,
            Request::Flush(_) => {
                self.counters.flushes.fetch_add(1, Ordering::Relaxed);
                match self.flush_all().await {
                    Ok(()) => Response::Flush,
                    Err(e) => Response::Error(e),
                }
            }
            Request::Stat(o) => self.stat(&o.object),
            Request::Remove(r) => match self
                .integrity
                .remove(&self.store, chunk_of(&r.object))
                .await
            {
                Ok(()) => Response::Remove,
                Err(e) => Response::Error(e),
            },
            Request::GetVolConfig(g) => self.get_volconfig(&g),
            Request::PutVolConfig(p) => self.put_volconfig(p),
            Request::BrickStats => self.brick_stats(),
            Request::Lease(l) => match self.leases.handle(&l) {
                Ok(reply) => Response::Lease(reply),
                Err((code, msg)) => err(code, msg),
            },
            Request::Marks(m) => match self.marks.handle(&m) {
                Ok(reply) => Response::Marks(reply),
                Err((code, msg)) => err(code, msg),
            },
            Request::ListChunks(l) => self.list_chunks(&l),
            Request::RecordGet(r) => Response::RecordGet(self.records.get(&r)),
            Request::RecordList(r) => Response::RecordList(self.records.list(&r)),
            Request::RecordCommit(r) => match self.records.commit(&r) {
                Ok(reply) => Response::RecordCommit(reply),
                Err((code, msg)) => err(code, msg),
            },
            Request::RecordChanges(r) => Response::RecordChanges(self.records.changes(&r).await),
            Request::RecordHead(r) => match self.records.head(&r) {
                Ok(reply) => Response::RecordHead(reply),
                Err((code, msg)) => err(code, msg),
            },
            Request::RecordSync(r) => match self.records.sync(&r) {
                Ok(reply) => Response::RecordSync(reply),
                Err((code, msg)) => err(code, msg),
            },
            Request::Hello(_) | Request::Auth(_) => {
                err(ErrorCode::Invalid, "already authenticated")
            }
        }
    }
}

// The statvfs field types differ between platforms; the casts are needed on some.
#[allow(clippy::unnecessary_cast)]
fn disk_space(path: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable
    // memory of the right type for statvfs to fill.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return (0, 0);
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    let frsize = st.f_frsize as u64;
    (st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize)
}

impl Handler for Brick {
    fn handle<'a>(
        &'a self,
        req: Request,
        payload: &'a mut ServerPayload,
    ) -> BoxFuture<'a, Response> {
        Box::pin(async move {
            let started = Instant::now();
            let resp = self.dispatch(req, payload).await;
            self.counters
                .record(started.elapsed(), matches!(resp, Response::Error(_)));
            resp
        })
    }
}

/// Serves the brick in `dir` on `addr` until SIGTERM or SIGINT, then stops
/// accepting, finishes requests in flight, flushes and exits.
pub async fn serve_until_signal(dir: &Path, addr: SocketAddr) -> Result<(), BrickError> {
    serve_until_signal_via(dir, addr, transport::TransportKind::Tcp).await
}

/// [`serve_until_signal`], also serving RDMA verbs on the same port number
/// (rdma_cm) when `kind` is `rdma` (or an error naming what is missing) or
/// `auto` with a device present (else one log line). TCP is always served:
/// management commands and TCP clients use it.
pub async fn serve_until_signal_via(
    dir: &Path,
    addr: SocketAddr,
    kind: transport::TransportKind,
) -> Result<(), BrickError> {
    let brick = Arc::new(Brick::open(dir)?);
    let secret_path = BrickDir::new(dir).secret();
    let secret = Secret::load(&secret_path).map_err(|source| BrickError::Secret {
        path: secret_path.clone(),
        source,
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BrickError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| BrickError::Listen { addr, source })?;
    let rdma = match kind {
        transport::TransportKind::Tcp => None,
        _ => match transport::rdma::rdma_fabric() {
            Ok(fabric) => match transport::rdma::RdmaListener::bind(fabric, &local.to_string()) {
                Ok(l) => Some(l),
                Err(e) if kind == transport::TransportKind::Rdma => {
                    return Err(BrickError::Rdma {
                        addr,
                        reason: format!("RDMA listener: {e}"),
                    });
                }
                Err(e) => {
                    tracing::warn!("transport auto: serving TCP only: RDMA listener: {e}");
                    None
                }
            },
            Err(e) if kind == transport::TransportKind::Rdma => {
                return Err(BrickError::Rdma {
                    addr,
                    reason: e.to_string(),
                });
            }
            Err(e) => {
                tracing::warn!("transport auto: serving TCP only: {e}");
                None
            }
        },
    };
    tracing::info!(
        brick = %brick.info().id,
        dir = %dir.display(),
        listen = %local,
        direct_io = brick.store().direct_io(),
        "brick serving (transport {})",
        if rdma.is_some() { "tcp and rdma" } else { "tcp" }
    );
    // Ready line on stdout for scripts and tests that start bricks.
    println!("listening on {local}");
    if let Some(l) = &rdma {
        println!("rdma listening on {} ({})", l.local_addr(), l.fabric_name());
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopping = brick.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop requested: finishing requests in flight");
        // Long polls of the change feed answer now rather than hold the stop.
        stopping.records().stop();
        let _ = stop_tx.send(true);
    });
    let opts = ServerOptions {
        pool: Some(brick.store().pool().clone()),
        ..ServerOptions::default()
    };
    let handler: Arc<dyn Handler> = brick.clone();
    let rdma_task = rdma.map(|l| {
        let ropts = ServerOptions {
            pool: Some(brick.store().pool().clone()),
            ..ServerOptions::default()
        };
        tokio::spawn(transport::rdma::serve_rdma(
            l,
            secret.clone(),
            handler.clone(),
            stop_rx.clone(),
            ropts,
        ))
    });
    let served = transport::serve_with(listener, secret, handler, stop_rx, opts).await;
    if let Some(t) = rdma_task {
        let _ = t.await;
    }
    served.map_err(|source| BrickError::Listen { addr, source })?;
    brick.shutdown()?;
    tracing::info!("brick stopped cleanly");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the daemon can only be killed; keep serving.
            std::future::pending::<()>().await;
        }
    }
}

/// Connects to the brick at `addr` with the pool secret in `secret_file`.
pub async fn connect(addr: SocketAddr, secret_file: &Path) -> Result<TcpClient, BrickError> {
    let secret = Secret::load(secret_file).map_err(|source| BrickError::Secret {
        path: secret_file.to_path_buf(),
        source,
    })?;
    TcpClient::connect(&addr.to_string(), secret, ClientOptions::default())
        .await
        .map_err(|source| BrickError::Transport {
            addr: addr.to_string(),
            source,
        })
}

/// `stretto brick stats HOST:PORT`: the brick's counters.
pub async fn fetch_stats(addr: SocketAddr, secret_file: &Path) -> Result<StatsReport, BrickError> {
    let client = connect(addr, secret_file).await?;
    let (resp, _) = client
        .call(Request::BrickStats, transport::Payload::None)
        .await
        .map_err(|source| BrickError::Transport {
            addr: addr.to_string(),
            source,
        })?;
    client.close().await;
    match resp {
        Response::BrickStats(stats) => Ok(StatsReport {
            addr: addr.to_string(),
            stats,
        }),
        Response::Error(e) => Err(BrickError::Refused {
            addr: addr.to_string(),
            message: e.message,
        }),
        other => Err(BrickError::Refused {
            addr: addr.to_string(),
            message: format!("unexpected reply {other:?}"),
        }),
    }
}
