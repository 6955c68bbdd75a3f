//! Crash images and the live crash device as block devices: images are
//! isolated from each other and from the device, the live device reads like
//! a memory device, bad requests are errors, and a crash image can start a
//! second crash device (crash during recovery).
use notafs_blockdev::crash::{CrashDevice, DiscardFill, EnumOptions, OpKind};
use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::{BlockDevice, BlockError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BS: usize = 512;

fn block(byte: u8) -> Vec<u8> {
    vec![byte; BS]
}

fn read(dev: &dyn BlockDevice, b: u64) -> Vec<u8> {
    let mut buf = vec![0u8; BS];
    dev.read(b, &mut buf).expect("read");
    buf
}

/// Writing to one crash image changes neither another state's image built
/// from the same snapshot, nor the same state rebuilt, nor the device.
#[test]
fn crash_image_writes_are_private() {
    let dev = CrashDevice::new(BS as u32, 8).expect("device");
    dev.write(0, &block(1)).expect("write");
    dev.flush().expect("flush");
    dev.write(1, &block(2)).expect("write");
    dev.write(2, &block(3)).expect("write");
    let states: Vec<_> = dev.states(&EnumOptions::default()).collect();
    assert!(states.len() >= 3);
    let before: Vec<Vec<u8>> = states.iter().map(|s| s.image().to_vec()).collect();
    let live_before = dev.snapshot().to_vec();

    let img = states[states.len() - 1].image();
    img.write(0, &block(9)).expect("write");
    img.write(5, &vec![7u8; 2 * BS]).expect("write");
    img.write_zeroes(2, 1).expect("zeroes");
    img.discard(3, 1).expect("discard");
    assert_eq!(read(&img, 0), block(9));
    assert_eq!(read(&img, 6), block(7));
    // A snapshot of the written image is independent too.
    let snap = img.snapshot();
    img.write(0, &block(10)).expect("write");
    assert_eq!(read(&snap, 0), block(9));

    for (s, b) in states.iter().zip(&before) {
        assert_eq!(&s.image().to_vec(), b, "{s:?} changed");
    }
    assert_eq!(dev.snapshot().to_vec(), live_before);
    assert_eq!(read(&dev, 0), block(1));
}

/// The live device returns what a memory device returns, for random
/// requests (discard aside, whose content is unspecified: checked apart).
#[test]
fn live_device_reads_like_memory() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..50 {
        let n = rng.gen_range(1..40u64);
        let dev = CrashDevice::new(BS as u32, n).expect("device");
        let mem = MemoryDevice::new(BS as u32, n).expect("memory");
        for _ in 0..60 {
            let len = rng.gen_range(1..=n.min(8));
            let b = rng.gen_range(0..=n - len);
            match rng.gen_range(0..5) {
                0 => {
                    dev.write_zeroes(b, len).expect("zeroes");
                    mem.write_zeroes(b, len).expect("zeroes");
                }
                1 => {
                    dev.flush().expect("flush");
                    dev.barrier().expect("barrier");
                }
                _ => {
                    let d: Vec<u8> = (0..len as usize * BS).map(|_| rng.gen()).collect();
                    dev.write(b, &d).expect("write");
                    mem.write(b, &d).expect("write");
                }
            }
            let mut x = vec![0u8; len as usize * BS];
            let mut y = x.clone();
            dev.read(b, &mut x).expect("read");
            mem.read(b, &mut y).expect("read");
            assert_eq!(x, y);
        }
        assert_eq!(dev.snapshot().to_vec(), mem.to_vec());
    }
}

/// Discarded blocks read the configured fill: garbage by default (not the
/// old data, not zeros), zeros when asked.
#[test]
fn discard_reads_fill() {
    let dev = CrashDevice::new(BS as u32, 4).expect("device");
    dev.write(0, &vec![5u8; 4 * BS]).expect("write");
    dev.discard(0, 2).expect("discard");
    let g = read(&dev, 0);
    assert_ne!(g, block(5));
    assert_ne!(g, block(0));
    assert_eq!(g, dev.garbage_content(1, 0));
    dev.set_discard_fill(DiscardFill::Zeros);
    dev.discard(2, 1).expect("discard");
    assert_eq!(read(&dev, 2), block(0));
    assert_eq!(read(&dev, 3), block(5));
}

