//! The transmission phase as a sans-IO state machine.
//!
//! [`Transmission::feed`] takes bytes from the client; [`Transmission::poll`]
//! turns them into [`Action`]s: a checked command to run against the export,
//! an error reply to send at once (bad flags, out of range, too large), a soft
//! disconnect, or a hard close (bad magic: the stream cannot be resynchronised).
//! [`ReplyEncoder`] turns completions into reply bytes. Replies may be sent in
//! any order. Nothing here touches a socket or the export.

use iobuf::IoBuf;

use crate::export::{Extent, ReadData};
use crate::handshake::Negotiated;
use crate::wire::{self, errno, *};

/// Fixed facts about the export and what was negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags sent to the client.
    pub flags: u16,
    /// Largest request length accepted.
    pub max_request: u32,
    /// Structured replies negotiated.
    pub structured: bool,
    /// base:allocation context id, if selected.
    pub base_allocation: Option<u32>,
}

impl Params {
    /// Parameters from a finished handshake.
    pub fn from_negotiated(n: &Negotiated, max_request: u32) -> Params {
        Params {
            size: n.size,
            flags: n.flags,
            max_request,
            structured: n.structured,
            base_allocation: n.base_allocation,
        }
    }
}

/// A checked command for the export.
#[derive(Debug)]
pub enum Op {
    /// Read `length` bytes; `df`: one data chunk, no holes.
    Read {
        /// Offset.
        offset: u64,
        /// Length.
        length: u32,
        /// Do not fragment.
        df: bool,
    },
    /// Write the payload.
    Write {
        /// Offset.
        offset: u64,
        /// Payload.
        data: IoBuf,
        /// Force unit access.
        fua: bool,
    },
    /// Flush.
    Flush,
    /// Trim.
    Trim {
        /// Offset.
        offset: u64,
        /// Length.
        length: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Write zeroes.
    WriteZeroes {
        /// Offset.
        offset: u64,
        /// Length.
        length: u32,
        /// Must stay allocated.
        no_hole: bool,
        /// Fail unless fast.
        fast: bool,
        /// Force unit access.
        fua: bool,
    },
    /// Cache (prefetch).
    Cache {
        /// Offset.
        offset: u64,
        /// Length.
        length: u32,
    },
    /// base:allocation status.
    BlockStatus {
        /// Offset.
        offset: u64,
        /// Length.
        length: u32,
        /// One extent only.
        req_one: bool,
    },
}

/// A command with the client's handle.
#[derive(Debug)]
pub struct Command {
    /// Echoed in the reply.
    pub handle: u64,
    /// What to do.
    pub op: Op,
}

/// Why the connection must be dropped at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Request header undecodable.
    #[error(transparent)]
    Decode(#[from] wire::DecodeError),
}

/// What the adapter must do next.
#[derive(Debug)]
pub enum Action {
    /// Run this command and send [`ReplyEncoder`]'s reply for it.
    Execute(Command),
    /// Send these bytes (an error reply to a request that was not run).
    Reply(Vec<u8>),
    /// NBD_CMD_DISC: finish commands in flight, then close. No more actions.
    Disconnect,
    /// Drop the connection now. No more actions.
    Close(ProtocolError),
}

#[derive(Debug)]
enum State {
    Header,
    Payload {
        handle: u64,
        offset: u64,
        fua: bool,
        buf: IoBuf,
        filled: usize,
    },
    Discard {
        remaining: u32,
        reply: Vec<u8>,
    },
    Ended,
}

/// Server side of the transmission phase.
#[derive(Debug)]
pub struct Transmission {
    params: Params,
    input: Vec<u8>,
    pos: usize,
    state: State,
    shutting_down: bool,
}

impl Transmission {
    /// A new transmission phase.
    pub fn new(params: Params) -> Transmission {
        Transmission {
            params,
            input: Vec::new(),
            pos: 0,
            state: State::Header,
            shutting_down: false,
        }
    }

