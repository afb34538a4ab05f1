//! The brick wire protocol: frames and message bodies, with no sockets.
//!
//! Everything here turns bytes into typed values and back. It checks syntax
//! only (sizes, magic, version, reserved bits, checksums); what a message
//! *means* (does the object exist, is the epoch current, is the peer
//! authenticated) is for the state machine that handles it. Nothing here does
//! I/O or allocates more than the limits below allow, so a hostile peer can
//! make a decode fail but never panic or balloon.
//!
//! # Frame
//!
//! Every message travels as one frame: a fixed 32-byte header, a body of
//! `body_len` bytes (the typed message, see [`Request`] and [`Response`]),
//! then, on TCP only, `data_len` bytes of bulk data (a write's payload or a
//! read's answer). All integers are little-endian.
//!
//! ```text
//!  0      4    5      6       8                16         20         24         28        32
//!  +------+----+------+-------+----------------+----------+----------+----------+---------+
//!  |magic |ver |opcode| flags |   request id   | body_len | data_len | body_crc |head_crc |
//!  |"STRB"| u8 |  u8  |  u16  |      u64       |   u32    |   u32    |   u32    |  u32    |
//!  +------+----+------+-------+----------------+----------+----------+----------+---------+
//! ```
//!
//! - `magic` is the four ASCII bytes `STRB` ([`MAGIC`]).
//! - `ver` is [`VERSION`]; a frame of another version is refused.
//! - `flags` bit 0 ([`FLAG_REPLY`]) marks a reply; every other bit is
//!   reserved and must be zero.
//! - `request id` pairs a reply with its request; the client picks it.
//! - `body_crc` is the CRC32C of the body bytes, `head_crc` the CRC32C of
//!   header bytes 0..28. Bulk data is not covered: it carries its own CRC in
//!   the message (see [`WriteReq::crc32c`]) end to end, writer to disk.
//! - `body_len` is at most [`MAX_BODY`], `data_len` at most [`MAX_DATA`].
//!
//! A frame-level error ([`FrameError`]) means the byte stream can no longer be
//! trusted and the connection must be closed. A body-level error
//! ([`BodyError`]) leaves the framing intact: the receiver answers it with an
//! error reply and carries on.

mod chunks;
mod ha;
mod integrity;
mod msg;
mod records;

pub use chunks::*;
pub use ha::*;
pub use integrity::*;
pub use msg::*;
pub use records::*;

use thiserror::Error;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"STRB";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 32;
/// Largest body a frame may carry (the control message; never bulk data).
pub const MAX_BODY: u32 = 64 * 1024;
/// Largest bulk data a frame may carry inline.
pub const MAX_DATA: u32 = 16 * 1024 * 1024;
/// Header `flags` bit: this frame is a reply.
pub const FLAG_REPLY: u16 = 1 << 0;
/// Header `flags` bits that are defined; the rest must be zero.
const FLAGS_KNOWN: u16 = FLAG_REPLY;

// Header field offsets (little-endian integers).
const H_MAGIC: usize = 0;
const H_VERSION: usize = 4;
const H_OPCODE: usize = 5;
const H_FLAGS: usize = 6;
const H_REQUEST_ID: usize = 8;
const H_BODY_LEN: usize = 16;
const H_DATA_LEN: usize = 20;
const H_BODY_CRC: usize = 24;
const H_HEAD_CRC: usize = 28;

/// A frame that cannot be trusted: the connection carrying it must close.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("bad frame magic {found:02x?} (expected \"STRB\")")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported protocol version {found} (this side speaks {VERSION})")]
    BadVersion { found: u8 },
    #[error("frame header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("frame body checksum mismatch (request {request_id}, stored {stored:#010x}, computed {computed:#010x})")]
    BodyCrc {
        request_id: u64,
        stored: u32,
        computed: u32,
    },
    #[error("reserved frame flag bits set: {flags:#06x}")]
    ReservedFlags { flags: u16 },
    #[error("frame body of {len} bytes is over the limit of {max}")]
    BodyTooLarge { len: u32, max: u32 },
    #[error("frame data of {len} bytes is over the limit of {max}")]
    DataTooLarge { len: u32, max: u32 },
}

/// The fixed header of a frame, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub opcode: u8,
    pub flags: u16,
    pub request_id: u64,
    pub body_len: u32,
    pub data_len: u32,
    pub body_crc: u32,
}