/// Misaligned, empty, out-of-range and oversized requests are errors on the
/// device and on crash images, and are not logged.
#[test]
fn bad_requests_are_errors() {
    let dev = CrashDevice::new(BS as u32, 4).expect("device");
    let img = dev.snapshot();
    for d in [&dev as &dyn BlockDevice, &img] {
        let mut buf = vec![0u8; BS];
        assert!(matches!(
            d.read(4, &mut buf),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.read(0, &mut buf[..100]),
            Err(BlockError::Misaligned { .. })
        ));
        assert!(matches!(d.read(0, &mut []), Err(BlockError::Empty)));
        assert!(matches!(
            d.write(3, &vec![0; 2 * BS]),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.write(u64::MAX, &buf),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(d.write_zeroes(0, 0), Err(BlockError::Empty)));
        assert!(matches!(
            d.discard(u64::MAX, 2),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.write_zeroes(1, u64::MAX),
            Err(BlockError::OutOfRange { .. })
        ));
    }
    assert_eq!(dev.ops(), 0);
    assert!(matches!(
        CrashDevice::new(1000, 4),
        Err(BlockError::Invalid(_))
    ));
    assert!(matches!(
        CrashDevice::from_vec(100, vec![]),
        Err(BlockError::Invalid(_))
    ));
}

/// The log reports each request with its epochs; `ops()` counts them.
#[test]
fn log_records_epochs() {
    let dev = CrashDevice::new(BS as u32, 4).expect("device");
    dev.write(0, &block(1)).expect("write");
    dev.barrier().expect("barrier");
    dev.write_zeroes(1, 2).expect("zeroes");
    dev.flush().expect("flush");
    dev.discard(3, 1).expect("discard");
    assert_eq!(dev.ops(), 5);
    let log = dev.log();
    let e: Vec<(usize, usize)> = log.iter().map(|o| (o.epoch, o.flush_epoch)).collect();
    assert_eq!(e, vec![(0, 0), (0, 0), (1, 0), (1, 0), (2, 1)]);
    assert!(matches!(&log[0].kind, OpKind::Write { block: 0, data } if data[..] == block(1)[..]));
    assert!(matches!(
        log[2].kind,
        OpKind::WriteZeroes { block: 1, count: 2 }
    ));
    assert!(matches!(log[3].kind, OpKind::Flush));
    assert!(matches!(
        log[4].kind,
        OpKind::Discard { block: 3, count: 1 }
    ));
    // The durable image is the one at the flush: the discard is pending.
    assert_eq!(dev.durable_image().to_vec()[3 * BS..], block(0)[..]);
}

/// A crash image starts a second crash device (crash during recovery): its
/// states build on that image, and the first device is untouched.
#[test]
fn crash_during_recovery() {
    let dev = CrashDevice::from_vec(BS as u32, vec![4u8; 4 * BS]).expect("device");
    dev.set_atomic_unit(0);
    dev.write(0, &vec![1u8; 2 * BS]).expect("write");
    let torn = dev
        .states(&EnumOptions::default())
        .find(|s| s.desc.contains("torn"))
        .expect("a torn state");
    let img = torn.image();
    let first = img.to_vec();
    assert_ne!(
        first[..BS],
        first[BS..2 * BS],
        "torn: one block new, one old"
    );

    let dev2 = img.to_device();
    assert_eq!(dev2.geometry().atomic_unit, 0);
    assert_eq!(dev2.snapshot().to_vec(), first);
    dev2.write(2, &block(8)).expect("write");
    dev2.flush().expect("flush");
    dev2.write(3, &block(9)).expect("write");
    let imgs: Vec<Vec<u8>> = dev2
        .states(&EnumOptions::default())
        .map(|s| s.image().to_vec())
        .collect();
    for i in &imgs {
        assert_eq!(i[..2 * BS], first[..2 * BS], "recovery base kept");
    }
    assert!(imgs.iter().any(|i| i[3 * BS..] == block(9)[..]));
    assert!(imgs.iter().any(|i| i[3 * BS..] == block(4)[..]));
    // Garbage differs between the two devices for the same op and block.
    assert_ne!(dev.garbage_content(0, 0), dev2.garbage_content(0, 0));
    assert_eq!(img.to_vec(), first, "the source image is untouched");
}
