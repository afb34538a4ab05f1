//! Reed-Solomon erasure coding over GF(2^8) for dispersed volumes: K data
//! fragments and M parity fragments per stripe; any K of the K+M rebuild
//! the others.
//!
//! Two backends compute the same code, byte for byte:
//! - [`portable`]: the `reed-solomon-erasure` crate (pure Rust, with its
//!   C SIMD kernels where they build). It defines the code: its systematic
//!   generator matrix (identity on top of a parity matrix derived from a
//!   Vandermonde matrix) is what every fragment on disk was made with.
//! - [`isal`]: Intel ISA-L, loaded at run time (`libisal.so.2`) so that the
//!   binary runs where it is missing. ISA-L takes any coefficient matrix:
//!   we give it the portable code's parity matrix, read off once by
//!   encoding unit vectors, and for reconstruction the inverse of the
//!   surviving rows' sub-matrix.
//!
//! [`Codec`] picks ISA-L when it loads and says once (in the log) which
//! backend it uses. This module does no I/O and knows nothing of bricks.

pub mod isal;
pub mod portable;

use std::sync::Once;

use thiserror::Error;

/// Most fragments one stripe may have (GF(2^8) has 256 elements).
pub const MAX_FRAGMENTS: usize = 256;

/// What went wrong coding a stripe.
#[derive(Debug, Error)]
pub enum EcError {
    /// K or M is out of range.
    #[error("disperse {data}+{parity}: {reason}")]
    Geometry {
        data: usize,
        parity: usize,
        reason: &'static str,
    },
    /// Fragments of one stripe have different lengths, or the wrong count.
    #[error("disperse {data}+{parity}: {reason}")]
    Shape {
        data: usize,
        parity: usize,
        reason: String,
    },
    /// Fewer than K fragments survive.
    #[error("disperse {data}+{parity}: {have} fragments left, {data} needed")]
    TooFewFragments {
        data: usize,
        parity: usize,
        have: usize,
    },
    /// ISA-L was asked for but cannot be used.
    #[error("ISA-L: {0}")]
    Isal(String),
    /// The portable backend refused (a bug in the caller's shapes).
    #[error("reed-solomon-erasure: {0:?}")]
    Portable(reed_solomon_erasure::Error),
}

/// Which implementation codes the stripes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `reed-solomon-erasure`.
    Portable,
    /// Intel ISA-L, loaded at run time.
    Isal,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Portable => "portable (reed-solomon-erasure)",
            Backend::Isal => "ISA-L",
        })
    }
}

/// Checks a K+M geometry.
pub fn check_geometry(data: usize, parity: usize) -> Result<(), EcError> {
    let reason = if data == 0 {
        "needs at least one data fragment"
    } else if parity == 0 {
        "needs at least one redundancy fragment"
    } else if data + parity > MAX_FRAGMENTS {
        "has more than 256 fragments"
    } else {
        return Ok(());
    };
    Err(EcError::Geometry {
        data,
        parity,
        reason,
    })
}

enum Engine {
    Portable,
    Isal(isal::IsalCodec),
}

/// A K+M Reed-Solomon code with the fastest backend available.
pub struct Codec {
    portable: portable::PortableCodec,
    engine: Engine,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("data", &self.data_fragments())
            .field("parity", &self.parity_fragments())
            .field("backend", &self.backend())
            .finish()
    }
}

static SAID: Once = Once::new();

impl Codec {
    /// A K+M code on ISA-L when `libisal.so.2` loads, else portable.
    pub fn new(data: usize, parity: usize) -> Result<Codec, EcError> {
        let portable = portable::PortableCodec::new(data, parity)?;
        let engine = match isal::IsalCodec::new(&portable) {
            Ok(c) => Engine::Isal(c),
            Err(e) => {
                SAID.call_once(|| {
                    tracing::info!(reason = %e, "erasure coding on the portable backend");
                });
                Engine::Portable
            }
        };
        if matches!(engine, Engine::Isal(_)) {
            SAID.call_once(|| tracing::info!("erasure coding on ISA-L"));
        }
        Ok(Codec { portable, engine })
    }

