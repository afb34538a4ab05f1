//! `Stripe`: one set of S bricks over which every object is cut into
//! stripe units (option `stripe-unit`, default 128 KiB) dealt round robin:
//! unit `n` of the object (bytes `[n U, (n + 1) U)`) is unit `n / S` of
//! column `n % S`. No redundancy: a column that is down makes its units
//! unavailable.
//!
//! Each column is a [`crate::Replicate`] of one brick holding the same Fid
//! at *column* offsets, so the columns reuse the replica set's lease and
//! epoch fencing, activity log, CRC checks and chunking unchanged; this
//! translator only maps offsets. The object's size record lives on column
//! 0. Several stripe sets under [`crate::Distribute`] make a
//! distributed-stripe volume (chunks of the object are placed on sets by
//! hash first, then striped inside their set).

use std::sync::Arc;

use transport::BoxFuture;

use crate::error::Result;
use crate::xlator::{lease_all, Fid, LeaseAction, LeaseOutcome, Translator};

/// A run of the object that lies in one column, contiguous there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnPiece {
    /// Which column (brick of the set).
    pub column: usize,
    /// Offset in the column's object.
    pub col_offset: u64,
    /// Length.
    pub len: u64,
    /// Offset of the run inside the request.
    pub at: u64,
}

/// Stripes an object over its columns.
pub struct Stripe {
    unit: u64,
    columns: Vec<Arc<dyn Translator>>,
}

impl Stripe {
    /// A stripe over `columns` (in set order) with stripe unit `unit`
    /// (bytes, > 0).
    pub fn new(unit: u64, columns: Vec<Arc<dyn Translator>>) -> Stripe {
        Stripe {
            unit: unit.max(1),
            columns,
        }
    }

    /// Cuts `[offset, offset + len)` into per-column runs, in request
    /// order. With `merge`, a run that continues the previous run of its
    /// column in column space is joined to it (for punch and zero, where
    /// the runs need not follow request order).
    pub fn pieces(&self, offset: u64, len: u64, merge: bool) -> Vec<ColumnPiece> {
        let s = self.columns.len() as u64;
        let mut out: Vec<ColumnPiece> = Vec::new();
        let mut last_of: Vec<Option<usize>> = vec![None; self.columns.len()];
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let unit = pos / self.unit;
            let within = pos % self.unit;
            let n = (self.unit - within).min(len - done);
            let column = (unit % s) as usize;
            let col_offset = (unit / s) * self.unit + within;
            let joined = merge
                && last_of[column].is_some_and(|k| {
                    let p = &mut out[k];
                    if p.col_offset + p.len == col_offset {
                        p.len += n;
                        true
                    } else {
                        false
                    }
                });
            if !joined {
                last_of[column] = Some(out.len());
                out.push(ColumnPiece {
                    column,
                    col_offset,
                    len: n,
                    at: done,
                });
            }
            done += n;
        }
        out
    }

    async fn range(&self, zero: bool, fid: Fid, offset: u64, len: u64) -> Result<()> {
        for p in self.pieces(offset, len, true) {
            let c = &self.columns[p.column];
            if zero {
                c.zero(fid, p.col_offset, p.len).await?;
            } else {
                c.punch(fid, p.col_offset, p.len).await?;
            }
        }
        Ok(())
    }
}