impl FrameHeader {
    /// True when the frame is a reply.
    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_REPLY != 0
    }

    /// The header bytes, with the header checksum filled in.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[H_MAGIC..H_MAGIC + 4].copy_from_slice(&MAGIC);
        b[H_VERSION] = VERSION;
        b[H_OPCODE] = self.opcode;
        put_u16(&mut b, H_FLAGS, self.flags);
        put_u64(&mut b, H_REQUEST_ID, self.request_id);
        put_u32(&mut b, H_BODY_LEN, self.body_len);
        put_u32(&mut b, H_DATA_LEN, self.data_len);
        put_u32(&mut b, H_BODY_CRC, self.body_crc);
        let crc = crc32c::crc32c(&b[..H_HEAD_CRC]);
        put_u32(&mut b, H_HEAD_CRC, crc);
        b
    }

    /// Decodes and checks a header against the given size limits.
    ///
    /// Checks run in an order that gives the most useful error: magic first
    /// (is this our protocol at all), version (a later version may move the
    /// checksum), checksum (are the sizes below trustworthy), then flags and
    /// sizes.
    pub fn decode(b: &[u8; HEADER_LEN], limits: Limits) -> Result<FrameHeader, FrameError> {
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        if b[H_VERSION] != VERSION {
            return Err(FrameError::BadVersion {
                found: b[H_VERSION],
            });
        }
        let stored = get_u32(b, H_HEAD_CRC);
        let computed = crc32c::crc32c(&b[..H_HEAD_CRC]);
        if stored != computed {
            return Err(FrameError::HeaderCrc { stored, computed });
        }
        let flags = get_u16(b, H_FLAGS);
        if flags & !FLAGS_KNOWN != 0 {
            return Err(FrameError::ReservedFlags { flags });
        }
        let body_len = get_u32(b, H_BODY_LEN);
        if body_len > limits.max_body {
            return Err(FrameError::BodyTooLarge {
                len: body_len,
                max: limits.max_body,
            });
        }
        let data_len = get_u32(b, H_DATA_LEN);
        if data_len > limits.max_data {
            return Err(FrameError::DataTooLarge {
                len: data_len,
                max: limits.max_data,
            });
        }
        Ok(FrameHeader {
            opcode: b[H_OPCODE],
            flags,
            request_id: get_u64(b, H_REQUEST_ID),
            body_len,
            data_len,
            body_crc: get_u32(b, H_BODY_CRC),
        })
    }
}

/// Size limits a decoder enforces. A server lowers them before the peer has
/// authenticated, so a stranger cannot make it reserve big buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body: u32,
    pub max_data: u32,
}

impl Limits {
    /// The protocol's limits: [`MAX_BODY`] and [`MAX_DATA`].
    pub const PROTOCOL: Limits = Limits {
        max_body: MAX_BODY,
        max_data: MAX_DATA,
    };
    /// What an unauthenticated peer may send: handshake messages only, no data.
    pub const HANDSHAKE: Limits = Limits {
        max_body: 2048,
        max_data: 0,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::PROTOCOL
    }
}

/// A frame's header and body; its `header.data_len` bytes of data follow it
/// on the stream and are consumed separately (see [`FrameDecoder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    pub body: Vec<u8>,
}

impl Frame {
    /// Decodes the body as a request.
    pub fn request(&self) -> Result<Request, BodyError> {
        if self.header.is_reply() {
            return Err(BodyError::UnexpectedReply {
                opcode: self.header.opcode,
            });
        }
        Request::decode(self.header.opcode, &self.body, self.header.data_len)
    }

    /// Decodes the body as a response.
    pub fn response(&self) -> Result<Response, BodyError> {
        if !self.header.is_reply() {
            return Err(BodyError::UnexpectedRequest {
                opcode: self.header.opcode,
            });
        }
        Response::decode(self.header.opcode, &self.body, self.header.data_len)
    }
}

