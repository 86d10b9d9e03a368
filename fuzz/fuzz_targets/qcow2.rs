//! Fuzz the qcow2 reader: the input is the image file. Opening validates the header and the
//! tables; then the walk visits every allocated cluster and reads it whole. Nothing may
//! panic, and a read that reports no data must have produced zeros. Time and memory stay
//! bounded by the input: the reader refuses virtual sizes above the store's maximum and
//! caps every inflated cluster at the cluster size.

#![no_main]

use amivm::store::qcow2::Qcow2Image;
use amivm::store::manifest::MAX_VOLUME_BYTES;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut img) = Qcow2Image::open(Box::<[u8]>::from(data), data.len() as u64, MAX_VOLUME_BYTES)
    else {
        return;
    };
    let cs = img.header().cluster_size();
    let mut buf = vec![0u8; cs as usize];
    let mut at = 0;
    while let Ok(Some(off)) = img.next_allocated(at) {
        assert!(off + cs > at && off < img.size(), "walk went backwards or past the end");
        let n = cs.min(img.size() - off) as usize;
        match img.read_at(&mut buf[..n], off) {
            Ok(false) => assert!(buf[..n].iter().all(|b| *b == 0)),
            Ok(true) => {}
            Err(_) => return,
        }
        at = off + cs;
    }
});
