//! The real verbs backend (feature `rdma`): libibverbs and librdmacm through
//! the `sideway` crate.
//!
//! Built so far: finding the device ([`HwFabric::open`] lists the verbs
//! devices through libibverbs and names what is missing when there is
//! none). NOT built yet: the queue-pair half of [`Fabric`] (rdma_cm
//! connect/listen, `ibv_reg_mr` per pool, post/poll, the completion
//! channel): `connect` and `listen` return an error saying so, so `auto`
//! falls back to TCP and `rdma` fails clearly. The engine, the simulation
//! and the driver above do not change when it lands.

use super::select::RdmaUnavailable;
use super::verbs::{Fabric, Listener, Verbs, VerbsError};
use sideway::ibverbs::device::DeviceInfo;
use std::time::Duration;

/// The machine's first verbs device.
pub struct HwFabric {
    device: String,
}

impl HwFabric {
    /// Opens the device list; an empty list is [`RdmaUnavailable::NoDevice`].
    pub fn open() -> Result<HwFabric, RdmaUnavailable> {
        let list =
            sideway::ibverbs::device::DeviceList::new().map_err(|e| RdmaUnavailable::Library {
                reason: format!("listing RDMA devices through libibverbs: {e}"),
            })?;
        let Some(dev) = list.get(0) else {
            return Err(RdmaUnavailable::NoDevice);
        };
        Ok(HwFabric {
            device: dev.name().to_string(),
        })
    }

    fn not_yet(&self, op: &'static str) -> VerbsError {
        VerbsError::Failed {
            op,
            reason: format!(
                "RDMA device {} found, but this build's sideway queue-pair backend is not implemented yet",
                self.device
            ),
        }
    }
}

impl Fabric for HwFabric {
    fn connect(&self, _addr: &str, _timeout: Duration) -> Result<Box<dyn Verbs>, VerbsError> {
        Err(self.not_yet("rdma_connect"))
    }

    fn listen(&self, _addr: &str) -> Result<Box<dyn Listener>, VerbsError> {
        Err(self.not_yet("rdma_listen"))
    }

    fn name(&self) -> String {
        self.device.clone()
    }
}
