//! TCP backend: the wire protocol over a tokio `TcpStream`.
//!
//! Bulk data follows a frame's body on the stream. Each connection has one
//! writer task (it owns the write half and always writes whole frames, so a
//! cancelled call can never leave half a frame on the wire) and one reader
//! loop driving the sans-IO [`FrameDecoder`]. The reader asks the decoder
//! for exactly the bytes the current header or body needs and reads bulk
//! data straight into the buffer that will carry it on (a pool `IoBuf`),
//! so data is never copied between the socket and that buffer.

mod client;
mod server;

pub use client::{ClientOptions, TcpClient};
pub(crate) use server::shutdown_requested;
pub use server::{serve, serve_with, ServerOptions};

use crate::wire::{Frame, FrameDecoder, FrameError};
use iobuf::IoBuf;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};

/// One frame to send: header and body, then optionally the data straight
/// from its buffer, which goes back through `back` once written.
pub(crate) struct Outgoing {
    pub head: Vec<u8>,
    pub data: Option<IoBuf>,
    pub back: Option<oneshot::Sender<IoBuf>>,
}

/// Writes frames until every sender is gone, then flushes and shuts the
/// write side down (the peer sees a clean end of stream).
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::Receiver<Outgoing>,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Batch whatever is queued into one flush: many small replies in
        // flight then cost one syscall, not one each.
        while let Some(out) = next.take() {
            w.write_all(&out.head).await?;
            if let Some(data) = out.data {
                w.write_all(data.as_slice()).await?;
                if let Some(back) = out.back {
                    // The caller may have given up (timeout); the buffer
                    // then just goes back to its pool.
                    let _ = back.send(data);
                }
            }
            next = rx.try_recv().ok();
        }
        w.flush().await?;
    }
    w.shutdown().await
}

/// Why reading a frame stopped.
#[derive(Debug)]
pub(crate) enum ReadFail {
    Io(io::Error),
    Frame(FrameError),
}

impl From<io::Error> for ReadFail {
    fn from(e: io::Error) -> Self {
        ReadFail::Io(e)
    }
}

/// Reads until the decoder yields a frame. `Ok(None)` is a clean end of
/// stream between frames. Cancel-safe: the decoder keeps what was read.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    dec: &mut FrameDecoder,
    scratch: &mut Vec<u8>,
) -> Result<Option<Frame>, ReadFail> {
    loop {
        if let Some(frame) = dec.next_frame().map_err(ReadFail::Frame)? {
            return Ok(Some(frame));
        }
        let want = dec.want();
        if scratch.len() < want {
            scratch.resize(want, 0);
        }
        let n = r.read(&mut scratch[..want]).await?;
        if n == 0 {
            if dec.is_idle() {
                return Ok(None);
            }
            return Err(ReadFail::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a frame",
            )));
        }
        dec.feed(&scratch[..n]);
    }
}

/// Reads the current frame's `len` data bytes into `buf` (whose capacity
/// the caller checked), straight from the socket.
pub(crate) async fn read_data<R: AsyncRead + Unpin>(
    r: &mut R,
    dec: &mut FrameDecoder,
    buf: &mut IoBuf,
    len: usize,
) -> io::Result<()> {
    let dst = &mut buf.spare_mut()[..len];
    let taken = dec.take_data(dst);
    r.read_exact(&mut dst[taken..]).await?;
    dec.data_read_outside(len - taken);
    buf.set_len(len);
    Ok(())
}

/// Reads and drops the current frame's remaining data.
pub(crate) async fn skip_data<R: AsyncRead + Unpin>(
    r: &mut R,
    dec: &mut FrameDecoder,
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    if scratch.len() < 64 * 1024 {
        scratch.resize(64 * 1024, 0);
    }
    loop {
        let remaining = dec.data_remaining() as usize;
        if remaining == 0 {
            return Ok(());
        }
        let n = remaining.min(scratch.len());
        let taken = dec.take_data(&mut scratch[..n]);
        if taken > 0 {
            continue;
        }
        r.read_exact(&mut scratch[..n]).await?;
        dec.data_read_outside(n);
    }
}
