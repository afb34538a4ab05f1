//! A persistent map inside the segment: byte-string keys (up to
//! [`MAX_KEY`] bytes) to byte-string records, anchored in one root slot.
//!
//! A chained hash table: a header block, a bucket array of entry offsets, and
//! one heap block per entry. When the table holds more than two entries per
//! bucket on average, an insert doubles the bucket array and relinks every
//! entry, inside the inserting transaction (so the log must hold one 8-byte
//! range per entry; a map of a million entries needs a log of some 24 MiB).
//! Reads go through [`SegmentRead`], so they work on committed state
//! (`&Rvm`) or inside a transaction (`&Transaction`, seeing its changes).
//!
//! What this module must not do: assume anything about the values, or keep
//! state outside the segment (a [`PMap`] is just the header's offset).
//!
//! # Formats
//!
//! ```text
//! header (a heap block's payload; its offset is stored in the root slot)
//!   offset  size  field
//!        0     4  magic "PMAP"                       MAP_OFF_MAGIC
//!        4     4  version (1)                        MAP_OFF_VERSION
//!        8     8  number of entries                  MAP_OFF_COUNT
//!       16     8  number of buckets (power of two)   MAP_OFF_NBUCKETS
//!       24     8  offset of the bucket array         MAP_OFF_BUCKETS
//!       32     8  zero (reserved)
//! bucket array: number-of-buckets x u64 entry offsets (0 = empty chain)
//! entry (a heap block's payload)
//!        0     8  next entry in the chain (0 = end)  ENT_OFF_NEXT
//!        8     8  hash of the key (FNV-1a 64)        ENT_OFF_HASH
//!       16     4  key length k                       ENT_OFF_KEY_LEN
//!       20     4  value length v                     ENT_OFF_VAL_LEN
//!       24     k  key                                ENT_HEADER
//!     24+k     v  value
//! ```
//! A key lands in bucket `hash & (buckets - 1)`.

use super::{heap, Rvm, RvmError, SegmentRead, Transaction};
use super::{CommitMode, ROOT_SLOTS};

/// Longest key in bytes.
pub const MAX_KEY: usize = 255;
/// Header magic ("PMAP").
pub const MAP_MAGIC: u32 = u32::from_le_bytes(*b"PMAP");
/// The only map format version this code reads and writes.
pub const MAP_VERSION: u32 = 1;
/// Offset of the magic in the header.
pub const MAP_OFF_MAGIC: u64 = 0;
/// Offset of the version in the header.
pub const MAP_OFF_VERSION: u64 = 4;
/// Offset of the entry count in the header.
pub const MAP_OFF_COUNT: u64 = 8;
/// Offset of the bucket count in the header.
pub const MAP_OFF_NBUCKETS: u64 = 16;
/// Offset of the bucket array pointer in the header.
pub const MAP_OFF_BUCKETS: u64 = 24;
/// Size of the header.
pub const MAP_HEADER: u64 = 40;
/// Offset of the chain pointer in an entry.
pub const ENT_OFF_NEXT: u64 = 0;
/// Offset of the key hash in an entry.
pub const ENT_OFF_HASH: u64 = 8;
/// Offset of the key length in an entry.
pub const ENT_OFF_KEY_LEN: u64 = 16;
/// Offset of the value length in an entry.
pub const ENT_OFF_VAL_LEN: u64 = 20;
/// Size of an entry's header; the key follows.
pub const ENT_HEADER: u64 = 24;
/// Buckets of a new map.
const INITIAL_BUCKETS: u64 = 16;
/// Average chain length that triggers doubling.
const MAX_LOAD: u64 = 2;

/// FNV-1a, 64 bits: stable across runs and builds (it is persisted).
fn hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A persistent map: the offset of its header in the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PMap {
    hdr: u64,
}

struct Header {
    count: u64,
    nbuckets: u64,
    buckets: u64,
}

struct EntryHead {
    next: u64,
    hash: u64,
    key_len: u64,
    val_len: u64,
}

impl PMap {
    /// Opens the map anchored in root slot `root`, creating it (in its own
    /// transaction, committed with [`CommitMode::Flush`]) if the slot is
    /// empty. Must not be called while this thread has a transaction open;
    /// use [`PMap::open_or_create_in`] then.
    pub fn open_or_create(rvm: &Rvm, root: u32) -> Result<PMap, RvmError> {
        if let Some(m) = PMap::open(rvm, root)? {
            return Ok(m);
        }
        let mut tx = rvm.begin();
        let m = PMap::open_or_create_in(&mut tx, root)?;
        tx.commit(CommitMode::Flush)?;
        Ok(m)
    }

