//! NBD wire formats (fixed newstyle handshake and transmission), sans-IO.
//!
//! Only layouts and constants live here: how a message is laid out, never
//! whether it makes sense. The state machines in [`crate::handshake`] and
//! [`crate::transmission`] judge meaning. Every integer is big-endian.
//!
//! Greeting (server, 18 bytes):
//! ```text
//!  0        8        16   18
//!  +--------+--------+----+
//!  |NBDMAGIC|IHAVEOPT|hflg|
//!  +--------+--------+----+
//! ```
//! Client flags: 4 bytes. Option request (client, 16 + len bytes):
//! ```text
//!  0        8      12     16
//!  +--------+------+------+-------------+
//!  |IHAVEOPT|option|length| data[length]|
//!  +--------+------+------+-------------+
//! ```
//! Option reply (server, 20 + len bytes):
//! ```text
//!  0          8      12     16     20
//!  +----------+------+------+------+-------------+
//!  |0x3e889045|option| type |length| data[length]|
//!  | 565a9    |      |      |      |             |
//!  +----------+------+------+------+-------------+
//! ```
//! Request (client, 28 bytes, followed by `length` bytes for WRITE):
//! ```text
//!  0      4     6     8       16      24     28
//!  +------+-----+-----+-------+-------+------+
//!  |magic |flags|type |handle |offset |length|
//!  +------+-----+-----+-------+-------+------+
//! ```
//! Simple reply (server, 16 bytes, then data for a successful READ):
//! ```text
//!  0      4      8       16
//!  +------+------+-------+
//!  |magic |error |handle |
//!  +------+------+-------+
//! ```
//! Structured reply chunk (server, 20 + len bytes):
//! ```text
//!  0      4     6     8       16     20
//!  +------+-----+-----+-------+------+-------------+
//!  |magic |flags|type |handle |length| data[length]|
//!  +------+-----+-----+-------+------+-------------+
//! ```

/// "NBDMAGIC", first word of the greeting.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT", second word of the greeting and first of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Greeting length.
pub const GREETING_LEN: usize = 18;
/// Handshake flag offset in the greeting.
pub const GREETING_FLAGS_OFF: usize = 16;
/// Client flags length.
pub const CLIENT_FLAGS_LEN: usize = 4;
/// Option request header length; `option` at 8, `length` at 12.
pub const OPT_HEADER_LEN: usize = 16;
/// Offset of the option number in an option request.
pub const OPT_OPTION_OFF: usize = 8;
/// Offset of the data length in an option request.
pub const OPT_LENGTH_OFF: usize = 12;
/// Option reply header length.
pub const OPT_REPLY_HEADER_LEN: usize = 20;
/// Request header length and field offsets.
pub const REQUEST_LEN: usize = 28;
/// Offset of the command flags in a request.
pub const REQ_FLAGS_OFF: usize = 4;
/// Offset of the command type in a request.
pub const REQ_TYPE_OFF: usize = 6;
/// Offset of the handle in a request.
pub const REQ_HANDLE_OFF: usize = 8;
/// Offset of the export offset in a request.
pub const REQ_OFFSET_OFF: usize = 16;
/// Offset of the length in a request.
pub const REQ_LENGTH_OFF: usize = 24;
/// Simple reply length.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Structured reply chunk header length.
pub const STRUCTURED_HEADER_LEN: usize = 20;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server may omit the 124 zero bytes after NBD_OPT_EXPORT_NAME.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client asks for no zero padding.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub const TF_HAS_FLAGS: u16 = 1 << 0;
/// Export is read-only.
pub const TF_READ_ONLY: u16 = 1 << 1;
/// NBD_CMD_FLUSH is supported.
pub const TF_SEND_FLUSH: u16 = 1 << 2;
/// NBD_CMD_FLAG_FUA is supported.
pub const TF_SEND_FUA: u16 = 1 << 3;
/// NBD_CMD_TRIM is supported.
pub const TF_SEND_TRIM: u16 = 1 << 5;
/// NBD_CMD_WRITE_ZEROES is supported.
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// NBD_CMD_FLAG_DF is supported (structured replies only).
pub const TF_SEND_DF: u16 = 1 << 7;
/// Flush and FUA hold across connections.
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;
/// NBD_CMD_CACHE is supported.
pub const TF_SEND_CACHE: u16 = 1 << 10;
/// NBD_CMD_FLAG_FAST_ZERO is supported.
pub const TF_SEND_FAST_ZERO: u16 = 1 << 11;

