//! Throughput of crash-state generation: the harness checks millions of
//! states, so building one must cost microseconds, not a copy of the device.
//! Prints states/second; asserts a generous bound in release builds only
//! (debug builds are an order of magnitude slower and say nothing).
use std::time::Instant;

use notafs_blockdev::crash::{CrashDevice, EnumOptions};
use notafs_blockdev::BlockDevice;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BS: usize = 4096;
const BLOCKS: u64 = 1024; // 4 MiB

/// A commit-shaped log: epochs of data writes, a barrier, a root write, a
/// flush; now and then a discard of freed blocks.
fn workload() -> CrashDevice {
    let dev = CrashDevice::new(BS as u32, BLOCKS).expect("device");
    let mut rng = StdRng::seed_from_u64(11);
    for commit in 0..40u64 {
        for _ in 0..12 {
            let len = rng.gen_range(1..=8u64);
            let b = rng.gen_range(2..BLOCKS - len);
            let data = vec![rng.gen::<u8>(); len as usize * BS];
            dev.write(b, &data).expect("write");
        }
        if commit % 5 == 4 {
            dev.discard(rng.gen_range(2..BLOCKS - 16), 16)
                .expect("discard");
        }
        dev.barrier().expect("barrier");
        dev.write(commit % 2, &vec![commit as u8; BS])
            .expect("root");
        dev.flush().expect("flush");
    }
    dev
}

#[test]
fn hundred_thousand_states_per_few_seconds() {
    let dev = workload();
    let opts = EnumOptions {
        max_exhaustive: 12,
        ..EnumOptions::default()
    };
    let total = dev.count_states(&opts);
    let want = 100_000usize;
    assert!(total >= want as u64, "workload too small: {total} states");

    let t = Instant::now();
    let described = dev.states(&opts).take(want).count();
    let enum_secs = t.elapsed().as_secs_f64();
    assert_eq!(described, want);

    // Materialise each image and read a block of it, as the harness would
    // when opening the filesystem on it.
    let t = Instant::now();
    let mut buf = vec![0u8; BS];
    let mut checksum = 0u64;
    for st in dev.states(&opts).take(want) {
        let img = st.image();
        img.read(st.cut as u64 % BLOCKS, &mut buf).expect("read");
        checksum = checksum.wrapping_add(buf[0] as u64);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} ops logged, {total} states; enumerate {want}: {:.0} states/s; \
         enumerate + materialise + read: {:.0} states/s ({secs:.2}s, checksum {checksum})",
        dev.ops(),
        want as f64 / enum_secs,
        want as f64 / secs,
    );
    if !cfg!(debug_assertions) {
        assert!(secs < 5.0, "100k states took {secs:.2}s");
    }
}