    /// A K+M code on the backend named; `Isal` fails when ISA-L does not
    /// load.
    pub fn with_backend(data: usize, parity: usize, backend: Backend) -> Result<Codec, EcError> {
        let portable = portable::PortableCodec::new(data, parity)?;
        let engine = match backend {
            Backend::Portable => Engine::Portable,
            Backend::Isal => Engine::Isal(isal::IsalCodec::new(&portable)?),
        };
        Ok(Codec { portable, engine })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        match self.engine {
            Engine::Portable => Backend::Portable,
            Engine::Isal(_) => Backend::Isal,
        }
    }

    /// K.
    pub fn data_fragments(&self) -> usize {
        self.portable.data
    }

    /// M.
    pub fn parity_fragments(&self) -> usize {
        self.portable.parity
    }

    /// The parity rows of the generator matrix, M rows of K coefficients.
    pub fn parity_matrix(&self) -> &[u8] {
        &self.portable.matrix
    }

    fn check(&self, data: &[&[u8]], parity: usize) -> Result<usize, EcError> {
        let (k, m) = (self.data_fragments(), self.parity_fragments());
        let shape = |reason: String| EcError::Shape {
            data: k,
            parity: m,
            reason,
        };
        if data.len() != k || parity != m {
            return Err(shape(format!(
                "{} data and {parity} parity fragments given",
                data.len()
            )));
        }
        let len = data[0].len();
        if data.iter().any(|d| d.len() != len) {
            return Err(shape("data fragments differ in length".into()));
        }
        Ok(len)
    }

    /// Computes the M parity fragments of K data fragments of one length
    /// into `parity` (each of that length).
    pub fn encode_into(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), EcError> {
        let len = self.check(data, parity.len())?;
        if parity.iter().any(|p| p.len() != len) {
            return Err(EcError::Shape {
                data: self.data_fragments(),
                parity: self.parity_fragments(),
                reason: "parity buffers differ in length from the data".into(),
            });
        }
        match &self.engine {
            Engine::Portable => self.portable.encode_into(data, parity),
            Engine::Isal(c) => c.encode_into(data, parity),
        }
    }

    /// The M parity fragments of K data fragments of one length.
    pub fn encode(&self, data: &[&[u8]]) -> Result<Vec<Vec<u8>>, EcError> {
        let len = self.check(data, self.parity_fragments())?;
        let mut parity = vec![vec![0u8; len]; self.parity_fragments()];
        let mut refs: Vec<&mut [u8]> = parity.iter_mut().map(|p| p.as_mut_slice()).collect();
        self.encode_into(data, &mut refs)?;
        Ok(parity)
    }

    /// Fills every `None` of the K+M fragments (data first, then parity)
    /// from any K present ones, which must share one length.
    pub fn reconstruct(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), EcError> {
        let (k, m) = (self.data_fragments(), self.parity_fragments());
        if shards.len() != k + m {
            return Err(EcError::Shape {
                data: k,
                parity: m,
                reason: format!("{} fragments given", shards.len()),
            });
        }
        let have = shards.iter().filter(|s| s.is_some()).count();
        if have < k {
            return Err(EcError::TooFewFragments {
                data: k,
                parity: m,
                have,
            });
        }
        if have == k + m {
            return Ok(());
        }
        let mut lens = shards.iter().flatten().map(Vec::len);
        let len = lens.next().unwrap_or(0);
        if lens.any(|l| l != len) {
            return Err(EcError::Shape {
                data: k,
                parity: m,
                reason: "fragments differ in length".into(),
            });
        }
        match &self.engine {
            Engine::Portable => self.portable.reconstruct(shards),
            Engine::Isal(c) => c.reconstruct(shards, len),
        }
    }
}
