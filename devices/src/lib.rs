//! Device models of `mempart-vmm` on `virtio-queue` and `vm-memory`, and the virtio-mmio
//! transport they plug into. Mechanism only: what a device does with guest requests is
//! decided by the VMM through the device's handle.

pub mod virtio;
