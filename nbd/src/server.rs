//! The tokio adapter: sockets in, state machines in the middle, export calls out.
//!
//! One task per connection; within a connection, one task per command so
//! many requests are in flight and replies go out in completion order, and a
//! writer task that batches replies onto the socket. Protocol decisions are
//! all made by [`crate::handshake`] and [`crate::transmission`]; this module
//! only moves bytes and runs futures.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use iobuf::IoBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::export::{Export, ExportError, ExportSet, ZeroFlags, MAX_REQUEST};
use crate::handshake::{Handshake, HandshakeStep};
use crate::transmission::{Action, Command, Op, Params, ReplyEncoder, Transmission};
use crate::wire::errno;

/// Commands run concurrently per connection before reading more requests.
pub const MAX_IN_FLIGHT: usize = 64;

/// Size of one socket read.
const READ_CHUNK: usize = 256 * 1024;

/// Serves `exports` on `listener` until `shutdown` becomes true (or its
/// sender is dropped). On shutdown: stops accepting, lets every connection
/// finish the commands it has in flight (later requests get ESHUTDOWN), closes
/// the connections, flushes every export, then returns.
pub async fn serve(
    listener: TcpListener,
    exports: Arc<ExportSet>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut conns = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    // Replies are whole messages; Nagle would only delay them.
                    if let Err(e) = sock.set_nodelay(true) {
                        debug!(%peer, error = %e, "set_nodelay failed");
                    }
                    conns.spawn(connection(sock, peer, exports.clone(), shutdown.clone()));
                }
                // Per-connection accept errors (ECONNABORTED, EMFILE) must not
                // stop the server; the next accept may succeed.
                Err(e) => warn!(error = %e, "nbd accept failed"),
            },
            r = shutdown.changed() => {
                if r.is_err() {
                    break;
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    info!(connections = conns.len(), "nbd server shutting down");
    while conns.join_next().await.is_some() {}
    for e in exports.iter() {
        if let Err(err) = e.export.flush().await {
            warn!(export = %e.name, error = %err, "flush at shutdown failed");
        }
    }
    Ok(())
}

async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    exports: Arc<ExportSet>,
    shutdown: watch::Receiver<bool>,
) {
    info!(%peer, "nbd connection");
    match run_connection(sock, peer, &exports, shutdown).await {
        Ok(why) => info!(%peer, end = why, "nbd connection closed"),
        Err(e) => warn!(%peer, error = %e, "nbd connection failed"),
    }
}

