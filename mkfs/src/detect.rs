//! Recognise what a device already holds, so that `mkfs.notafs` does not
//! overwrite a filesystem or a partition table by accident.
//!
//! Only the first 68 KiB and the last 64 KiB of the device are read, so the
//! check takes the same time on a 1 MiB image and on a 10 TiB disk.
use notafs_blockdev::BlockDevice;

/// Bytes read from the start of the device: enough for the btrfs
/// superblock magic at 65600 and swap signatures of 64 KiB pages.
pub const HEAD_BYTES: usize = 65_608 + 4096;
/// Bytes read from the end of the device: the largest block that can hold a
/// notafs backup superblock.
pub const TAIL_BYTES: usize = 65_536;

/// A signature found on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Short name: `notafs`, `ext4`, `xfs`, `btrfs`, `vfat`, `swap`, `LUKS`,
    /// `gpt`, `dos` (MBR partition table).
    pub kind: &'static str,
    /// Human description, e.g. "an ext2/3/4 filesystem (magic 0xEF53 at byte 1080)".
    pub what: String,
    /// Byte offset of the signature, counted from the start of the device.
    pub offset: u64,
}

fn at(buf: &[u8], off: usize, magic: &[u8]) -> bool {
    buf.get(off..off + magic.len()) == Some(magic)
}

/// Look for known signatures in `head` (the first bytes of the device) and
/// `tail` (its last bytes) of a device of `len` bytes.
pub fn detect(head: &[u8], tail: &[u8], len: u64) -> Vec<Signature> {
    let mut v = Vec::new();
    let mut push = |kind, what: String, offset| v.push(Signature { kind, what, offset });
    let magic = notafs_core::superblock::MAGIC;
    if at(head, 0, &magic) {
        push(
            "notafs",
            format!("a notafs filesystem{}", notafs_details(head, 0, len)),
            0,
        );
    } else {
        // Backup superblock in the last block, whatever the block size.
        let mut bs = 512usize;
        while bs <= TAIL_BYTES && bs <= tail.len() {
            let o = tail.len() - bs;
            if at(tail, o, &magic) {
                push(
                    "notafs",
                    format!(
                        "a notafs filesystem{} (backup superblock in the last {bs}-byte block)",
                        notafs_details(&tail[o..], len - bs as u64, len)
                    ),
                    len - bs as u64,
                );
                break;
            }
            bs *= 2;
        }
    }
    if at(head, 1080, &[0x53, 0xEF]) {
        push(
            "ext4",
            "an ext2/3/4 filesystem (magic 0xEF53 at byte 1080)".into(),
            1080,
        );
    }
    if at(head, 0, b"XFSB") {
        push("xfs", "an XFS filesystem (\"XFSB\" at byte 0)".into(), 0);
    }
    if at(head, 65_600, b"_BHRfS_M") {
        push(
            "btrfs",
            "a btrfs filesystem (\"_BHRfS_M\" at byte 65600)".into(),
            65_600,
        );
    }
    if at(head, 0, b"LUKS\xba\xbe") {
        push(
            "LUKS",
            "a LUKS encrypted volume (magic at byte 0)".into(),
            0,
        );
    }
    for page in [4096usize, 8192, 16384, 65536] {
        for sig in [&b"SWAPSPACE2"[..], &b"SWAP-SPACE"[..]] {
            if at(head, page - 10, sig) {
                push(
                    "swap",
                    format!(
                        "a swap area ({:?} at byte {})",
                        String::from_utf8_lossy(sig),
                        page - 10
                    ),
                    (page - 10) as u64,
                );
            }
        }
    }
    let boot_sig = at(head, 510, &[0x55, 0xAA]);
    let fat = boot_sig && (at(head, 54, b"FAT") || at(head, 82, b"FAT"));
    if fat {
        push(
            "vfat",
            "a FAT filesystem (boot signature and \"FAT\" label)".into(),
            0,
        );
    }
    let mut gpt = false;
    for o in [512usize, 4096] {
        if at(head, o, b"EFI PART") {
            gpt = true;
            push(
                "gpt",
                format!("a GPT partition table (\"EFI PART\" at byte {o})"),
                o as u64,
            );
            break;
        }
    }
    if boot_sig && !fat && !gpt {
        let has_entry = (0..4).any(|i| {
            let e = &head[446 + 16 * i..446 + 16 * (i + 1)];
            e[4] != 0 && e[8..16].iter().any(|&b| b != 0)
        });
        if has_entry {
            push(
                "dos",
                "an MBR (DOS) partition table (boot signature 0x55AA at byte 510 with partition entries)"
                    .into(),
                510,
            );
        }
    }
    v
}

