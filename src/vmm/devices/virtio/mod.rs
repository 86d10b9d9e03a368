//! virtio over the MMIO transport (virtio 1.2, section 4.2) and the virtio-blk device (section 5.2).
