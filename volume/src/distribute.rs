//! `Distribute`: routes each chunk of an object to one of several sets by
//! hash (see [`crate::xlator::place`]); a request that spans chunks is split
//! and each piece goes to its set. The sets below are any translators
//! (replica sets; a plain distribute volume has sets of one brick).

use std::sync::Arc;

use transport::BoxFuture;

use crate::error::Result;
use crate::xlator::{
    lease_all, place, split, Fid, LeaseAction, LeaseOutcome, Translator, SIZE_CHUNK,
};

/// Hash placement over sets.
pub struct Distribute {
    chunk_size: u64,
    sets: Vec<Arc<dyn Translator>>,
}

impl Distribute {
    /// Stacks over `sets`, in set order (placement depends on it).
    pub fn new(chunk_size: u64, sets: Vec<Arc<dyn Translator>>) -> Distribute {
        Distribute { chunk_size, sets }
    }

    fn set_of(&self, fid: Fid, chunk: u64) -> &Arc<dyn Translator> {
        &self.sets[place(fid, chunk, self.sets.len())]
    }

    async fn range(&self, zero: bool, fid: Fid, offset: u64, len: u64) -> Result<()> {
        for p in split(offset, len, self.chunk_size) {
            let set = self.set_of(fid, p.chunk);
            let at = p.chunk * self.chunk_size + p.offset;
            if zero {
                set.zero(fid, at, p.len).await?;
            } else {
                set.punch(fid, at, p.len).await?;
            }
        }
        Ok(())
    }
}

impl Translator for Distribute {
    fn read(&self, fid: Fid, offset: u64, len: u64) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            let mut out = vec![0u8; len as usize];
            for p in split(offset, len, self.chunk_size) {
                let data = self
                    .set_of(fid, p.chunk)
                    .read(fid, p.chunk * self.chunk_size + p.offset, p.len)
                    .await?;
                out[p.at as usize..(p.at + p.len) as usize].copy_from_slice(&data);
            }
            Ok(out)
        })
    }

    fn write<'a>(&'a self, fid: Fid, offset: u64, data: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for p in split(offset, data.len() as u64, self.chunk_size) {
                self.set_of(fid, p.chunk)
                    .write(
                        fid,
                        p.chunk * self.chunk_size + p.offset,
                        &data[p.at as usize..(p.at + p.len) as usize],
                    )
                    .await?;
            }
            Ok(())
        })
    }

    fn punch(&self, fid: Fid, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.range(false, fid, offset, len))
    }

    fn zero(&self, fid: Fid, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.range(true, fid, offset, len))
    }

    fn flush(&self, fid: Fid) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            for s in &self.sets {
                s.flush(fid).await?;
            }
            Ok(())
        })
    }

    fn size(&self, fid: Fid) -> BoxFuture<'_, Result<u64>> {
        self.set_of(fid, SIZE_CHUNK).size(fid)
    }

    fn grow(&self, fid: Fid, size: u64) -> BoxFuture<'_, Result<()>> {
        self.set_of(fid, SIZE_CHUNK).grow(fid, size)
    }

    fn lease(&self, fid: Fid, action: LeaseAction) -> BoxFuture<'_, Result<LeaseOutcome>> {
        Box::pin(lease_all(&self.sets, fid, action))
    }
}