    /// Like [`PMap::open_or_create`], inside the caller's transaction (if
    /// it aborts, the returned handle must not be used).
    pub fn open_or_create_in(tx: &mut Transaction<'_>, root: u32) -> Result<PMap, RvmError> {
        if let Some(m) = PMap::open(&*tx, root)? {
            return Ok(m);
        }
        let hdr = heap::alloc(tx, MAP_HEADER)?;
        let buckets = heap::alloc(tx, INITIAL_BUCKETS * 8)?;
        tx.write(buckets, &vec![0u8; (INITIAL_BUCKETS * 8) as usize])?;
        let mut h = [0u8; MAP_HEADER as usize];
        h[0..4].copy_from_slice(&MAP_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&MAP_VERSION.to_le_bytes());
        h[16..24].copy_from_slice(&INITIAL_BUCKETS.to_le_bytes());
        h[24..32].copy_from_slice(&buckets.to_le_bytes());
        tx.write(hdr, &h)?;
        tx.set_root(root, hdr)?;
        Ok(PMap { hdr })
    }

    /// Opens the map anchored in root slot `root`; `None` if the slot is
    /// empty.
    pub fn open(r: &(impl SegmentRead + ?Sized), root: u32) -> Result<Option<PMap>, RvmError> {
        if root >= ROOT_SLOTS {
            return Err(RvmError::BadRoot { slot: root });
        }
        let hdr = r.read_u64(super::format::SEG_OFF_ROOTS + 8 * root as u64)?;
        if hdr == 0 {
            return Ok(None);
        }
        let m = PMap { hdr };
        m.header(r)?;
        Ok(Some(m))
    }

