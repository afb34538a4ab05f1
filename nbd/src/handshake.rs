//! The fixed-newstyle handshake as a sans-IO state machine.
//!
//! Bytes from the client go in through [`Handshake::feed`]; bytes for the
//! client come out of [`Handshake::take_output`]; [`Handshake::step`] says
//! whether to keep going, close, or enter transmission. It never touches a
//! socket and never blocks. Clients that do not speak fixed newstyle are
//! refused (closed), as are unknown client flags (the spec requires it).

use crate::export::{Export, ExportSet};
use crate::wire::{self, *};

/// Option data larger than this is answered with NBD_REP_ERR_TOO_BIG and
/// skipped: the largest legal option (INFO with a 4096-byte name and a few
/// info requests, or a handful of meta-context queries) is far smaller.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;

/// What the client chose, handed to the transmission phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Export name as found in the [`ExportSet`] (the default export resolved).
    pub export_name: String,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// Context id of `base:allocation`, if the client selected it for this export.
    pub base_allocation: Option<u32>,
    /// Export size at negotiation time.
    pub size: u64,
    /// Transmission flags sent to the client.
    pub flags: u16,
    /// Bytes the client sent after the handshake (pipelined requests).
    pub leftover: Vec<u8>,
}

/// Why the handshake ended without transmission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeClose {
    /// The client sent NBD_OPT_ABORT.
    #[error("client aborted the handshake")]
    Abort,
    /// Client flags lacked FIXED_NEWSTYLE or had unknown bits.
    #[error("client flags {0:#x} refused (fixed newstyle only)")]
    BadClientFlags(u32),
    /// An option did not start with IHAVEOPT.
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    /// NBD_OPT_EXPORT_NAME named an export that does not exist.
    #[error("NBD_OPT_EXPORT_NAME for unknown export {0:?}")]
    UnknownExport(String),
    /// The server is shutting down.
    #[error("server shutting down")]
    Shutdown,
}

/// Result of [`Handshake::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeStep {
    /// Send the output, then feed more bytes.
    NeedMore,
    /// Send the output, then enter transmission.
    Done(Negotiated),
    /// Send the output, then close the connection.
    Close(HandshakeClose),
}

#[derive(Debug)]
enum State {
    ClientFlags,
    OptionHeader,
    OptionData { option: u32, length: u32 },
    Discard { remaining: u64 },
    Finished,
}

#[derive(Debug, Clone)]
struct MetaSelection {
    export: String,
    base_allocation: bool,
}

/// Server side of the NBD handshake.
#[derive(Debug)]
pub struct Handshake {
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    no_zeroes: bool,
    structured: bool,
    meta: Option<MetaSelection>,
    shutting_down: bool,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake::new()
    }
}

/// Context id given to base:allocation by SET_META_CONTEXT.
pub const BASE_ALLOCATION_ID: u32 = 1;

impl Handshake {
    /// A new handshake; the greeting is already queued in the output.
    pub fn new() -> Handshake {
        Handshake {
            state: State::ClientFlags,
            input: Vec::new(),
            output: wire::greeting().to_vec(),
            no_zeroes: false,
            structured: false,
            meta: None,
            shutting_down: false,
        }
    }

    /// Bytes received from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// Bytes to send to the client (drains the queue).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// From now on every option is refused with NBD_REP_ERR_SHUTDOWN.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Handles every complete message in the input.
    pub fn step(&mut self, exports: &ExportSet) -> HandshakeStep {
        loop {
            match self.state {
                State::Finished => return HandshakeStep::NeedMore,
                State::ClientFlags => {
                    if self.input.len() < CLIENT_FLAGS_LEN {
                        return HandshakeStep::NeedMore;
                    }
                    let flags = be_u32(&self.input, 0);
                    self.input.drain(..CLIENT_FLAGS_LEN);
                    let known = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
                    if flags & !known != 0 || flags & FLAG_C_FIXED_NEWSTYLE == 0 {
                        return self.close(HandshakeClose::BadClientFlags(flags));
                    }
                    self.no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
                    self.state = State::OptionHeader;
                }
                State::OptionHeader => {
                    if self.input.len() < OPT_HEADER_LEN {
                        return HandshakeStep::NeedMore;
                    }
                    let magic = be_u64(&self.input, 0);
                    if magic != IHAVEOPT {
                        return self.close(HandshakeClose::BadOptionMagic(magic));
                    }
                    let option = be_u32(&self.input, OPT_OPTION_OFF);
                    let length = be_u32(&self.input, OPT_LENGTH_OFF);
                    self.input.drain(..OPT_HEADER_LEN);
                    if length > MAX_OPTION_DATA {
                        put_option_reply(
                            &mut self.output,
                            option,
                            REP_ERR_TOO_BIG,
                            b"option data too large",
                        );
                        self.state = State::Discard {
                            remaining: u64::from(length),
                        };
                    } else {
                        self.state = State::OptionData { option, length };
                    }
                }
                State::Discard { remaining } => {
                    let n = remaining.min(self.input.len() as u64);
                    // `n` is at most the input length, a usize.
                    self.input.drain(..n as usize);
                    if remaining - n > 0 {
                        self.state = State::Discard {
                            remaining: remaining - n,
                        };
                        return HandshakeStep::NeedMore;
                    }
                    self.state = State::OptionHeader;
                }
                State::OptionData { option, length } => {
                    let len = length as usize;
                    if self.input.len() < len {
                        return HandshakeStep::NeedMore;
                    }
                    let data: Vec<u8> = self.input.drain(..len).collect();
                    self.state = State::OptionHeader;
                    if let Some(step) = self.on_option(exports, option, &data) {
                        return step;
                    }
                }
            }
        }
    }

