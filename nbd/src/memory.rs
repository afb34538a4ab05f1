//! A sparse in-memory export, for tests and demos (its contents die with it).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use iobuf::IoBuf;

use crate::export::{Export, ExportFuture, Extent, ReadData, ZeroFlags};

/// Allocation unit: pages never written (or punched) are holes.
pub const PAGE: u64 = 4096;

/// A sparse export held in memory, allocated in 4 KiB pages.
///
/// Flush is a no-op and every connection sees the same pages, so flush and
/// FUA trivially hold across connections (CAN_MULTI_CONN).
#[derive(Debug)]
pub struct MemoryExport {
    size: u64,
    pages: Mutex<HashMap<u64, Box<[u8]>>>,
}

impl MemoryExport {
    /// An all-zero (all-hole) export of `size` bytes.
    pub fn new(size: u64) -> MemoryExport {
        MemoryExport {
            size,
            pages: Mutex::new(HashMap::new()),
        }
    }

    /// Number of allocated pages (for tests of punching).
    pub fn allocated_pages(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Box<[u8]>>> {
        // A panic while holding the lock cannot leave a page half-updated in
        // a way that matters more than the panic itself; keep serving.
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `f(page, start_in_page, end_in_page, pos_in_range)` for each page piece.
    fn for_pieces(offset: u64, length: u64, mut f: impl FnMut(u64, usize, usize, usize)) {
        let mut at = offset;
        let end = offset + length;
        while at < end {
            let page = at / PAGE;
            let s = (at % PAGE) as usize;
            let e = ((end - page * PAGE).min(PAGE)) as usize;
            f(page, s, e, (at - offset) as usize);
            at = page * PAGE + e as u64;
        }
    }

    fn zero_range(&self, offset: u64, length: u64, punch: bool) {
        let mut pages = self.lock();
        Self::for_pieces(offset, length, |page, s, e, _| {
            if punch && s == 0 && e == PAGE as usize {
                pages.remove(&page);
            } else if let Some(p) = pages.get_mut(&page) {
                p[s..e].fill(0);
            } else if !punch {
                pages.insert(page, vec![0u8; PAGE as usize].into_boxed_slice());
            }
        });
    }
}

impl Export for MemoryExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, mut buf: IoBuf) -> ExportFuture<'_, ReadData> {
        let mut holes: Vec<Range<u32>> = Vec::new();
        {
            let pages = self.lock();
            let out = buf.as_mut_slice();
            Self::for_pieces(offset, out.len() as u64, |page, s, e, pos| {
                let dst = &mut out[pos..pos + (e - s)];
                match pages.get(&page) {
                    Some(p) => dst.copy_from_slice(&p[s..e]),
                    None => {
                        dst.fill(0);
                        let (hs, he) = (pos as u32, (pos + e - s) as u32);
                        match holes.last_mut() {
                            Some(h) if h.end == hs => h.end = he,
                            _ => holes.push(hs..he),
                        }
                    }
                }
            });
        }
        Box::pin(std::future::ready(Ok(ReadData { data: buf, holes })))
    }

    fn write(&self, offset: u64, data: IoBuf, _fua: bool) -> ExportFuture<'_, ()> {
        {
            let mut pages = self.lock();
            let src = data.as_slice();
            Self::for_pieces(offset, src.len() as u64, |page, s, e, pos| {
                let p = pages
                    .entry(page)
                    .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
                p[s..e].copy_from_slice(&src[pos..pos + (e - s)]);
            });
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn flush(&self) -> ExportFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn can_trim(&self) -> bool {
        true
    }

    fn trim(&self, offset: u64, length: u32, _fua: bool) -> ExportFuture<'_, ()> {
        self.zero_range(offset, u64::from(length), true);
        Box::pin(std::future::ready(Ok(())))
    }

    fn can_fast_zero(&self) -> bool {
        true
    }

    fn write_zeroes(&self, offset: u64, length: u32, flags: ZeroFlags) -> ExportFuture<'_, ()> {
        self.zero_range(offset, u64::from(length), flags.may_punch);
        Box::pin(std::future::ready(Ok(())))
    }

    fn block_status(&self, offset: u64, length: u32) -> ExportFuture<'_, Vec<Extent>> {
        let mut extents: Vec<Extent> = Vec::new();
        {
            let pages = self.lock();
            Self::for_pieces(offset, u64::from(length), |page, s, e, _| {
                let hole = !pages.contains_key(&page);
                let n = (e - s) as u64;
                match extents.last_mut() {
                    Some(x) if x.hole == hole => x.length += n,
                    _ => extents.push(Extent {
                        length: n,
                        hole,
                        zero: hole,
                    }),
                }
            });
        }
        Box::pin(std::future::ready(Ok(extents)))
    }

    fn can_multi_conn(&self) -> bool {
        true
    }
}