/// Encodes a frame's header and body (the data, if any, is sent after it by
/// the caller straight from its buffer).
pub fn encode_frame(
    opcode: u8,
    flags: u16,
    request_id: u64,
    body: &[u8],
    data_len: u32,
) -> Vec<u8> {
    let header = FrameHeader {
        opcode,
        flags,
        request_id,
        // Bodies are built by this module and bounded far below u32::MAX.
        body_len: body.len() as u32,
        data_len,
        body_crc: crc32c::crc32c(body),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(body);
    out
}

/// Header and body bytes of a request frame; `data_len` comes from the
/// request's inline [`DataRef`].
pub fn encode_request(request_id: u64, req: &Request) -> Vec<u8> {
    let mut body = Vec::new();
    req.encode_body(&mut body);
    encode_frame(
        req.opcode() as u8,
        0,
        request_id,
        &body,
        req.inline_data_len(),
    )
}

/// Header and body bytes of a reply frame; `data_len` comes from the
/// response's inline [`DataRef`].
pub fn encode_response(request_id: u64, resp: &Response) -> Vec<u8> {
    let mut body = Vec::new();
    resp.encode_body(&mut body);
    encode_frame(
        resp.opcode() as u8,
        FLAG_REPLY,
        request_id,
        &body,
        resp.inline_data_len(),
    )
}

enum DecodeState {
    /// Waiting for a full header.
    Header,
    /// Header decoded; waiting for `header.body_len` body bytes.
    Body(FrameHeader),
    /// A frame was handed out; `remaining` data bytes of it still follow.
    Data { remaining: u32 },
}

/// Incremental frame decoder: bytes in, frames out.
///
/// The decoder never asks for more than the current frame needs
/// ([`FrameDecoder::want`]), so a connection loop that reads exactly that
/// much never pulls bulk data into the decoder's buffer: after
/// [`FrameDecoder::next_frame`] returns a frame with data, the loop reads the
/// data straight into its own buffer (a pool [`iobuf::IoBuf`]) and reports
/// it with [`FrameDecoder::data_read_outside`]. Bytes that were fed anyway
/// (tests, fuzzing, a reader that reads ahead) are drained with
/// [`FrameDecoder::take_data`].
pub struct FrameDecoder {
    buf: Vec<u8>,
    state: DecodeState,
    limits: Limits,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(Limits::PROTOCOL)
    }
}

impl FrameDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            state: DecodeState::Header,
            limits,
        }
    }

    /// Changes the limits for frames whose header has not been decoded yet.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes needed before the decoder can make progress (always at least 1).
    /// In the data phase this is the data still expected.
    pub fn want(&self) -> usize {
        let need = match &self.state {
            DecodeState::Header => HEADER_LEN,
            DecodeState::Body(h) => h.body_len as usize,
            DecodeState::Data { remaining } => *remaining as usize,
        };
        need.saturating_sub(self.buf.len()).max(1)
    }

    /// Data bytes of the last frame not yet consumed.
    pub fn data_remaining(&self) -> u32 {
        match self.state {
            DecodeState::Data { remaining } => remaining,
            _ => 0,
        }
    }

    /// True when no partial frame is buffered (a clean place to stop).
    pub fn is_idle(&self) -> bool {
        matches!(
            self.state,
            DecodeState::Header | DecodeState::Data { remaining: 0 }
        ) && self.buf.is_empty()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed or the
    /// previous frame's data has not been consumed yet.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            match self.state {
                DecodeState::Data { remaining: 0 } => self.state = DecodeState::Header,
                DecodeState::Data { .. } => return Ok(None),
                DecodeState::Header => {
                    let Some(head) = self.buf.get(..HEADER_LEN) else {
                        return Ok(None);
                    };
                    let mut raw = [0u8; HEADER_LEN];
                    raw.copy_from_slice(head);
                    let header = FrameHeader::decode(&raw, self.limits)?;
                    self.buf.drain(..HEADER_LEN);
                    self.state = DecodeState::Body(header);
                }
                DecodeState::Body(header) => {
                    let len = header.body_len as usize;
                    if self.buf.len() < len {
                        return Ok(None);
                    }
                    let body: Vec<u8> = self.buf.drain(..len).collect();
                    let computed = crc32c::crc32c(&body);
                    if computed != header.body_crc {
                        return Err(FrameError::BodyCrc {
                            request_id: header.request_id,
                            stored: header.body_crc,
                            computed,
                        });
                    }
                    self.state = DecodeState::Data {
                        remaining: header.data_len,
                    };
                    return Ok(Some(Frame { header, body }));
                }
            }
        }
    }

    /// Moves buffered data bytes of the current frame into `dst`; returns how
    /// many were moved.
    pub fn take_data(&mut self, dst: &mut [u8]) -> usize {
        let DecodeState::Data { remaining } = &mut self.state else {
            return 0;
        };
        let n = dst.len().min(*remaining as usize).min(self.buf.len());
        dst[..n].copy_from_slice(&self.buf[..n]);
        self.buf.drain(..n);
        *remaining -= n as u32;
        n
    }

    /// Records that the caller read `n` data bytes of the current frame from
    /// the stream itself. Only valid when nothing of the data is buffered.
    pub fn data_read_outside(&mut self, n: usize) {
        debug_assert!(self.buf.is_empty(), "data read around buffered bytes");
        if let DecodeState::Data { remaining } = &mut self.state {
            *remaining = remaining.saturating_sub(n.min(u32::MAX as usize) as u32);
        }
    }
}

// Little-endian field access. Callers check the slice length first (bodies
// are matched against their exact size before any field is read).
pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
pub(crate) fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests;