    fn close(&mut self, why: HandshakeClose) -> HandshakeStep {
        self.state = State::Finished;
        HandshakeStep::Close(why)
    }

    fn error(&mut self, option: u32, kind: u32, msg: &str) {
        put_option_reply(&mut self.output, option, kind, msg.as_bytes());
    }

    fn transmission_flags(&self, export: &dyn Export) -> u16 {
        let mut f =
            TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_WRITE_ZEROES | TF_SEND_CACHE;
        if export.is_read_only() {
            f |= TF_READ_ONLY;
        }
        if export.can_trim() {
            f |= TF_SEND_TRIM;
        }
        if export.can_fast_zero() {
            f |= TF_SEND_FAST_ZERO;
        }
        if export.can_multi_conn() {
            f |= TF_CAN_MULTI_CONN;
        }
        if self.structured {
            f |= TF_SEND_DF;
        }
        f
    }

    /// Handles one option; `Some` ends the handshake.
    fn on_option(
        &mut self,
        exports: &ExportSet,
        option: u32,
        data: &[u8],
    ) -> Option<HandshakeStep> {
        if self.shutting_down {
            if option == OPT_EXPORT_NAME {
                return Some(self.close(HandshakeClose::Shutdown));
            }
            self.error(option, REP_ERR_SHUTDOWN, "server shutting down");
            return None;
        }
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(data).into_owned();
                let Some(entry) = exports.get(&name) else {
                    return Some(self.close(HandshakeClose::UnknownExport(name)));
                };
                let flags = self.transmission_flags(entry.export.as_ref());
                let size = entry.export.size();
                self.output.extend_from_slice(&size.to_be_bytes());
                self.output.extend_from_slice(&flags.to_be_bytes());
                if !self.no_zeroes {
                    self.output.extend_from_slice(&[0u8; 124]);
                }
                Some(self.finish(entry.name.clone(), size, flags))
            }
            OPT_ABORT => {
                put_option_reply(&mut self.output, option, REP_ACK, &[]);
                Some(self.close(HandshakeClose::Abort))
            }
            OPT_LIST => {
                if !data.is_empty() {
                    self.error(option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
                    return None;
                }
                for e in exports.iter() {
                    let mut d = Vec::with_capacity(4 + e.name.len() + e.description.len());
                    d.extend_from_slice(&(e.name.len() as u32).to_be_bytes());
                    d.extend_from_slice(e.name.as_bytes());
                    d.extend_from_slice(e.description.as_bytes());
                    put_option_reply(&mut self.output, option, REP_SERVER, &d);
                }
                put_option_reply(&mut self.output, option, REP_ACK, &[]);
                None
            }
            OPT_INFO | OPT_GO => self.on_info(exports, option, data),
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    self.error(
                        option,
                        REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    );
                    return None;
                }
                self.structured = true;
                put_option_reply(&mut self.output, option, REP_ACK, &[]);
                None
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                self.on_meta_context(exports, option, data);
                None
            }
            _ => {
                self.error(option, REP_ERR_UNSUP, "option not supported");
                None
            }
        }
    }

    fn finish(&mut self, export_name: String, size: u64, flags: u16) -> HandshakeStep {
        self.state = State::Finished;
        let base_allocation = match &self.meta {
            Some(m) if m.export == export_name && m.base_allocation => Some(BASE_ALLOCATION_ID),
            _ => None,
        };
        HandshakeStep::Done(Negotiated {
            export_name,
            structured: self.structured,
            base_allocation,
            size,
            flags,
            leftover: std::mem::take(&mut self.input),
        })
    }

    /// NBD_OPT_INFO / NBD_OPT_GO: u32 name length, name, u16 count, u16 × count.
    fn on_info(&mut self, exports: &ExportSet, option: u32, data: &[u8]) -> Option<HandshakeStep> {
        let mut r = Reader::new(data);
        let parsed = (|| {
            let name = r.string32()?;
            let n = r.u16()?;
            let mut requests = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                requests.push(r.u16()?);
            }
            r.at_end().then_some((name, requests))
        })();
        let Some((name, requests)) = parsed else {
            self.error(option, REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO");
            return None;
        };
        let Some(entry) = exports.get(&name) else {
            self.error(option, REP_ERR_UNKNOWN, "no such export");
            return None;
        };
        let export = entry.export.clone();
        let flags = self.transmission_flags(export.as_ref());
        let size = export.size();
        let mut d = Vec::with_capacity(12);
        d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        d.extend_from_slice(&size.to_be_bytes());
        d.extend_from_slice(&flags.to_be_bytes());
        put_option_reply(&mut self.output, option, REP_INFO, &d);
        if requests.contains(&INFO_NAME) {
            let mut d = INFO_NAME.to_be_bytes().to_vec();
            d.extend_from_slice(entry.name.as_bytes());
            put_option_reply(&mut self.output, option, REP_INFO, &d);
        }
        if requests.contains(&INFO_DESCRIPTION) && !entry.description.is_empty() {
            let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
            d.extend_from_slice(entry.description.as_bytes());
            put_option_reply(&mut self.output, option, REP_INFO, &d);
        }
        // Sent whether asked or not: with a minimum of 1 no client can be
        // hurt by it, and it tells every client the real maximum.
        let bs = export.block_size();
        let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        d.extend_from_slice(&bs.minimum.to_be_bytes());
        d.extend_from_slice(&bs.preferred.to_be_bytes());
        d.extend_from_slice(&bs.maximum.to_be_bytes());
        put_option_reply(&mut self.output, option, REP_INFO, &d);
        put_option_reply(&mut self.output, option, REP_ACK, &[]);
        if option == OPT_GO {
            let name = entry.name.clone();
            return Some(self.finish(name, size, flags));
        }
        None
    }

    /// LIST/SET_META_CONTEXT: u32 name length, name, u32 count, (u32 len, query) × count.
    fn on_meta_context(&mut self, exports: &ExportSet, option: u32, data: &[u8]) {
        if !self.structured {
            self.error(option, REP_ERR_INVALID, "structured replies not negotiated");
            return;
        }
        let mut r = Reader::new(data);
        let parsed = (|| {
            let name = r.string32()?;
            let n = r.u32()?;
            let mut queries = Vec::new();
            for _ in 0..n {
                let q = r.string32()?;
                if q.len() > 4096 {
                    return None;
                }
                queries.push(q);
            }
            r.at_end().then_some((name, queries))
        })();
        let Some((name, queries)) = parsed else {
            self.error(option, REP_ERR_INVALID, "malformed meta context option");
            return;
        };
        let Some(entry) = exports.get(&name) else {
            self.error(option, REP_ERR_UNKNOWN, "no such export");
            return;
        };
        let list = option == OPT_LIST_META_CONTEXT;
        let selected = if list && queries.is_empty() {
            true
        } else {
            queries
                .iter()
                .any(|q| q == BASE_ALLOCATION || (list && q == "base:"))
        };
        if selected {
            let id = if list { 0 } else { BASE_ALLOCATION_ID };
            let mut d = id.to_be_bytes().to_vec();
            d.extend_from_slice(BASE_ALLOCATION.as_bytes());
            put_option_reply(&mut self.output, option, REP_META_CONTEXT, &d);
        }
        if !list {
            self.meta = Some(MetaSelection {
                export: entry.name.clone(),
                base_allocation: selected,
            });
        }
        put_option_reply(&mut self.output, option, REP_ACK, &[]);
    }
}

/// Bounds-checked reader over option data.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader { b, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| be_u16(s, 0))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|s| be_u32(s, 0))
    }
    fn string32(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).ok()
    }
    fn at_end(&self) -> bool {
        self.pos == self.b.len()
    }
}
