#!/usr/bin/env python3
"""Write starting inputs for the fuzz targets into corpus/<target>/ (scripts/fuzz.sh runs this
when a corpus is empty): well-formed requests and a driver's bring-up sequence, so that the
fuzzers start from deep inside the device instead of at the first check."""
import os
import struct
import subprocess
import tempfile
import zlib

N, W = 1, 2  # VRING_DESC_F_NEXT, VRING_DESC_F_WRITE (virtio 1.2, 2.7.5)


def desc(addr, length, flags, nxt):
    return struct.pack('<QIHH', addr, length, flags, nxt)


def image(descs, headers, extra):
    """Guest memory as blk_request lays it out: descriptors at 0, avail ring at 0x1000,
    headers from 0x3000 (one chain of three descriptors per header)."""
    m = bytearray(0x5100)
    for i, d in enumerate(descs):
        m[16 * i:16 * i + 16] = d
    m[0x1000:0x1004] = struct.pack('<HH', 0, len(headers))
    for i in range(len(headers)):
        m[0x1004 + 2 * i:0x1006 + 2 * i] = struct.pack('<H', 3 * i)
    for i, (t, sector) in enumerate(headers):
        m[0x3000 + 16 * i:0x3010 + 16 * i] = struct.pack('<IIQ', t, 0, sector)
    for addr, data in extra.items():
        m[addr:addr + len(data)] = data
    return m


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    blk = os.path.join(here, 'corpus', 'blk_request')
    mmio = os.path.join(here, 'corpus', 'mmio_registers')
    os.makedirs(blk, exist_ok=True)
    os.makedirs(mmio, exist_ok=True)
    # Options 0x46: queue of 16, EVENT_IDX and DISCARD accepted. IN, OUT, FLUSH, GET_ID.
    descs = [desc(0x3000, 16, N, 1), desc(0x4000, 512, N | W, 2), desc(0x5000, 1, W, 0),
             desc(0x3010, 16, N, 4), desc(0x4200, 1024, N, 5), desc(0x5001, 1, W, 0),
             desc(0x3020, 16, N, 7), desc(0x5002, 1, W, 0), desc(0, 0, 0, 0),
             desc(0x3030, 16, N, 10), desc(0x4800, 20, N | W, 11), desc(0x5003, 1, W, 0)]
    m = image(descs, [(0, 3), (1, 5), (4, 0), (8, 0)], {})
    open(os.path.join(blk, 'seed-rw'), 'wb').write(bytes([0x46]) + m)
    # DISCARD (two segments) and WRITE_ZEROES with unmap.
    descs = [desc(0x3000, 16, N, 1), desc(0x4000, 32, N, 2), desc(0x5000, 1, W, 0),
             desc(0x3010, 16, N, 4), desc(0x4100, 16, N, 5), desc(0x5001, 1, W, 0)]
    segs = struct.pack('<QII', 8, 8, 0) + struct.pack('<QII', 64, 3, 0)
    m = image(descs, [(11, 0), (13, 0)], {0x4000: segs, 0x4100: struct.pack('<QII', 16, 16, 1)})
    open(os.path.join(blk, 'seed-discard'), 'wb').write(bytes([0x46]) + m)

    def op(kind, width, off, val):
        return bytes([kind, width]) + struct.pack('<HI', off, val)
    # ACK, DRIVER, VERSION_1, FEATURES_OK, queue at 0x1000.., DRIVER_OK, ISR, process, config, ACK, reset.
    seq = [op(4, 2, 0x70, 1), op(4, 2, 0x70, 3), op(4, 2, 0x24, 1), op(4, 2, 0x20, 1),
           op(4, 2, 0x70, 11), op(4, 2, 0x38, 16), op(4, 2, 0x80, 0x1000), op(4, 2, 0x90, 0x1100),
           op(4, 2, 0xa0, 0x1200), op(4, 2, 0x44, 1), op(4, 2, 0x70, 15), op(0, 2, 0x60, 0),
           op(12, 0, 0, 0), op(0, 3, 0x100, 0), op(4, 2, 0x64, 1), op(4, 2, 0x70, 0),
           op(14, 2, 0, 0x2000)]
    open(os.path.join(mmio, 'seed-bringup'), 'wb').write(b''.join(seq))

    qcow2 = os.path.join(here, 'corpus', 'qcow2')
    os.makedirs(qcow2, exist_ok=True)
    for version in (2, 3):
        open(os.path.join(qcow2, 'seed-v%d' % version), 'wb').write(small_qcow2(version))

    bundle = os.path.join(here, 'corpus', 'bundle_import')
    os.makedirs(bundle, exist_ok=True)
    seed = small_bundle(os.environ.get('AMIVM_BIN', os.path.join(here, '..', 'target', 'release', 'amivm')))
    if seed:
        open(os.path.join(bundle, 'seed-bundle'), 'wb').write(seed)