/// Option numbers.
pub const OPT_EXPORT_NAME: u32 = 1;
/// Abort the handshake.
pub const OPT_ABORT: u32 = 2;
/// List exports.
pub const OPT_LIST: u32 = 3;
/// Describe an export without entering transmission.
pub const OPT_INFO: u32 = 6;
/// Describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Negotiate structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// List metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Select metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// One export in a LIST reply.
pub const REP_SERVER: u32 = 2;
/// One information item in an INFO/GO reply.
pub const REP_INFO: u32 = 3;
/// One metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Error replies have bit 31 set.
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// The option is malformed.
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// The export does not exist.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
/// The server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
/// The option is too large to process.
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// NBD_INFO item types.
pub const INFO_EXPORT: u16 = 0;
/// The export's name.
pub const INFO_NAME: u16 = 1;
/// The export's description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Block size constraints (minimum, preferred, maximum).
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command types.
pub const CMD_READ: u16 = 0;
/// Write the payload.
pub const CMD_WRITE: u16 = 1;
/// Disconnect.
pub const CMD_DISC: u16 = 2;
/// Flush written data to stable storage.
pub const CMD_FLUSH: u16 = 3;
/// Discard a range.
pub const CMD_TRIM: u16 = 4;
/// Prefetch a range.
pub const CMD_CACHE: u16 = 5;
/// Zero a range.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Query metadata (base:allocation).
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// WRITE_ZEROES must allocate, not punch.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// READ must not fragment its structured reply.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// BLOCK_STATUS wants a single extent.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// WRITE_ZEROES must fail fast rather than be slower than a write.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flag: last chunk of the reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply chunk types.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Data at an offset: u64 offset, data.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Zeroes at an offset: u64 offset, u32 length.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Block status: u32 context id, then (u32 length, u32 flags) descriptors.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Error: u32 errno, u16 message length, message.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// base:allocation flags.
pub const STATE_HOLE: u32 = 1 << 0;
/// The extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// The only metadata context this server knows.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Error numbers on the wire (fixed by the protocol, not the host's errno).
pub mod errno {
    /// Operation not permitted (write to a read-only export).
    pub const EPERM: u32 = 1;
    /// Input/output error.
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space left (write past the end, backend full).
    pub const ENOSPC: u32 = 28;
    /// Request larger than the maximum block size.
    pub const EOVERFLOW: u32 = 75;
    /// Not supported (fast zero that would be slow).
    pub const ENOTSUP: u32 = 95;
    /// Server is shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

pub(crate) fn be_u16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

pub(crate) fn be_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(a)
}

pub(crate) fn be_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// The server greeting.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[GREETING_FLAGS_OFF..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// Appends one option reply.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    // Option replies are built from names and descriptions of at most 4096
    // bytes each, so the length always fits.
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// A request header, syntax only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// Client's cookie, echoed in the reply.
    pub handle: u64,
    /// Byte offset in the export.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

/// Why a request header cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The magic is wrong: the stream is out of sync and cannot be recovered.
    #[error("bad request magic {0:#010x}")]
    BadMagic(u32),
}

impl RequestHeader {
    /// Decodes a 28-byte request header.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<RequestHeader, DecodeError> {
        let magic = be_u32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        Ok(RequestHeader {
            flags: be_u16(b, REQ_FLAGS_OFF),
            kind: be_u16(b, REQ_TYPE_OFF),
            handle: be_u64(b, REQ_HANDLE_OFF),
            offset: be_u64(b, REQ_OFFSET_OFF),
            length: be_u32(b, REQ_LENGTH_OFF),
        })
    }

    /// Encodes the header (for tests and clients).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[REQ_FLAGS_OFF..REQ_FLAGS_OFF + 2].copy_from_slice(&self.flags.to_be_bytes());
        b[REQ_TYPE_OFF..REQ_TYPE_OFF + 2].copy_from_slice(&self.kind.to_be_bytes());
        b[REQ_HANDLE_OFF..REQ_HANDLE_OFF + 8].copy_from_slice(&self.handle.to_be_bytes());
        b[REQ_OFFSET_OFF..REQ_OFFSET_OFF + 8].copy_from_slice(&self.offset.to_be_bytes());
        b[REQ_LENGTH_OFF..REQ_LENGTH_OFF + 4].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// Appends a simple reply header.
pub fn put_simple_reply(out: &mut Vec<u8>, handle: u64, error: u32) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
}

/// Appends a structured reply chunk header; the caller appends `length` bytes.
pub fn put_chunk_header(out: &mut Vec<u8>, flags: u16, kind: u16, handle: u64, length: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}
