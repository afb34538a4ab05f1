//! The RDMA envelope: what precedes every frame sent by SEND (sans-IO).
//!
//! A receive slot holds one envelope and, for kind `FRAME`, one whole wire
//! frame (`docs/wire.md`) right after it. The envelope carries the credits
//! the sender hands back: receives it has posted again since its last
//! message. Bulk data never travels by SEND; it moves by RDMA READ/WRITE
//! named by the frame's `DataRef::Remote`.
//!
//! ```text
//!  0        4    5    6         8             12            16
//!  +--------+----+----+---------+-------------+-------------+---------
//!  | magic  |ver |kind| credits |  frame_len  |  reserved   | frame ...
//!  | "SRDM" | 1  |1/2 |   u16   |     u32     |   u32 = 0   | (frame_len)
//!  +--------+----+----+---------+-------------+-------------+---------
//! ```
//!
//! - kind 1 (`KIND_FRAME`): a frame of `frame_len` bytes follows.
//! - kind 2 (`KIND_CREDIT`): a credit update alone; `frame_len` is 0.
//!
//! All integers are little-endian; the reserved word must be zero.

use thiserror::Error;

/// Envelope magic, ASCII `SRDM`.
pub const ENV_MAGIC: [u8; 4] = *b"SRDM";
/// Envelope version.
pub const ENV_VERSION: u8 = 1;
/// Encoded envelope size.
pub const ENV_LEN: usize = 16;
/// Offsets of the envelope's fields.
pub const E_MAGIC: usize = 0;
pub const E_VERSION: usize = 4;
pub const E_KIND: usize = 5;
pub const E_CREDITS: usize = 6;
pub const E_FRAME_LEN: usize = 8;
pub const E_RESERVED: usize = 12;
/// A frame follows.
pub const KIND_FRAME: u8 = 1;
/// A credit update alone.
pub const KIND_CREDIT: u8 = 2;

/// A decoded envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// Receives the sender posted again (credits for the receiver to use).
    pub credits: u16,
    /// Length of the frame that follows (`None` for a credit update).
    pub frame_len: Option<u32>,
}

/// Why an envelope was refused (the connection is then torn down: the peer
/// does not speak this protocol).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("message of {len} bytes is shorter than the {ENV_LEN}-byte envelope")]
    Short { len: usize },
    #[error("bad envelope magic {0:02x?}")]
    Magic([u8; 4]),
    #[error("envelope version {0} (want {ENV_VERSION})")]
    Version(u8),
    #[error("unknown envelope kind {0}")]
    Kind(u8),
    #[error("envelope reserved word is {0:#x}, not 0")]
    Reserved(u32),
    #[error("envelope names a {frame_len}-byte frame but {have} bytes arrived")]
    FrameLen { frame_len: u32, have: usize },
}

impl Envelope {
    /// Writes the envelope into `b[..ENV_LEN]`.
    pub fn encode(&self, b: &mut [u8]) {
        b[E_MAGIC..E_VERSION].copy_from_slice(&ENV_MAGIC);
        b[E_VERSION] = ENV_VERSION;
        b[E_KIND] = match self.frame_len {
            Some(_) => KIND_FRAME,
            None => KIND_CREDIT,
        };
        b[E_CREDITS..E_FRAME_LEN].copy_from_slice(&self.credits.to_le_bytes());
        b[E_FRAME_LEN..E_RESERVED].copy_from_slice(&self.frame_len.unwrap_or(0).to_le_bytes());
        b[E_RESERVED..ENV_LEN].fill(0);
    }

    /// Reads the envelope at the start of a received message of `msg.len()`
    /// bytes and checks the frame length against what arrived.
    pub fn decode(msg: &[u8]) -> Result<Envelope, EnvelopeError> {
        if msg.len() < ENV_LEN {
            return Err(EnvelopeError::Short { len: msg.len() });
        }
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&msg[E_MAGIC..E_VERSION]);
        if magic != ENV_MAGIC {
            return Err(EnvelopeError::Magic(magic));
        }
        if msg[E_VERSION] != ENV_VERSION {
            return Err(EnvelopeError::Version(msg[E_VERSION]));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]]);
        let reserved = u32_at(E_RESERVED);
        if reserved != 0 {
            return Err(EnvelopeError::Reserved(reserved));
        }
        let credits = u16::from_le_bytes([msg[E_CREDITS], msg[E_CREDITS + 1]]);
        let frame_len = u32_at(E_FRAME_LEN);
        match msg[E_KIND] {
            KIND_FRAME => {
                if frame_len as usize != msg.len() - ENV_LEN {
                    return Err(EnvelopeError::FrameLen {
                        frame_len,
                        have: msg.len() - ENV_LEN,
                    });
                }
                Ok(Envelope {
                    credits,
                    frame_len: Some(frame_len),
                })
            }
            KIND_CREDIT => {
                if frame_len != 0 || msg.len() != ENV_LEN {
                    return Err(EnvelopeError::FrameLen {
                        frame_len,
                        have: msg.len() - ENV_LEN,
                    });
                }
                Ok(Envelope {
                    credits,
                    frame_len: None,
                })
            }
            k => Err(EnvelopeError::Kind(k)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_bytes_are_pinned() {
        let mut b = [0u8; ENV_LEN + 3];
        Envelope {
            credits: 0x0102,
            frame_len: Some(3),
        }
        .encode(&mut b);
        assert_eq!(
            &b[..ENV_LEN],
            &[b'S', b'R', b'D', b'M', 1, 1, 0x02, 0x01, 3, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Envelope::decode(&b).unwrap(),
            Envelope {
                credits: 0x102,
                frame_len: Some(3)
            }
        );
        let mut c = [0u8; ENV_LEN];
        Envelope {
            credits: 7,
            frame_len: None,
        }
        .encode(&mut c);
        assert_eq!(c[E_KIND], KIND_CREDIT);
        assert_eq!(Envelope::decode(&c).unwrap().frame_len, None);
    }

    #[test]
    fn bad_envelopes_are_refused() {
        let mut b = [0u8; ENV_LEN];
        Envelope {
            credits: 1,
            frame_len: None,
        }
        .encode(&mut b);
        assert_eq!(
            Envelope::decode(&b[..4]),
            Err(EnvelopeError::Short { len: 4 })
        );
        let mut m = b;
        m[0] = b'X';
        assert!(matches!(Envelope::decode(&m), Err(EnvelopeError::Magic(_))));
        let mut v = b;
        v[E_VERSION] = 2;
        assert_eq!(Envelope::decode(&v), Err(EnvelopeError::Version(2)));
        let mut k = b;
        k[E_KIND] = 9;
        assert_eq!(Envelope::decode(&k), Err(EnvelopeError::Kind(9)));
        let mut r = b;
        r[E_RESERVED] = 1;
        assert_eq!(Envelope::decode(&r), Err(EnvelopeError::Reserved(1)));
        let mut f = b;
        f[E_KIND] = KIND_FRAME;
        f[E_FRAME_LEN] = 5;
        assert!(matches!(
            Envelope::decode(&f),
            Err(EnvelopeError::FrameLen { .. })
        ));
    }
}
