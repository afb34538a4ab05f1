//! An image of a Stretto volume as an NBD export.
//!
//! The server process holds the image's write lease (one writer per object,
//! as the volume layer requires), so every connection to the export goes
//! through the same [`volume::Object`]: a flush or FUA on one connection
//! covers writes acknowledged on any other, and `CAN_MULTI_CONN` holds.
//!
//! Writes are acknowledged when a quorum of each replica set has them (the
//! bricks that missed them are marked for heal first); FLUSH and FUA make
//! them durable on those bricks (`Object::flush`).

use std::io;

use iobuf::IoBuf;
use volume::Object;

use crate::export::{Export, ExportError, ExportFuture, Extent, ReadData, ZeroFlags};

/// Most bytes one BLOCK_STATUS reply looks at (the reply may cover less than
/// asked; the client asks again for the rest).
const STATUS_SPAN: u64 = 8 << 20;

/// A volume object served as a block device of a fixed size.
pub struct VolumeExport {
    object: Object,
    size: u64,
}

impl std::fmt::Debug for VolumeExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeExport")
            .field("fid", &self.object.fid())
            .field("size", &self.size)
            .finish()
    }
}

fn io_err(op: &'static str, offset: u64, length: u64, e: volume::VolumeError) -> ExportError {
    ExportError::Io {
        op,
        offset,
        length,
        source: io::Error::other(e),
    }
}

impl VolumeExport {
    /// Serves `object` (opened for writing, so it holds the lease) as an
    /// export of `size` bytes.
    pub fn new(object: Object, size: u64) -> VolumeExport {
        VolumeExport { object, size }
    }

    /// Releases the object's lease after a last flush.
    pub async fn close(self) -> Result<(), volume::VolumeError> {
        self.object.flush().await?;
        self.object.close().await
    }
}

impl Export for VolumeExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, mut buf: IoBuf) -> ExportFuture<'_, ReadData> {
        Box::pin(async move {
            let len = buf.len() as u64;
            let data = self
                .object
                .read(offset, len)
                .await
                .map_err(|e| io_err("read", offset, len, e))?;
            if data.len() != buf.len() {
                return Err(ExportError::Io {
                    op: "read",
                    offset,
                    length: len,
                    source: io::Error::other(format!(
                        "the volume returned {} bytes for a read of {len}",
                        data.len()
                    )),
                });
            }
            buf.as_mut_slice().copy_from_slice(&data);
            Ok(ReadData {
                data: buf,
                holes: Vec::new(),
            })
        })
    }

    fn write(&self, offset: u64, data: IoBuf, fua: bool) -> ExportFuture<'_, ()> {
        Box::pin(async move {
            let len = data.len() as u64;
            self.object
                .write(offset, data.as_slice())
                .await
                .map_err(|e| io_err("write", offset, len, e))?;
            if fua {
                self.object
                    .flush()
                    .await
                    .map_err(|e| io_err("flush (FUA)", offset, len, e))?;
            }
            Ok(())
        })
    }

    fn flush(&self) -> ExportFuture<'_, ()> {
        Box::pin(async move {
            self.object
                .flush()
                .await
                .map_err(|e| io_err("flush", 0, 0, e))
        })
    }

    fn can_trim(&self) -> bool {
        true
    }

    fn trim(&self, offset: u64, length: u32, fua: bool) -> ExportFuture<'_, ()> {
        Box::pin(async move {
            let len = u64::from(length);
            self.object
                .punch(offset, len)
                .await
                .map_err(|e| io_err("trim", offset, len, e))?;
            if fua {
                self.object
                    .flush()
                    .await
                    .map_err(|e| io_err("flush (FUA)", offset, len, e))?;
            }
            Ok(())
        })
    }

    fn can_fast_zero(&self) -> bool {
        // Zeroing is a punch or a zero-range on the bricks: no data moves.
        true
    }

    fn write_zeroes(&self, offset: u64, length: u32, flags: ZeroFlags) -> ExportFuture<'_, ()> {
        Box::pin(async move {
            let len = u64::from(length);
            let r = if flags.may_punch {
                self.object.punch(offset, len).await
            } else {
                self.object.zero(offset, len).await
            };
            r.map_err(|e| io_err("write_zeroes", offset, len, e))?;
            if flags.fua {
                self.object
                    .flush()
                    .await
                    .map_err(|e| io_err("flush (FUA)", offset, len, e))?;
            }
            Ok(())
        })
    }

    /// The volume keeps no allocation map, so this reports what the data
    /// says ([`Object::zero_runs`], 4 KiB blocks): ranges that read as
    /// zeros are `zero` extents (never `hole`, which would claim the bricks
    /// hold nothing there), the rest data. It reads at most
    /// [`STATUS_SPAN`] bytes per call.
    fn block_status(&self, offset: u64, length: u32) -> ExportFuture<'_, Vec<Extent>> {
        Box::pin(async move {
            let len = u64::from(length).clamp(1, STATUS_SPAN);
            let runs = self
                .object
                .zero_runs(offset, len)
                .await
                .map_err(|e| io_err("block_status", offset, len, e))?;
            Ok(runs
                .into_iter()
                .map(|(length, zero)| Extent {
                    length,
                    hole: false,
                    zero,
                })
                .collect())
        })
    }

    fn can_multi_conn(&self) -> bool {
        // One Object (one lease holder) behind every connection.
        true
    }
}
