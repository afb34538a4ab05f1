//! The reference: what a POSIX file system must hold after each operation,
//! kept in memory. Names are slots (`f0`, `sub/f1`, ...) that point at
//! inodes; an inode is its bytes and its link count. The model never touches
//! the disk; the runner compares the real directory with it.

use std::collections::BTreeMap;

use crate::op::Op;

/// An inode number of the model (not the file system's).
pub type InodeId = u64;

/// An errno the model expects (e.g. `libc::ENOENT`).
pub type Errno = i32;

/// One file of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// The file's bytes; its size is `data.len()`.
    pub data: Vec<u8>,
    /// How many slots name it.
    pub nlink: u32,
}

/// What an operation did to the model that the runner must mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the data (or nothing at all).
    None,
    /// A new inode was created under a slot.
    Created(InodeId),
    /// An inode lost its last name: its descriptor is to be closed.
    Dropped(InodeId),
    /// The bytes a read must return.
    Read(Vec<u8>),
}

/// The file tree the tester expects: `slots` names, each empty or naming an
/// inode.
#[derive(Clone, Debug, Default)]
pub struct Model {
    names: Vec<Option<InodeId>>,
    inodes: BTreeMap<InodeId, Inode>,
    next: InodeId,
}

impl Model {
    /// An empty tree with `slots` names.
    pub fn new(slots: usize) -> Model {
        Model {
            names: vec![None; slots],
            inodes: BTreeMap::new(),
            next: 1,
        }
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.names.len()
    }

    /// The inode slot `s` names, if any.
    pub fn name(&self, s: usize) -> Option<InodeId> {
        self.names[s]
    }

    /// The inode `id`.
    pub fn inode(&self, id: InodeId) -> Option<&Inode> {
        self.inodes.get(&id)
    }

    /// The inode slot `s` names, if any.
    pub fn file(&self, s: usize) -> Option<&Inode> {
        self.names[s].and_then(|id| self.inodes.get(&id))
    }

    /// The slots that name a file.
    pub fn occupied(&self) -> Vec<usize> {
        (0..self.names.len())
            .filter(|&s| self.names[s].is_some())
            .collect()
    }

    /// The slots that name nothing.
    pub fn empty(&self) -> Vec<usize> {
        (0..self.names.len())
            .filter(|&s| self.names[s].is_none())
            .collect()
    }

    /// How many inodes exist.
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    fn data_mut(&mut self, s: usize) -> Result<&mut Vec<u8>, Errno> {
        let id = self.names[s].ok_or(libc::ENOENT)?;
        Ok(&mut self.inodes.get_mut(&id).expect("named inode exists").data)
    }

    /// Removes one name of `id`; drops the inode when it was the last.
    fn unref(&mut self, id: InodeId) -> Effect {
        let inode = self.inodes.get_mut(&id).expect("named inode exists");
        inode.nlink -= 1;
        if inode.nlink == 0 {
            self.inodes.remove(&id);
            Effect::Dropped(id)
        } else {
            Effect::None
        }
    }