impl Translator for Stripe {
    fn read(&self, fid: Fid, offset: u64, len: u64) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            let mut out = vec![0u8; len as usize];
            for p in self.pieces(offset, len, false) {
                let data = self.columns[p.column]
                    .read(fid, p.col_offset, p.len)
                    .await?;
                out[p.at as usize..(p.at + p.len) as usize].copy_from_slice(&data);
            }
            Ok(out)
        })
    }

    fn write<'a>(&'a self, fid: Fid, offset: u64, data: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for p in self.pieces(offset, data.len() as u64, false) {
                self.columns[p.column]
                    .write(
                        fid,
                        p.col_offset,
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
            for c in &self.columns {
                c.flush(fid).await?;
            }
            Ok(())
        })
    }

    fn size(&self, fid: Fid) -> BoxFuture<'_, Result<u64>> {
        self.columns[0].size(fid)
    }

    fn grow(&self, fid: Fid, size: u64) -> BoxFuture<'_, Result<()>> {
        self.columns[0].grow(fid, size)
    }

    fn lease(&self, fid: Fid, action: LeaseAction) -> BoxFuture<'_, Result<LeaseOutcome>> {
        Box::pin(lease_all(&self.columns, fid, action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Nothing;
    impl Translator for Nothing {
        fn read(&self, _: Fid, _: u64, len: u64) -> BoxFuture<'_, Result<Vec<u8>>> {
            Box::pin(async move { Ok(vec![0; len as usize]) })
        }
        fn write<'a>(&'a self, _: Fid, _: u64, _: &'a [u8]) -> BoxFuture<'a, Result<()>> {
            Box::pin(async { Ok(()) })
        }
        fn punch(&self, _: Fid, _: u64, _: u64) -> BoxFuture<'_, Result<()>> {
            Box::pin(async { Ok(()) })
        }
        fn zero(&self, _: Fid, _: u64, _: u64) -> BoxFuture<'_, Result<()>> {
            Box::pin(async { Ok(()) })
        }
        fn flush(&self, _: Fid) -> BoxFuture<'_, Result<()>> {
            Box::pin(async { Ok(()) })
        }
        fn size(&self, _: Fid) -> BoxFuture<'_, Result<u64>> {
            Box::pin(async { Ok(0) })
        }
        fn grow(&self, _: Fid, _: u64) -> BoxFuture<'_, Result<()>> {
            Box::pin(async { Ok(()) })
        }
        fn lease(&self, _: Fid, _: LeaseAction) -> BoxFuture<'_, Result<LeaseOutcome>> {
            Box::pin(async { Ok(LeaseOutcome::default()) })
        }
    }

    fn stripe(count: usize, unit: u64) -> Stripe {
        Stripe::new(
            unit,
            (0..count)
                .map(|_| Arc::new(Nothing) as Arc<dyn Translator>)
                .collect(),
        )
    }

    #[test]
    fn units_go_round_robin() {
        let s = stripe(4, 100);
        let p = s.pieces(350, 500, false);
        assert_eq!(
            p[0],
            ColumnPiece {
                column: 3,
                col_offset: 50,
                len: 50,
                at: 0
            }
        );
        assert_eq!(
            p[1],
            ColumnPiece {
                column: 0,
                col_offset: 100,
                len: 100,
                at: 50
            }
        );
        assert_eq!(p.len(), 6);
        // Merged: column 0 holds units 4 and 8 (column units 1 and 2).
        let m = s.pieces(0, 1200, true);
        assert_eq!(m.len(), 4);
        assert_eq!(
            m[0],
            ColumnPiece {
                column: 0,
                col_offset: 0,
                len: 300,
                at: 0
            }
        );
    }

    proptest! {
        /// Every byte of the request maps to exactly one column byte, and
        /// distinct object bytes never share a column byte.
        #[test]
        fn mapping_is_a_bijection(count in 1usize..6, unit in 1u64..50, offset in 0u64..1000, len in 0u64..600, merge in any::<bool>()) {
            let s = stripe(count, unit);
            let pieces = s.pieces(offset, len, merge);
            let mut seen = std::collections::HashSet::new();
            let mut total = 0;
            for p in &pieces {
                total += p.len;
                for k in 0..p.len {
                    prop_assert!(seen.insert((p.column, p.col_offset + k)));
                    if !merge {
                        let x = offset + p.at + k;
                        let unit_no = x / unit;
                        prop_assert_eq!(p.column as u64, unit_no % count as u64);
                        prop_assert_eq!(p.col_offset + k, unit_no / count as u64 * unit + x % unit);
                    }
                }
            }
            prop_assert_eq!(total, len);
        }
    }
}