def small_kernel():
    """The smallest ELF vmlinux `image create` accepts (as tests/store_common builds it): the
    ELF header, one PT_LOAD of the whole 4160-byte file at 1 MiB, then NOPs."""
    load_at, length = 0x100000, 64 + 4096
    h = bytearray(64)
    h[0:4] = b'\x7fELF'
    h[4], h[5], h[6] = 2, 1, 1
    h[16:18] = struct.pack('<H', 2)
    h[18:20] = struct.pack('<H', 62)
    h[24:32] = struct.pack('<Q', load_at + 120)
    h[32:40] = struct.pack('<Q', 64)
    h[52:54] = struct.pack('<H', 64)
    h[54:56] = struct.pack('<H', 56)
    h[56:58] = struct.pack('<H', 1)
    ph = struct.pack('<IIQQQQQQ', 1, 0, 0, load_at, load_at, length, length, 0)
    return bytes(h) + ph + b'\x90' * (4096 - 56)


def small_bundle(amivm):
    """A real bundle from `amivm image export`: a tiny kernel and an all-zero 1 MiB root (no
    chunks), so it stays under libFuzzer's max_len. None if amivm is not built."""
    if not os.access(amivm, os.X_OK):
        print('make_seeds: %s not built; no bundle_import seed' % amivm)
        return None
    with tempfile.TemporaryDirectory() as d:
        kernel, root, out = (os.path.join(d, n) for n in ('vmlinux', 'root.raw', 'b.tar'))
        open(kernel, 'wb').write(small_kernel())
        with open(root, 'wb') as f:
            f.truncate(1 << 20)
        base = [amivm, '--store', os.path.join(d, 'store'), '--account', '123456789012']
        ami = subprocess.run(base + ['image', 'create', '--name', 'seed', '--kernel', kernel,
                                     '--root', root], check=True, capture_output=True,
                             text=True).stdout.strip()
        subprocess.run(base + ['image', 'export', ami, '-o', out], check=True,
                       capture_output=True)
        return open(out, 'rb').read()


def small_qcow2(version):
    """A 1 MiB qcow2 image with 512-byte clusters (QEMU docs/interop/qcow2.rst), small enough
    for libFuzzer's max_len: header, refcount table and block, an L1 table with two L2
    tables, two data clusters, a zero cluster (v3) and a deflate-compressed cluster."""
    cs = 512
    f = bytearray(9 * cs)
    hlen = 72 if version == 2 else 112
    f[0:72] = struct.pack('>4sIQIIQIIQQIIQ', b'QFI\xfb', version, 0, 0, 9, 1 << 20, 0, 32,
                          3 * cs, 1 * cs, 1, 0, 0)
    if version == 3:
        f[72:112] = struct.pack('>QQQII', 0, 0, 0, 4, hlen) + bytes(8)
    f[cs:cs + 8] = struct.pack('>Q', 2 * cs)                          # refcount block
    for i in range(9):
        f[2 * cs + 2 * i:2 * cs + 2 * i + 2] = struct.pack('>H', 1)
    copied, compressed = 1 << 63, 1 << 62
    f[3 * cs:3 * cs + 8] = struct.pack('>Q', copied | 4 * cs)         # L1[0] -> L2 a
    f[3 * cs + 31 * 8:3 * cs + 32 * 8] = struct.pack('>Q', copied | 5 * cs)  # L1[31] -> L2 b
    f[4 * cs:4 * cs + 8] = struct.pack('>Q', copied | 6 * cs)         # data
    if version == 3:
        f[4 * cs + 8:4 * cs + 16] = struct.pack('>Q', 1)              # zero cluster
    z = zlib.compressobj(9, zlib.DEFLATED, -12)
    stream = z.compress(bytes(range(256)) * 2) + z.flush()
    sectors = (len(stream) + cs - 1) // cs
    f[4 * cs + 16:4 * cs + 24] = struct.pack('>Q', compressed | ((sectors - 1) << 61) | 7 * cs)
    f[7 * cs:7 * cs + len(stream)] = stream
    f[5 * cs + 63 * 8:5 * cs + 64 * 8] = struct.pack('>Q', copied | 8 * cs)  # last cluster
    f[6 * cs:7 * cs] = b'amivm qcow2 fuzz seed\n'.ljust(cs, b'.')
    f[8 * cs:9 * cs] = bytes(range(256)) * 2
    return bytes(f)


if __name__ == '__main__':
    main()