    /// Applies `op` and says what it did, or the errno the file system must
    /// return (in which case the model is unchanged).
    pub fn apply(&mut self, op: &Op) -> Result<Effect, Errno> {
        match *op {
            Op::Create { slot } => {
                if self.names[slot].is_some() {
                    return Err(libc::EEXIST);
                }
                let id = self.next;
                self.next += 1;
                self.inodes.insert(
                    id,
                    Inode {
                        data: Vec::new(),
                        nlink: 1,
                    },
                );
                self.names[slot] = Some(id);
                Ok(Effect::Created(id))
            }
            Op::Write {
                slot,
                off,
                len,
                fill,
            }
            | Op::MapWrite {
                slot,
                off,
                len,
                fill,
            } => {
                let data = self.data_mut(slot)?;
                let (off, end) = (off as usize, (off + len) as usize);
                if data.len() < end {
                    data.resize(end, 0);
                }
                crate::fill_bytes(fill, &mut data[off..end]);
                Ok(Effect::None)
            }
            Op::Append { slot, len, fill } => {
                let data = self.data_mut(slot)?;
                let start = data.len();
                data.resize(start + len as usize, 0);
                crate::fill_bytes(fill, &mut data[start..]);
                Ok(Effect::None)
            }
            Op::OpenTrunc { slot } => {
                self.data_mut(slot)?.clear();
                Ok(Effect::None)
            }
            Op::Read { slot, off, len } | Op::MapRead { slot, off, len } => {
                let data = self.data_mut(slot)?;
                let size = data.len() as u64;
                let start = off.min(size) as usize;
                let end = (off + len).min(size) as usize;
                Ok(Effect::Read(data[start..end].to_vec()))
            }
            Op::Truncate { slot, size } => {
                self.data_mut(slot)?.resize(size as usize, 0);
                Ok(Effect::None)
            }
            Op::PunchHole { slot, off, len }
            | Op::ZeroRange {
                slot,
                off,
                len,
                keep_size: true,
            } => {
                let data = self.data_mut(slot)?;
                let size = data.len() as u64;
                let (start, end) = (off.min(size) as usize, (off + len).min(size) as usize);
                data[start..end].fill(0);
                Ok(Effect::None)
            }
            Op::ZeroRange {
                slot,
                off,
                len,
                keep_size: false,
            } => {
                let data = self.data_mut(slot)?;
                let end = (off + len) as usize;
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[off as usize..end].fill(0);
                Ok(Effect::None)
            }
            Op::Allocate { slot, off, len } => {
                let data = self.data_mut(slot)?;
                let end = (off + len) as usize;
                if data.len() < end {
                    data.resize(end, 0);
                }
                Ok(Effect::None)
            }
            Op::Rename { from, to } => {
                let src = self.names[from].ok_or(libc::ENOENT)?;
                // POSIX: if both names are links to the same file, rename
                // does nothing and both stay.
                if from == to || self.names[to] == Some(src) {
                    return Ok(Effect::None);
                }
                let effect = match self.names[to] {
                    Some(old) => self.unref(old),
                    None => Effect::None,
                };
                self.names[to] = Some(src);
                self.names[from] = None;
                Ok(effect)
            }
            Op::Link { from, to } => {
                let src = self.names[from].ok_or(libc::ENOENT)?;
                if self.names[to].is_some() {
                    return Err(libc::EEXIST);
                }
                self.inodes.get_mut(&src).expect("named inode exists").nlink += 1;
                self.names[to] = Some(src);
                Ok(Effect::None)
            }
            Op::Unlink { slot } => {
                let id = self.names[slot].ok_or(libc::ENOENT)?;
                self.names[slot] = None;
                Ok(self.unref(id))
            }
            Op::Fsync { slot } | Op::Reopen { slot } | Op::Seek { slot, .. } => {
                self.names[slot].ok_or(libc::ENOENT)?;
                Ok(Effect::None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(m: &mut Model, slot: usize, off: u64, len: u64) -> Vec<u8> {
        m.apply(&Op::Write {
            slot,
            off,
            len,
            fill: 7,
        })
        .unwrap();
        let mut want = vec![0; len as usize];
        crate::fill_bytes(7, &mut want);
        want
    }

    fn read(m: &mut Model, slot: usize, off: u64, len: u64) -> Vec<u8> {
        match m.apply(&Op::Read { slot, off, len }).unwrap() {
            Effect::Read(b) => b,
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn write_past_end_fills_the_gap_with_zeros() {
        let mut m = Model::new(2);
        m.apply(&Op::Create { slot: 0 }).unwrap();
        let w = write(&mut m, 0, 100, 10);
        assert_eq!(m.file(0).unwrap().data.len(), 110);
        assert_eq!(read(&mut m, 0, 0, 100), vec![0; 100]);
        assert_eq!(read(&mut m, 0, 100, 50), w);
        // A read at or past the end returns nothing.
        assert!(read(&mut m, 0, 110, 5).is_empty());
        assert!(read(&mut m, 0, 500, 5).is_empty());
    }

    #[test]
    fn shrink_then_grow_reads_zeros_not_old_bytes() {
        let mut m = Model::new(1);
        m.apply(&Op::Create { slot: 0 }).unwrap();
        write(&mut m, 0, 0, 4096);
        m.apply(&Op::Truncate { slot: 0, size: 10 }).unwrap();
        m.apply(&Op::Truncate {
            slot: 0,
            size: 4096,
        })
        .unwrap();
        assert_eq!(read(&mut m, 0, 10, 4086), vec![0; 4086]);
        assert_ne!(read(&mut m, 0, 0, 10), vec![0; 10]);
    }

    #[test]
    fn punch_hole_keeps_size_and_ignores_the_part_past_eof() {
        let mut m = Model::new(1);
        m.apply(&Op::Create { slot: 0 }).unwrap();
        let w = write(&mut m, 0, 0, 100);
        m.apply(&Op::PunchHole {
            slot: 0,
            off: 90,
            len: 1000,
        })
        .unwrap();
        assert_eq!(m.file(0).unwrap().data.len(), 100);
        assert_eq!(read(&mut m, 0, 0, 90), w[..90]);
        assert_eq!(read(&mut m, 0, 90, 10), vec![0; 10]);
    }

    #[test]
    fn zero_range_grows_unless_keep_size() {
        let mut m = Model::new(1);
        m.apply(&Op::Create { slot: 0 }).unwrap();
        write(&mut m, 0, 0, 100);
        m.apply(&Op::ZeroRange {
            slot: 0,
            off: 50,
            len: 100,
            keep_size: true,
        })
        .unwrap();
        assert_eq!(m.file(0).unwrap().data.len(), 100);
        assert_eq!(read(&mut m, 0, 50, 50), vec![0; 50]);
        m.apply(&Op::ZeroRange {
            slot: 0,
            off: 50,
            len: 100,
            keep_size: false,
        })
        .unwrap();
        assert_eq!(m.file(0).unwrap().data.len(), 150);
        m.apply(&Op::Allocate {
            slot: 0,
            off: 0,
            len: 10,
        })
        .unwrap();
        assert_eq!(m.file(0).unwrap().data.len(), 150);
        m.apply(&Op::Allocate {
            slot: 0,
            off: 100,
            len: 100,
        })
        .unwrap();
        assert_eq!(m.file(0).unwrap().data.len(), 200);
    }

    #[test]
    fn links_share_data_and_count_names() {
        let mut m = Model::new(3);
        m.apply(&Op::Create { slot: 0 }).unwrap();
        m.apply(&Op::Link { from: 0, to: 1 }).unwrap();
        assert_eq!(m.file(1).unwrap().nlink, 2);
        let w = write(&mut m, 1, 0, 20);
        assert_eq!(read(&mut m, 0, 0, 20), w);
        assert_eq!(m.apply(&Op::Link { from: 0, to: 1 }), Err(libc::EEXIST));
        assert_eq!(m.apply(&Op::Link { from: 2, to: 1 }), Err(libc::ENOENT));
        assert_eq!(m.apply(&Op::Create { slot: 1 }), Err(libc::EEXIST));
        assert_eq!(m.apply(&Op::Unlink { slot: 0 }), Ok(Effect::None));
        assert_eq!(m.file(1).unwrap().nlink, 1);
        let id = m.name(1).unwrap();
        assert_eq!(m.apply(&Op::Unlink { slot: 1 }), Ok(Effect::Dropped(id)));
        assert_eq!(m.inode_count(), 0);
        assert_eq!(m.apply(&Op::Unlink { slot: 1 }), Err(libc::ENOENT));
    }

    #[test]
    fn rename_replaces_the_target_and_is_a_no_op_between_links() {
        let mut m = Model::new(3);
        m.apply(&Op::Create { slot: 0 }).unwrap();
        m.apply(&Op::Create { slot: 1 }).unwrap();
        let (a, b) = (m.name(0).unwrap(), m.name(1).unwrap());
        // Over another file: that file loses its only name.
        assert_eq!(
            m.apply(&Op::Rename { from: 0, to: 1 }),
            Ok(Effect::Dropped(b))
        );
        assert_eq!((m.name(0), m.name(1)), (None, Some(a)));
        // Onto an empty slot.
        assert_eq!(m.apply(&Op::Rename { from: 1, to: 2 }), Ok(Effect::None));
        assert_eq!(m.name(2), Some(a));
        // Between two links of one file: nothing changes.
        m.apply(&Op::Link { from: 2, to: 0 }).unwrap();
        assert_eq!(m.apply(&Op::Rename { from: 0, to: 2 }), Ok(Effect::None));
        assert_eq!((m.name(0), m.name(2)), (Some(a), Some(a)));
        assert_eq!(m.file(0).unwrap().nlink, 2);
        // Onto itself.
        assert_eq!(m.apply(&Op::Rename { from: 0, to: 0 }), Ok(Effect::None));
        assert_eq!(m.apply(&Op::Rename { from: 1, to: 0 }), Err(libc::ENOENT));
        // Over a file that keeps another name: it is not dropped.
        m.apply(&Op::Create { slot: 1 }).unwrap();
        assert_eq!(m.apply(&Op::Rename { from: 1, to: 0 }), Ok(Effect::None));
        assert_eq!(m.file(2).unwrap().nlink, 1);
        assert_eq!(m.inode_count(), 2);
    }

    #[test]
    fn append_writes_at_the_end_and_open_trunc_empties() {
        let mut m = Model::new(1);
        m.apply(&Op::Create { slot: 0 }).unwrap();
        let w = write(&mut m, 0, 10, 5);
        m.apply(&Op::Append {
            slot: 0,
            len: 8,
            fill: 3,
        })
        .unwrap();
        let mut tail = vec![0; 8];
        crate::fill_bytes(3, &mut tail);
        assert_eq!(read(&mut m, 0, 10, 5), w);
        assert_eq!(read(&mut m, 0, 15, 100), tail);
        // A mapped read is a read.
        let mapped = m
            .apply(&Op::MapRead {
                slot: 0,
                off: 15,
                len: 100,
            })
            .unwrap();
        assert_eq!(mapped, Effect::Read(tail));
        m.apply(&Op::OpenTrunc { slot: 0 }).unwrap();
        assert!(m.file(0).unwrap().data.is_empty());
    }

    #[test]
    fn a_failed_op_changes_nothing() {
        let mut m = Model::new(2);
        m.apply(&Op::Create { slot: 0 }).unwrap();
        write(&mut m, 0, 0, 10);
        let before = (m.names.clone(), m.inodes.clone());
        for op in [
            Op::Create { slot: 0 },
            Op::Link { from: 0, to: 0 },
            Op::Unlink { slot: 1 },
            Op::Rename { from: 1, to: 0 },
            Op::Truncate { slot: 1, size: 5 },
            Op::Fsync { slot: 1 },
        ] {
            assert!(m.apply(&op).is_err(), "{op}");
            assert_eq!((m.names.clone(), m.inodes.clone()), before, "{op}");
        }
    }
}