/// " (UUID x, label y)" of the notafs superblock copy `sb` found at byte
/// `off` of a device of `len` bytes, as decoded by notafs-core; " (damaged
/// superblock copy)" when it does not verify.
fn notafs_details(sb: &[u8], off: u64, len: u64) -> String {
    let Some(sb) = notafs_tools_common::peek_superblock(sb, off, len) else {
        return " (damaged superblock copy)".into();
    };
    let mut s = format!(" (UUID {}", notafs_tools_common::format_uuid(&sb.uuid));
    if !sb.label.is_empty() {
        s.push_str(&format!(", label {:?}", sb.label));
    }
    s.push(')');
    s
}

/// Read the start and end of `dev` and look for signatures.
pub fn scan(dev: &dyn BlockDevice) -> notafs_blockdev::Result<Vec<Signature>> {
    let geo = dev.geometry();
    let bs = geo.block_size as u64;
    let len = geo.size_bytes();
    if geo.block_count == 0 {
        return Ok(Vec::new());
    }
    let head_blocks = (HEAD_BYTES as u64).div_ceil(bs).min(geo.block_count);
    let mut head = vec![0u8; (head_blocks * bs) as usize];
    dev.read(0, &mut head)?;
    let tail_blocks = (TAIL_BYTES as u64).div_ceil(bs).min(geo.block_count);
    let mut tail = vec![0u8; (tail_blocks * bs) as usize];
    dev.read(geo.block_count - tail_blocks, &mut tail)?;
    Ok(detect(&head, &tail, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Vec<u8> {
        vec![0u8; HEAD_BYTES]
    }

    #[test]
    fn blank_is_blank() {
        assert!(detect(&head(), &[0; TAIL_BYTES], 1 << 30).is_empty());
        assert!(detect(&[], &[], 0).is_empty());
        assert!(detect(&[0x55, 0xAA], &[], 2).is_empty());
    }

    #[test]
    fn each_signature() {
        let cases: Vec<(&str, usize, &[u8])> = vec![
            ("notafs", 0, b"NOTAFS\0\x01"),
            ("ext4", 1080, &[0x53, 0xEF]),
            ("xfs", 0, b"XFSB"),
            ("btrfs", 65_600, b"_BHRfS_M"),
            ("swap", 4086, b"SWAPSPACE2"),
            ("swap", 4086, b"SWAP-SPACE"),
            ("gpt", 512, b"EFI PART"),
            ("gpt", 4096, b"EFI PART"),
        ];
        for (kind, off, magic) in cases {
            let mut h = head();
            h[off..off + magic.len()].copy_from_slice(magic);
            let found = detect(&h, &[0; TAIL_BYTES], 1 << 30);
            assert_eq!(found.len(), 1, "{kind}: {found:?}");
            assert_eq!(found[0].kind, kind);
        }
    }

    #[test]
    fn fat_and_mbr() {
        let mut h = head();
        h[510] = 0x55;
        h[511] = 0xAA;
        // Boot signature alone (no FAT label, no entries): nothing.
        assert!(detect(&h, &[], 1 << 20).is_empty());
        h[82..87].copy_from_slice(b"FAT32");
        assert_eq!(detect(&h, &[], 1 << 20)[0].kind, "vfat");
        h[82..87].fill(0);
        h[446 + 4] = 0x83;
        h[446 + 8] = 0x08;
        h[446 + 12] = 0x10;
        assert_eq!(detect(&h, &[], 1 << 20)[0].kind, "dos");
        // A protective MBR in front of a GPT reports the GPT only.
        h[512..520].copy_from_slice(b"EFI PART");
        let f = detect(&h, &[], 1 << 20);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, "gpt");
    }

    #[test]
    fn notafs_backup_in_last_block() {
        for bs in [512usize, 4096, 65536] {
            let mut t = vec![0u8; TAIL_BYTES];
            let o = TAIL_BYTES - bs;
            t[o..o + 8].copy_from_slice(b"NOTAFS\0\x01");
            let f = detect(&head(), &t, 1 << 30);
            assert_eq!(f.len(), 1, "{bs}");
            assert_eq!(f[0].kind, "notafs");
            assert_eq!(f[0].offset, (1u64 << 30) - bs as u64);
        }
    }
}