async fn run_connection(
    sock: TcpStream,
    peer: SocketAddr,
    exports: &ExportSet,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<&'static str> {
    let (mut rd, mut wr) = sock.into_split();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut hs = Handshake::new();
    let negotiated = loop {
        let step = hs.step(exports);
        let out = hs.take_output();
        if !out.is_empty() {
            wr.write_all(&out).await?;
        }
        match step {
            HandshakeStep::Done(n) => break n,
            HandshakeStep::Close(why) => {
                info!(%peer, reason = %why, "nbd handshake ended");
                return Ok("handshake closed");
            }
            HandshakeStep::NeedMore => {}
        }
        tokio::select! {
            r = rd.read(&mut buf) => match r? {
                0 => return Ok("client left during handshake"),
                n => hs.feed(&buf[..n]),
            },
            // A client still haggling has nothing in flight: close now rather
            // than wait for its next option (it may never send one).
            _ = shutdown.changed() => return Ok("server shutdown during handshake"),
        }
    };
    let Some(entry) = exports.get(&negotiated.export_name) else {
        // The handshake resolved the name against this very set.
        return Err(io::Error::other("negotiated export vanished"));
    };
    let export = entry.export.clone();
    info!(%peer, export = %entry.name, structured = negotiated.structured,
          base_allocation = negotiated.base_allocation.is_some(), "nbd transmission");
    let max = export.block_size().maximum.min(MAX_REQUEST);
    let mut tx = Transmission::new(Params::from_negotiated(&negotiated, max));
    tx.feed(&negotiated.leftover);
    let enc = tx.encoder();

    let (reply_tx, mut reply_rx) = mpsc::channel::<Vec<u8>>(256);
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(READ_CHUNK, wr);
        while let Some(b) = reply_rx.recv().await {
            w.write_all(&b).await?;
            // Batch whatever else is ready into the same flush.
            while let Ok(b) = reply_rx.try_recv() {
                w.write_all(&b).await?;
            }
            w.flush().await?;
        }
        w.shutdown().await
    });

    let mut inflight = JoinSet::new();
    let mut shutting = *shutdown.borrow();
    if shutting {
        tx.begin_shutdown();
    }
    let mut flush_at_end = true;
    let end = 'conn: loop {
        while let Some(action) = tx.poll() {
            match action {
                Action::Execute(cmd) => {
                    while inflight.len() >= MAX_IN_FLIGHT {
                        inflight.join_next().await;
                    }
                    inflight.spawn(run_command(export.clone(), enc, cmd, reply_tx.clone()));
                }
                Action::Reply(bytes) => {
                    if reply_tx.send(bytes).await.is_err() {
                        break 'conn "writer failed";
                    }
                }
                Action::Disconnect => break 'conn "client disconnect",
                Action::Close(e) => {
                    warn!(%peer, error = %e, "nbd protocol violation, closing");
                    flush_at_end = false;
                    break 'conn "protocol violation";
                }
            }
        }
        if shutting {
            break "server shutdown";
        }
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) => break "client closed",
                Ok(n) => tx.feed(&buf[..n]),
                Err(e) => {
                    debug!(%peer, error = %e, "nbd read failed");
                    break "read error";
                }
            },
            _ = shutdown.changed(), if !shutting => {
                shutting = true;
                tx.begin_shutdown();
            }
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
        }
    };
    while inflight.join_next().await.is_some() {}
    if flush_at_end {
        if let Err(e) = export.flush().await {
            warn!(%peer, error = %e, "flush at disconnect failed");
        }
    }
    drop(reply_tx);
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "nbd write failed"),
        Err(e) => warn!(%peer, error = %e, "nbd writer task failed"),
    }
    Ok(end)
}

fn error_reply(enc: &ReplyEncoder, handle: u64, e: &ExportError) -> Vec<u8> {
    debug!(handle, error = %e, "nbd command failed");
    enc.error(handle, e.errno(), &e.to_string())
}

async fn run_command(
    export: Arc<dyn Export>,
    enc: ReplyEncoder,
    cmd: Command,
    out: mpsc::Sender<Vec<u8>>,
) {
    let h = cmd.handle;
    let reply = match cmd.op {
        Op::Read { offset, length, df } => {
            let mut buf = IoBuf::alloc((length as usize).max(1));
            buf.set_len(length as usize);
            match export.read(offset, buf).await {
                // A backend handing back the wrong length would desync the
                // stream; refuse it as an I/O error instead.
                Ok(d) if d.data.len() != length as usize => {
                    enc.error(h, errno::EIO, "export returned a short read")
                }
                Ok(d) => enc.read(h, offset, &d, df),
                Err(e) => error_reply(&enc, h, &e),
            }
        }
        Op::Write { offset, data, fua } => match export.write(offset, data, fua).await {
            Ok(()) => enc.ok(h),
            Err(e) => error_reply(&enc, h, &e),
        },
        Op::Flush => match export.flush().await {
            Ok(()) => enc.ok(h),
            Err(e) => error_reply(&enc, h, &e),
        },
        Op::Trim {
            offset,
            length,
            fua,
        } => match export.trim(offset, length, fua).await {
            Ok(()) => enc.ok(h),
            Err(e) => error_reply(&enc, h, &e),
        },
        Op::WriteZeroes {
            offset,
            length,
            no_hole,
            fast,
            fua,
        } => {
            let flags = ZeroFlags {
                may_punch: !no_hole,
                fast,
                fua,
            };
            match export.write_zeroes(offset, length, flags).await {
                Ok(()) => enc.ok(h),
                Err(e) => error_reply(&enc, h, &e),
            }
        }
        Op::Cache { offset, length } => match export.cache(offset, length).await {
            Ok(()) => enc.ok(h),
            Err(e) => error_reply(&enc, h, &e),
        },
        Op::BlockStatus {
            offset,
            length,
            req_one,
        } => match export.block_status(offset, length).await {
            Ok(ext) => enc.block_status(h, length, &ext, req_one),
            Err(e) => error_reply(&enc, h, &e),
        },
    };
    // The receiver is gone only when the connection is being torn down.
    let _ = out.send(reply).await;
}