    fn header(&self, r: &(impl SegmentRead + ?Sized)) -> Result<Header, RvmError> {
        let mut b = [0u8; MAP_HEADER as usize];
        r.read_at(self.hdr, &mut b)?;
        let u32_at = |a: usize| u32::from_le_bytes([b[a], b[a + 1], b[a + 2], b[a + 3]]);
        let u64_at = |a: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[a..a + 8]);
            u64::from_le_bytes(x)
        };
        if u32_at(MAP_OFF_MAGIC as usize) != MAP_MAGIC {
            return Err(r.corrupt(self.hdr, "bad map magic"));
        }
        let version = u32_at(MAP_OFF_VERSION as usize);
        if version != MAP_VERSION {
            return Err(RvmError::BadVersion {
                path: r.segment_path().to_path_buf(),
                what: "map",
                found: version,
                supported: MAP_VERSION,
            });
        }
        let h = Header {
            count: u64_at(MAP_OFF_COUNT as usize),
            nbuckets: u64_at(MAP_OFF_NBUCKETS as usize),
            buckets: u64_at(MAP_OFF_BUCKETS as usize),
        };
        if !h.nbuckets.is_power_of_two() || h.nbuckets.checked_mul(8).is_none() {
            return Err(r.corrupt(self.hdr, "map bucket count is not a power of two"));
        }
        // Every entry is a heap block of at least 32 bytes; a larger count
        // is corruption, and bounding it bounds every chain walk.
        if h.count > r.segment_len() / 32 {
            return Err(r.corrupt(self.hdr, "map entry count larger than the segment holds"));
        }
        // Bucket offsets are computed from this; prove it is a heap block
        // big enough before anyone does arithmetic with it.
        let fits = heap::len_of(r, h.buckets).is_ok_and(|l| l >= h.nbuckets * 8);
        if !fits {
            return Err(r.corrupt(self.hdr, "map bucket array is not a heap block of its size"));
        }
        Ok(h)
    }

    fn entry_head(&self, r: &(impl SegmentRead + ?Sized), e: u64) -> Result<EntryHead, RvmError> {
        let mut b = [0u8; ENT_HEADER as usize];
        r.read_at(e, &mut b)?;
        let u64_at = |a: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[a..a + 8]);
            u64::from_le_bytes(x)
        };
        let u32_at = |a: usize| u32::from_le_bytes([b[a], b[a + 1], b[a + 2], b[a + 3]]) as u64;
        let eh = EntryHead {
            next: u64_at(ENT_OFF_NEXT as usize),
            hash: u64_at(ENT_OFF_HASH as usize),
            key_len: u32_at(ENT_OFF_KEY_LEN as usize),
            val_len: u32_at(ENT_OFF_VAL_LEN as usize),
        };
        if eh.key_len > MAX_KEY as u64 {
            return Err(r.corrupt(e, "map entry key longer than allowed"));
        }
        // Also proves `e` is an allocated block, and bounds the lengths
        // before anyone allocates a buffer of them.
        let block_len =
            heap::len_of(r, e).map_err(|_| r.corrupt(e, "map entry is not a heap block"))?;
        if ENT_HEADER + eh.key_len + eh.val_len > block_len {
            return Err(r.corrupt(e, "map entry longer than its heap block"));
        }
        Ok(eh)
    }

    /// Finds `key`: the offset of the link pointing at its entry (a bucket
    /// slot or the previous entry's next field) and the entry.
    fn find(
        &self,
        r: &(impl SegmentRead + ?Sized),
        h: &Header,
        key: &[u8],
        kh: u64,
    ) -> Result<Option<(u64, u64, EntryHead)>, RvmError> {
        let mut link = h.buckets + 8 * (kh & (h.nbuckets - 1));
        let mut e = r.read_u64(link)?;
        let mut steps = 0u64;
        let mut kbuf = Vec::new();
        while e != 0 {
            steps += 1;
            if steps > h.count {
                return Err(r.corrupt(link, "map chain longer than the map"));
            }
            let eh = self.entry_head(r, e)?;
            if eh.hash == kh && eh.key_len == key.len() as u64 {
                kbuf.resize(key.len(), 0);
                r.read_at(e + ENT_HEADER, &mut kbuf)?;
                if kbuf == key {
                    return Ok(Some((link, e, eh)));
                }
            }
            link = e + ENT_OFF_NEXT;
            e = eh.next;
        }
        Ok(None)
    }

    /// Number of entries.
    pub fn len(&self, r: &(impl SegmentRead + ?Sized)) -> Result<u64, RvmError> {
        Ok(self.header(r)?.count)
    }

    /// True when the map has no entries.
    pub fn is_empty(&self, r: &(impl SegmentRead + ?Sized)) -> Result<bool, RvmError> {
        Ok(self.len(r)? == 0)
    }

    /// The record stored under `key`.
    pub fn get(
        &self,
        r: &(impl SegmentRead + ?Sized),
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, RvmError> {
        if key.len() > MAX_KEY {
            return Err(RvmError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY,
            });
        }
        let h = self.header(r)?;
        let Some((_, e, eh)) = self.find(r, &h, key, hash(key))? else {
            return Ok(None);
        };
        let mut v = vec![0u8; eh.val_len as usize];
        r.read_at(e + ENT_HEADER + eh.key_len, &mut v)?;
        Ok(Some(v))
    }

    fn new_entry(
        &self,
        tx: &mut Transaction<'_>,
        next: u64,
        kh: u64,
        key: &[u8],
        value: &[u8],
    ) -> Result<u64, RvmError> {
        let val_len = u32::try_from(value.len()).map_err(|_| RvmError::NoSpace {
            requested: value.len() as u64,
        })?;
        let len = ENT_HEADER + key.len() as u64 + value.len() as u64;
        let e = heap::alloc(tx, len)?;
        let mut b = Vec::with_capacity(len as usize);
        b.extend_from_slice(&next.to_le_bytes());
        b.extend_from_slice(&kh.to_le_bytes());
        b.extend_from_slice(&(key.len() as u32).to_le_bytes());
        b.extend_from_slice(&val_len.to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(value);
        tx.write(e, &b)?;
        Ok(e)
    }

    /// Stores `value` under `key`, part of `tx`. Returns true when it
    /// replaced an existing record.
    pub fn insert(
        &self,
        tx: &mut Transaction<'_>,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, RvmError> {
        if key.len() > MAX_KEY {
            return Err(RvmError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY,
            });
        }
        let kh = hash(key);
        let mut h = self.header(&*tx)?;
        if let Some((link, e, eh)) = self.find(&*tx, &h, key, kh)? {
            if eh.val_len == value.len() as u64 {
                tx.write(e + ENT_HEADER + eh.key_len, value)?;
            } else {
                let n = self.new_entry(tx, eh.next, kh, key, value)?;
                tx.write_u64(link, n)?;
                heap::free(tx, e)?;
            }
            return Ok(true);
        }
        if h.count + 1 > h.nbuckets * MAX_LOAD {
            self.grow(tx, &h)?;
            h = self.header(&*tx)?;
        }
        let slot = h.buckets + 8 * (kh & (h.nbuckets - 1));
        let head = tx.read_u64(slot)?;
        let n = self.new_entry(tx, head, kh, key, value)?;
        tx.write_u64(slot, n)?;
        tx.write_u64(self.hdr + MAP_OFF_COUNT, h.count + 1)?;
        Ok(false)
    }

    /// Doubles the bucket array and relinks every entry.
    fn grow(&self, tx: &mut Transaction<'_>, h: &Header) -> Result<(), RvmError> {
        let nb = h.nbuckets * 2;
        let arr = heap::alloc(tx, nb * 8)?;
        let mut heads = vec![0u64; nb as usize];
        let mut seen = 0u64;
        for b in 0..h.nbuckets {
            let mut e = tx.read_u64(h.buckets + 8 * b)?;
            while e != 0 {
                seen += 1;
                if seen > h.count {
                    return Err(tx.corrupt(h.buckets, "map chains hold more than the map"));
                }
                let eh = self.entry_head(&*tx, e)?;
                let i = (eh.hash & (nb - 1)) as usize;
                tx.write_u64(e + ENT_OFF_NEXT, heads[i])?;
                heads[i] = e;
                e = eh.next;
            }
        }
        let bytes: Vec<u8> = heads.iter().flat_map(|x| x.to_le_bytes()).collect();
        tx.write(arr, &bytes)?;
        heap::free(tx, h.buckets)?;
        tx.write_u64(self.hdr + MAP_OFF_NBUCKETS, nb)?;
        tx.write_u64(self.hdr + MAP_OFF_BUCKETS, arr)
    }

    /// Removes `key`, part of `tx`. Returns true when it was there.
    pub fn remove(&self, tx: &mut Transaction<'_>, key: &[u8]) -> Result<bool, RvmError> {
        if key.len() > MAX_KEY {
            return Ok(false);
        }
        let h = self.header(&*tx)?;
        let Some((link, e, eh)) = self.find(&*tx, &h, key, hash(key))? else {
            return Ok(false);
        };
        tx.write_u64(link, eh.next)?;
        heap::free(tx, e)?;
        tx.write_u64(self.hdr + MAP_OFF_COUNT, h.count - 1)?;
        Ok(true)
    }

    /// Every `(key, record)`, in bucket order (unspecified but stable while
    /// the map does not change). Reading through `&Rvm` takes the memory
    /// lock per read, so other transactions may interleave between items.
    pub fn iter<'r, R: SegmentRead + ?Sized>(&self, r: &'r R) -> Iter<'r, R> {
        Iter {
            map: *self,
            r,
            header: None,
            bucket: 0,
            next: 0,
            yielded: 0,
            done: false,
        }
    }
}

