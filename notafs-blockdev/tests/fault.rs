//! The fault-injecting wrapper: exact positions, determinism, lost writes,
//! bit flips.
mod common;

use common::pattern;
use notafs_blockdev::fault::{FaultConfig, FaultDevice, FaultEvent, OpKind};
use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::BlockDevice;

const BS: usize = 512;

fn mem() -> MemoryDevice {
    MemoryDevice::new(BS as u32, 64).unwrap()
}

/// True for an injected EIO (not a request error).
fn is_eio(r: &notafs_blockdev::Result<()>) -> bool {
    const EIO: i32 = 5; // Linux
    matches!(r, Err(notafs_blockdev::BlockError::Io { source, .. }) if source.raw_os_error() == Some(EIO))
}

#[test]
fn eio_on_exactly_the_nth_write() {
    let cfg = FaultConfig {
        fail_write_at: Some(3),
        ..Default::default()
    };
    let dev = FaultDevice::new(mem(), 1, cfg);
    let results: Vec<bool> = (0..6)
        .map(|i| is_eio(&dev.write(i, &pattern(1, i, BS))))
        .collect();
    assert_eq!(results, [false, false, true, false, false, false]);
    // The failed write did not reach the inner device; the others did.
    let mut b = vec![0u8; BS];
    dev.inner().read(2, &mut b).unwrap();
    assert_eq!(b, vec![0u8; BS]);
    dev.inner().read(3, &mut b).unwrap();
    assert_eq!(b, pattern(1, 3, BS));
    let s = dev.stats();
    assert_eq!((s.writes, s.injected_errors, s.reads), (6, 1, 0));
    assert_eq!(
        dev.events(),
        [FaultEvent::Error {
            op: 3,
            kind: OpKind::Write
        }]
    );
}

#[test]
fn eio_on_exactly_the_nth_read_and_flush() {
    let cfg = FaultConfig {
        fail_read_at: Some(2),
        fail_flush_at: Some(4),
        ..Default::default()
    };
    let dev = FaultDevice::new(mem(), 1, cfg);
    let mut b = vec![0u8; BS];
    let reads: Vec<bool> = (0..4).map(|i| is_eio(&dev.read(i, &mut b))).collect();
    assert_eq!(reads, [false, true, false, false]);
    // Flushes and barriers share one counter.
    let flushes = [
        is_eio(&dev.flush()),
        is_eio(&dev.barrier()),
        is_eio(&dev.flush()),
        is_eio(&dev.barrier()),
        is_eio(&dev.flush()),
    ];
    assert_eq!(flushes, [false, false, false, true, false]);
    assert_eq!(dev.stats().flushes, 5);
    assert_eq!(dev.stats().injected_errors, 2);
}

#[test]
fn eio_on_the_nth_operation_of_any_kind() {
    let cfg = FaultConfig {
        fail_op_at: Some(4),
        ..Default::default()
    };
    let dev = FaultDevice::new(mem(), 1, cfg);
    let mut b = vec![0u8; BS];
    assert!(dev.write(0, &b).is_ok());
    assert!(dev.read(0, &mut b).is_ok());
    assert!(dev.flush().is_ok());
    assert!(is_eio(&dev.discard(0, 1)));
    assert!(dev.write_zeroes(0, 1).is_ok());
    assert_eq!(dev.stats().ops, 5);
}

#[test]
fn arm_a_fault_mid_run() {
    let dev = FaultDevice::new(mem(), 1, FaultConfig::default());
    for i in 0..10 {
        dev.write(i, &pattern(2, i, BS)).unwrap();
    }
    dev.fail_next_write(2);
    assert!(dev.write(10, &pattern(2, 10, BS)).is_ok());
    assert!(is_eio(&dev.write(11, &pattern(2, 11, BS))));
    assert!(dev.write(12, &pattern(2, 12, BS)).is_ok());
    dev.configure(|c| c.write_error_rate = 1.0);
    assert!(is_eio(&dev.write_zeroes(0, 1)));
    dev.set_config(FaultConfig::default());
    assert!(dev.write_zeroes(0, 1).is_ok());
    dev.fail_next_read(1);
    let mut b = vec![0u8; BS];
    assert!(is_eio(&dev.read(1, &mut b)));
    assert!(dev.read(1, &mut b).is_ok());
    assert_eq!(b, pattern(2, 1, BS));
    dev.fail_next_flush(1);
    assert!(is_eio(&dev.flush()));
    assert!(dev.flush().is_ok());
    dev.reset_counters();
    assert_eq!(dev.stats().ops, 0);
    assert!(dev.events().is_empty());
}

