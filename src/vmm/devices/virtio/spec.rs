//! Numbers from the virtio 1.2 specification (OASIS, "Virtual I/O Device (VIRTIO) Version 1.2"),
//! each with the section that defines it.

// ---- virtio-mmio registers (section 4.2.2, table "MMIO Device Register Layout") ----

/// "MagicValue": 0x74726976, "virt" in little endian (4.2.2).
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// "Version": 2 is the non-legacy virtio-mmio interface (4.2.2; 1 is legacy, 4.2.4).
pub const MMIO_VERSION: u32 = 2;
/// Our "VendorID": any value is allowed (4.2.2); this reads "AMIV" in little endian.
pub const MMIO_VENDOR_ID: u32 = 0x5649_4d41;
/// Size of one virtio-mmio device window as the Linux `virtio_mmio.device=4K@...` argument
/// describes it; registers end at 0x100 and the config space follows.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

pub const REG_MAGIC_VALUE: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
/// "QueueNotify": the offset the VMM registers its ioeventfd on.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const REG_SHM_SEL: u64 = 0x0ac;
pub const REG_SHM_LEN_LOW: u64 = 0x0b0;
pub const REG_SHM_LEN_HIGH: u64 = 0x0b4;
pub const REG_SHM_BASE_LOW: u64 = 0x0b8;
pub const REG_SHM_BASE_HIGH: u64 = 0x0bc;
pub const REG_QUEUE_RESET: u64 = 0x0c0;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// Device-specific configuration space starts here (4.2.2, "Config").
pub const REG_CONFIG: u64 = 0x100;

/// InterruptStatus bit 0: "Used Buffer Notification" (4.2.2).
pub const INT_USED_BUFFER: u32 = 1 << 0;
/// InterruptStatus bit 1: "Configuration Change Notification" (4.2.2).
pub const INT_CONFIG_CHANGE: u32 = 1 << 1;

// ---- device status field (section 2.1) ----

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

// ---- feature bits ----

/// VIRTIO_F_RING_EVENT_IDX (6.3): used_event / avail_event notification suppression.
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;
/// VIRTIO_F_VERSION_1 (6.3): compliance with virtio 1.x; required by this device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// VIRTIO_BLK_F_SEG_MAX (5.2.3): `seg_max` in config is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// VIRTIO_BLK_F_RO (5.2.3): the device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// VIRTIO_BLK_F_BLK_SIZE (5.2.3): `blk_size` in config is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// VIRTIO_BLK_F_FLUSH (5.2.3): the device handles VIRTIO_BLK_T_FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// VIRTIO_BLK_F_DISCARD (5.2.3): the device handles VIRTIO_BLK_T_DISCARD.
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
/// VIRTIO_BLK_F_WRITE_ZEROES (5.2.3): the device handles VIRTIO_BLK_T_WRITE_ZEROES.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// Device ID of a block device (5, "Device Types": 2).
pub const VIRTIO_ID_BLOCK: u32 = 2;

// ---- virtio-blk requests (section 5.2.6) ----

/// Sector size: request `sector` fields and `capacity` count 512-byte units (5.2.4, 5.2.6).
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header: le32 type, le32 reserved, le64 sector (5.2.6).
pub const REQ_HEADER_LEN: usize = 16;
/// Size of one discard / write-zeroes segment: le64 sector, le32 num_sectors, le32 flags (5.2.6).
pub const DISCARD_SEGMENT_LEN: usize = 16;
/// Length of the GET_ID answer: a 20-byte serial, NUL-padded (5.2.6).
pub const BLK_ID_BYTES: usize = 20;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Discard / write-zeroes segment flag bit 0, "unmap" (5.2.6). Any other bit is unknown.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

// ---- virtio-blk configuration layout (struct virtio_blk_config, 5.2.4) ----

pub const CFG_CAPACITY: usize = 0;
pub const CFG_SEG_MAX: usize = 12;
pub const CFG_BLK_SIZE: usize = 20;
pub const CFG_MAX_DISCARD_SECTORS: usize = 36;
pub const CFG_MAX_DISCARD_SEG: usize = 40;
pub const CFG_DISCARD_SECTOR_ALIGNMENT: usize = 44;
pub const CFG_MAX_WRITE_ZEROES_SECTORS: usize = 48;
pub const CFG_MAX_WRITE_ZEROES_SEG: usize = 52;
pub const CFG_WRITE_ZEROES_MAY_UNMAP: usize = 56;
/// Bytes of `struct virtio_blk_config` up to and including the secure-erase fields (5.2.4);
/// fields we do not offer read as zero.
pub const CFG_LEN: usize = 72;