/// One `(key, record)` pair.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Iterator over a [`PMap`]; see [`PMap::iter`].
pub struct Iter<'r, R: ?Sized> {
    map: PMap,
    r: &'r R,
    header: Option<Header>,
    bucket: u64,
    next: u64,
    yielded: u64,
    done: bool,
}

impl<R: SegmentRead + ?Sized> Iter<'_, R> {
    fn step(&mut self) -> Result<Option<Entry>, RvmError> {
        if self.header.is_none() {
            self.header = Some(self.map.header(self.r)?);
        }
        let Some(h) = &self.header else {
            return Ok(None);
        };
        while self.next == 0 {
            if self.bucket >= h.nbuckets {
                return Ok(None);
            }
            self.next = self.r.read_u64(h.buckets + 8 * self.bucket)?;
            self.bucket += 1;
        }
        let e = self.next;
        self.yielded += 1;
        if self.yielded > h.count {
            return Err(self.r.corrupt(e, "map chains hold more than the map"));
        }
        let eh = self.map.entry_head(self.r, e)?;
        let mut k = vec![0u8; eh.key_len as usize];
        self.r.read_at(e + ENT_HEADER, &mut k)?;
        let mut v = vec![0u8; eh.val_len as usize];
        self.r.read_at(e + ENT_HEADER + eh.key_len, &mut v)?;
        self.next = eh.next;
        Ok(Some((k, v)))
    }
}

impl<R: SegmentRead + ?Sized> Iterator for Iter<'_, R> {
    type Item = Result<Entry, RvmError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