/// A fixed workload with every kind of random fault; returns the outcome of
/// each op, the data read and the fault log.
fn random_run(seed: u64) -> (Vec<bool>, Vec<Vec<u8>>, Vec<FaultEvent>) {
    let cfg = FaultConfig {
        read_error_rate: 0.1,
        write_error_rate: 0.1,
        flush_error_rate: 0.2,
        bit_flip_rate: 0.2,
        lost_write_rate: 0.2,
        ..Default::default()
    };
    let dev = FaultDevice::new(mem(), seed, cfg);
    let mut outcomes = Vec::new();
    let mut data = Vec::new();
    for i in 0..300u64 {
        let blk = (i * 7) % 64;
        match i % 4 {
            0 | 1 => outcomes.push(dev.write(blk, &pattern(i, blk, BS)).is_ok()),
            2 => {
                let mut b = vec![0u8; BS];
                outcomes.push(dev.read(blk, &mut b).is_ok());
                data.push(b);
            }
            _ => outcomes.push(dev.flush().is_ok()),
        }
    }
    (outcomes, data, dev.events())
}

#[test]
fn same_seed_same_faults() {
    let a = random_run(42);
    let b = random_run(42);
    assert_eq!(a, b);
    // All kinds of fault actually happened.
    let ev = &a.2;
    assert!(ev.iter().any(|e| matches!(e, FaultEvent::Error { .. })));
    assert!(ev.iter().any(|e| matches!(e, FaultEvent::BitFlip { .. })));
    assert!(ev.iter().any(|e| matches!(e, FaultEvent::LostWrite { .. })));
    // A different seed gives a different sequence.
    let c = random_run(43);
    assert_ne!(a.2, c.2);
}

#[test]
fn error_rate_is_roughly_the_probability() {
    let cfg = FaultConfig {
        write_error_rate: 0.25,
        ..Default::default()
    };
    let dev = FaultDevice::new(mem(), 9, cfg);
    let failed = (0..2000)
        .filter(|i| dev.write(i % 64, &[0u8; BS]).is_err())
        .count();
    assert!((400..600).contains(&failed), "{failed} of 2000 failed");
}

#[test]
fn lost_writes_report_ok_and_change_nothing() {
    let cfg = FaultConfig {
        lost_write_rate: 1.0,
        ..Default::default()
    };
    let dev = FaultDevice::new(mem(), 3, cfg);
    for i in 0..5 {
        assert!(dev.write(i, &pattern(7, i, BS)).is_ok());
    }
    assert!(dev.write_zeroes(0, 3).is_ok());
    assert_eq!(dev.stats().lost_writes, 6);
    assert!(dev.inner().to_vec().iter().all(|&b| b == 0));
    // Disarmed: writes land again.
    dev.configure(|c| c.lost_write_rate = 0.0);
    dev.write(1, &pattern(7, 1, BS)).unwrap();
    let mut b = vec![0u8; BS];
    dev.read(1, &mut b).unwrap();
    assert_eq!(b, pattern(7, 1, BS));
}

#[test]
fn bit_flips_change_exactly_one_bit() {
    let cfg = FaultConfig {
        bit_flip_rate: 1.0,
        ..Default::default()
    };
    let dev = FaultDevice::new(mem(), 5, cfg);
    dev.write(0, &pattern(9, 0, BS * 4)).unwrap();
    let truth = pattern(9, 0, BS * 4);
    for _ in 0..50 {
        let mut b = vec![0u8; BS * 4];
        dev.read(0, &mut b).unwrap();
        let diff: u32 = b
            .iter()
            .zip(&truth)
            .map(|(x, y)| (x ^ y).count_ones())
            .sum();
        assert_eq!(diff, 1);
    }
    assert_eq!(dev.stats().bit_flips, 50);
    // The stored data is intact.
    assert_eq!(dev.inner().to_vec()[..BS * 4], truth[..]);
}

#[test]
fn batch_writes_are_separate_fault_opportunities() {
    let cfg = FaultConfig {
        fail_write_at: Some(2),
        ..Default::default()
    };
    let dev = FaultDevice::new(mem(), 1, cfg);
    let (a, b, c) = (pattern(1, 0, BS), pattern(1, 1, BS), pattern(1, 2, BS));
    let reqs = [
        notafs_blockdev::WriteReq { block: 0, data: &a },
        notafs_blockdev::WriteReq { block: 1, data: &b },
        notafs_blockdev::WriteReq { block: 2, data: &c },
    ];
    assert!(is_eio(&dev.write_batch(&reqs)));
    let v = dev.inner().to_vec();
    assert_eq!(v[..BS], a[..]);
    assert!(v[BS..3 * BS].iter().all(|&x| x == 0));
}
