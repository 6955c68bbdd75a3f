use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::BlockDevice;
use notafs_core::{Error, FormatOptions, Fs};
use std::sync::Arc;
#[test]
fn short_write_leaves_no_stale_tail() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::new(4096, 200).unwrap());
    let fs = Fs::format(
        dev,
        &FormatOptions {
            root_slots: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let f = fs.create("c").unwrap();
    f.write_at(0, &vec![1u8; 20808]).unwrap();
    fs.commit().unwrap();
    let free = fs.info().free_blocks;
    eprintln!("free {free}");
    let r = f.write_at(12370, &vec![154u8; 4096 * (free as usize + 10)]);
    assert!(matches!(r, Err(Error::NoSpace)), "{r:?}");
    let len = f.len().unwrap();
    eprintln!("len {len}");
    f.set_len(len + 10000).unwrap();
    let mut b = vec![0u8; 10000];
    f.read_at(len, &mut b).unwrap();
    assert!(
        b.iter().all(|&x| x == 0),
        "stale bytes past old end: {:?}",
        &b[..8]
    );
}
