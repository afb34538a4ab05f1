//! The portable backend: `reed-solomon-erasure` (GF(2^8), polynomial
//! 0x11d). Its generator matrix defines Stretto's code.

use reed_solomon_erasure::galois_8::ReedSolomon;

use super::{check_geometry, EcError};

/// A K+M code on `reed-solomon-erasure`.
pub struct PortableCodec {
    pub(crate) data: usize,
    pub(crate) parity: usize,
    rs: ReedSolomon,
    /// Parity rows of the generator matrix (M × K, row-major), read off by
    /// encoding unit vectors: what other backends must use to agree.
    pub(crate) matrix: Vec<u8>,
}

impl PortableCodec {
    /// A K+M code.
    pub fn new(data: usize, parity: usize) -> Result<PortableCodec, EcError> {
        check_geometry(data, parity)?;
        let rs = ReedSolomon::new(data, parity).map_err(EcError::Portable)?;
        // Column j of the parity matrix is the parity of the unit vector
        // e_j (one-byte fragments: 1 at j, 0 elsewhere).
        let mut matrix = vec![0u8; parity * data];
        for j in 0..data {
            let unit: Vec<[u8; 1]> = (0..data).map(|i| [u8::from(i == j)]).collect();
            let mut out = vec![[0u8; 1]; parity];
            rs.encode_sep(&unit, &mut out).map_err(EcError::Portable)?;
            for (r, o) in out.iter().enumerate() {
                matrix[r * data + j] = o[0];
            }
        }
        Ok(PortableCodec {
            data,
            parity,
            rs,
            matrix,
        })
    }

    pub(crate) fn encode_into(
        &self,
        data: &[&[u8]],
        parity: &mut [&mut [u8]],
    ) -> Result<(), EcError> {
        self.rs.encode_sep(data, parity).map_err(EcError::Portable)
    }

    pub(crate) fn reconstruct(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), EcError> {
        self.rs.reconstruct(shards).map_err(EcError::Portable)
    }
}