    /// The negotiated parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// An encoder for replies on this connection.
    pub fn encoder(&self) -> ReplyEncoder {
        ReplyEncoder {
            structured: self.params.structured,
            context_id: self.params.base_allocation.unwrap_or(0),
        }
    }

    /// Every request decoded from now on is refused with ESHUTDOWN.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Bytes received from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if matches!(self.state, State::Ended) {
            return;
        }
        // Reclaim consumed space before growing, so the buffer stays near the
        // size of one read instead of the whole connection's history.
        if self.pos > 0 && self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    fn available(&self) -> &[u8] {
        &self.input[self.pos..]
    }

    /// The next action, or `None` when more bytes are needed.
    pub fn poll(&mut self) -> Option<Action> {
        loop {
            match &mut self.state {
                State::Ended => return None,
                State::Payload { filled, buf, .. } => {
                    let want = buf.len() - *filled;
                    let have = self.input.len() - self.pos;
                    let n = want.min(have);
                    buf.as_mut_slice()[*filled..*filled + n]
                        .copy_from_slice(&self.input[self.pos..self.pos + n]);
                    *filled += n;
                    self.pos += n;
                    if *filled < buf.len() {
                        return None;
                    }
                    let State::Payload {
                        handle,
                        offset,
                        fua,
                        buf,
                        ..
                    } = std::mem::replace(&mut self.state, State::Header)
                    else {
                        unreachable!("matched Payload above");
                    };
                    return Some(Action::Execute(Command {
                        handle,
                        op: Op::Write {
                            offset,
                            data: buf,
                            fua,
                        },
                    }));
                }
                State::Discard { remaining, .. } => {
                    let have = self.input.len() - self.pos;
                    let n = (*remaining as usize).min(have);
                    self.pos += n;
                    // `n <= remaining`, a u32.
                    *remaining -= n as u32;
                    if *remaining > 0 {
                        return None;
                    }
                    let State::Discard { reply, .. } =
                        std::mem::replace(&mut self.state, State::Header)
                    else {
                        unreachable!("matched Discard above");
                    };
                    return Some(Action::Reply(reply));
                }
                State::Header => {
                    let raw = self.available().get(..REQUEST_LEN)?;
                    let mut hdr = [0u8; REQUEST_LEN];
                    hdr.copy_from_slice(raw);
                    self.pos += REQUEST_LEN;
                    match RequestHeader::decode(&hdr) {
                        Err(e) => {
                            self.state = State::Ended;
                            return Some(Action::Close(e.into()));
                        }
                        Ok(h) => {
                            if let Some(a) = self.on_request(h) {
                                return Some(a);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Checks one request; `None` means a payload state was entered.
    fn on_request(&mut self, h: RequestHeader) -> Option<Action> {
        let enc = self.encoder();
        let p = self.params;
        if h.kind == CMD_DISC {
            self.state = State::Ended;
            return Some(Action::Disconnect);
        }
        let is_write = h.kind == CMD_WRITE;
        // Refuses the request; a write's payload is still read and dropped so
        // the stream stays in sync (never buffered: it may be huge).
        let refuse = |this: &mut Self, errno: u32, msg: &str| -> Option<Action> {
            let reply = enc.error(h.handle, errno, msg);
            if is_write && h.length > 0 {
                this.state = State::Discard {
                    remaining: h.length,
                    reply,
                };
                None
            } else {
                Some(Action::Reply(reply))
            }
        };
        if self.shutting_down {
            return refuse(self, errno::ESHUTDOWN, "server shutting down");
        }
        let allowed = match h.kind {
            CMD_READ => CMD_FLAG_FUA | if p.structured { CMD_FLAG_DF } else { 0 },
            CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_CACHE => CMD_FLAG_FUA,
            CMD_WRITE_ZEROES => {
                CMD_FLAG_FUA
                    | CMD_FLAG_NO_HOLE
                    | if p.flags & TF_SEND_FAST_ZERO != 0 {
                        CMD_FLAG_FAST_ZERO
                    } else {
                        0
                    }
            }
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            _ => return refuse(self, errno::EINVAL, "unknown command"),
        };
        if h.flags & !allowed != 0 {
            return refuse(self, errno::EINVAL, "flag not valid for this command");
        }
        let fua = h.flags & CMD_FLAG_FUA != 0;
        let end = h.offset.checked_add(u64::from(h.length));
        let in_range = end.is_some_and(|e| e <= p.size);
        let read_only = p.flags & TF_READ_ONLY != 0;
        match h.kind {
            CMD_READ | CMD_WRITE if h.length > p.max_request => refuse(
                self,
                errno::EOVERFLOW,
                "request larger than the maximum block size",
            ),
            CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES if read_only => {
                refuse(self, errno::EPERM, "export is read-only")
            }
            CMD_WRITE | CMD_WRITE_ZEROES if !in_range => {
                refuse(self, errno::ENOSPC, "write past the end of the export")
            }
            CMD_READ | CMD_TRIM | CMD_CACHE | CMD_BLOCK_STATUS if !in_range => {
                refuse(self, errno::EINVAL, "range past the end of the export")
            }
            CMD_TRIM if p.flags & TF_SEND_TRIM == 0 => {
                refuse(self, errno::EINVAL, "trim not supported")
            }
            CMD_BLOCK_STATUS if p.base_allocation.is_none() => {
                refuse(self, errno::EINVAL, "no metadata context negotiated")
            }
            CMD_BLOCK_STATUS if h.length == 0 => {
                refuse(self, errno::EINVAL, "zero-length block status")
            }
            CMD_WRITE if h.length > 0 => {
                let len = h.length as usize;
                let mut buf = IoBuf::alloc(len);
                buf.set_len(len);
                self.state = State::Payload {
                    handle: h.handle,
                    offset: h.offset,
                    fua,
                    buf,
                    filled: 0,
                };
                None
            }
            _ => {
                let op = match h.kind {
                    CMD_READ => Op::Read {
                        offset: h.offset,
                        length: h.length,
                        df: h.flags & CMD_FLAG_DF != 0,
                    },
                    CMD_WRITE => Op::Write {
                        offset: h.offset,
                        data: IoBuf::alloc(1),
                        fua,
                    },
                    CMD_FLUSH => Op::Flush,
                    CMD_TRIM => Op::Trim {
                        offset: h.offset,
                        length: h.length,
                        fua,
                    },
                    CMD_WRITE_ZEROES => Op::WriteZeroes {
                        offset: h.offset,
                        length: h.length,
                        no_hole: h.flags & CMD_FLAG_NO_HOLE != 0,
                        fast: h.flags & CMD_FLAG_FAST_ZERO != 0,
                        fua,
                    },
                    CMD_CACHE => Op::Cache {
                        offset: h.offset,
                        length: h.length,
                    },
                    _ => Op::BlockStatus {
                        offset: h.offset,
                        length: h.length,
                        req_one: h.flags & CMD_FLAG_REQ_ONE != 0,
                    },
                };
                Some(Action::Execute(Command {
                    handle: h.handle,
                    op,
                }))
            }
        }
    }
}

/// Holes shorter than this are sent as data: a chunk header costs more.
const MIN_HOLE_CHUNK: u32 = 512;

/// Encodes replies for one connection (cheap to copy into each task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyEncoder {
    /// Structured replies negotiated.
    pub structured: bool,
    /// Context id for base:allocation replies.
    pub context_id: u32,
}

impl ReplyEncoder {
    /// Success without data.
    pub fn ok(&self, handle: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIMPLE_REPLY_LEN);
        // A simple reply is allowed for any command but READ even with
        // structured replies, and is the shortest.
        put_simple_reply(&mut out, handle, 0);
        out
    }

    /// An error, with a message for humans when structured.
    pub fn error(&self, handle: u64, err: u32, msg: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if self.structured {
            let msg = &msg.as_bytes()[..msg.len().min(4096)];
            put_chunk_header(
                &mut out,
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                handle,
                (6 + msg.len()) as u32,
            );
            out.extend_from_slice(&err.to_be_bytes());
            out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            out.extend_from_slice(msg);
        } else {
            put_simple_reply(&mut out, handle, err);
        }
        out
    }

    /// A successful read of `read.data` at `offset`.
    pub fn read(&self, handle: u64, offset: u64, read: &ReadData, df: bool) -> Vec<u8> {
        let data = read.data.as_slice();
        let mut out = Vec::with_capacity(data.len() + 64);
        if !self.structured {
            put_simple_reply(&mut out, handle, 0);
            out.extend_from_slice(data);
            return out;
        }
        if data.is_empty() {
            put_chunk_header(&mut out, REPLY_FLAG_DONE, REPLY_TYPE_NONE, handle, 0);
            return out;
        }
        let len = data.len() as u32;
        // Pieces: (start, end, is_hole), covering 0..len in order.
        let mut pieces: Vec<(u32, u32, bool)> = Vec::new();
        let mut at = 0u32;
        if !df {
            for h in &read.holes {
                let (s, e) = (h.start.max(at), h.end.min(len));
                if e <= s || e - s < MIN_HOLE_CHUNK {
                    continue;
                }
                if s > at {
                    pieces.push((at, s, false));
                }
                pieces.push((s, e, true));
                at = e;
            }
        }
        if at < len {
            pieces.push((at, len, false));
        }
        let last = pieces.len() - 1;
        for (i, &(s, e, hole)) in pieces.iter().enumerate() {
            let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
            let off = offset + u64::from(s);
            if hole {
                put_chunk_header(&mut out, flags, REPLY_TYPE_OFFSET_HOLE, handle, 12);
                out.extend_from_slice(&off.to_be_bytes());
                out.extend_from_slice(&(e - s).to_be_bytes());
            } else {
                put_chunk_header(&mut out, flags, REPLY_TYPE_OFFSET_DATA, handle, 8 + (e - s));
                out.extend_from_slice(&off.to_be_bytes());
                out.extend_from_slice(&data[s as usize..e as usize]);
            }
        }
        out
    }

    /// base:allocation extents for a request of `length` bytes. Extents are
    /// clipped to the request; zero-length extents are dropped.
    pub fn block_status(
        &self,
        handle: u64,
        length: u32,
        extents: &[Extent],
        req_one: bool,
    ) -> Vec<u8> {
        let mut descs: Vec<(u32, u32)> = Vec::new();
        let mut covered = 0u32;
        for e in extents {
            if covered >= length {
                break;
            }
            let n = e.length.min(u64::from(length - covered)) as u32;
            if n == 0 {
                continue;
            }
            let flags = if e.hole { STATE_HOLE } else { 0 } | if e.zero { STATE_ZERO } else { 0 };
            match descs.last_mut() {
                Some(last) if last.1 == flags => last.0 += n,
                _ => descs.push((n, flags)),
            }
            covered += n;
            if req_one {
                break;
            }
        }
        if descs.is_empty() {
            // A backend that said nothing: report the range as data, which is
            // always a correct answer for base:allocation.
            descs.push((length, 0));
        }
        if req_one {
            descs.truncate(1);
        }
        let mut out = Vec::with_capacity(STRUCTURED_HEADER_LEN + 4 + 8 * descs.len());
        put_chunk_header(
            &mut out,
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS,
            handle,
            (4 + 8 * descs.len()) as u32,
        );
        out.extend_from_slice(&self.context_id.to_be_bytes());
        for (n, f) in descs {
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(&f.to_be_bytes());
        }
        out
    }
}
