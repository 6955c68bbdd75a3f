//! The damaged-image corpus: one image per bad input, generated from a good
//! image. For each: the exit code of `fsck.notafs -n` and a message it must
//! print, that `-n` wrote nothing, what `-y` does (and that a second run is
//! then clean), what a mount does (error, or which generation it opens and
//! whether every file reads back), and that nothing panics.
mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use common::*;
use notafs_core::check::{check, CheckOptions};

#[derive(Clone, Debug, PartialEq)]
enum Mount {
    /// Fs::open fails with a message containing this.
    Err(&'static str),
    /// Opens this generation and every file reads back.
    Gen(u64),
    /// Opens this generation but some file does not read back.
    GenReadErr(u64),
    /// Opens this generation; a read error is correct, a clean read is what
    /// the core did before it checked key ranges on every descent (the read
    /// then silently took the shared child's extents for the wrong range).
    GenReadErrOrOk(u64),
}

struct Case {
    name: &'static str,
    img: Vec<u8>,
    /// `-b` for fsck and the device block size for the mount.
    block_size: Option<u32>,
    /// Exit code of `fsck -n`.
    n: i32,
    /// Substring of fsck -n's output (stdout + stderr).
    msg: &'static str,
    /// Exit code of `fsck -y` (a following `fsck -n` must then exit 0 when
    /// this is 1).
    y: i32,
    mount: Mount,
}

fn zeros(blocks: u64) -> Vec<u8> {
    vec![0u8; blocks as usize * BS]
}

fn cases() -> Vec<Case> {
    let good = good_image();
    let g = Img::new(good.clone());
    let newest = g.newest_gen();
    assert_eq!(newest, 5);
    let ns = g.newest_slot();
    let mut v = Vec::new();
    let mut add = |name, img: Vec<u8>, n, msg, y, mount| {
        v.push(Case {
            name,
            img,
            block_size: None,
            n,
            msg,
            y,
            mount,
        })
    };
    add(
        "good image",
        good.clone(),
        0,
        "generation 5",
        0,
        Mount::Gen(5),
    );

    // ---- device shape ----
    add(
        "zero-length device",
        Vec::new(),
        8,
        "smaller than one",
        8,
        Mount::Err("too small"),
    );
    add(
        "too small (1 block)",
        zeros(1),
        8,
        "not a notafs",
        8,
        Mount::Err("too small"),
    );
    add(
        "too small (8 blocks)",
        zeros(8),
        8,
        "bad superblock magic",
        8,
        Mount::Err("magic"),
    );
    {
        // Truncated: the backup superblock and the tail are gone.
        let mut t = good.clone();
        t.truncate(BS * 600);
        add(
            "truncated image",
            t,
            8,
            "device only 600",
            8,
            Mount::Err("device only"),
        );
    }

    // ---- not ours ----
    add(
        "all zeros",
        zeros(BLOCKS),
        8,
        "bad superblock magic",
        8,
        Mount::Err("magic"),
    );
    add(
        "all 0xFF",
        vec![0xFF; BS * BLOCKS as usize],
        8,
        "magic",
        8,
        Mount::Err("magic"),
    );
    {
        let mut r = zeros(BLOCKS);
        let mut x = 0x9E3779B97F4A7C15u64;
        for c in r.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        add("random bytes", r, 8, "magic", 8, Mount::Err("magic"));
    }
    {
        let mut e = zeros(BLOCKS);
        e[1024 + 56] = 0x53; // ext2/3/4 superblock magic 0xEF53 at byte 1080
        e[1024 + 57] = 0xEF;
        add(
            "ext4 image",
            e,
            8,
            "not a notafs",
            8,
            Mount::Err("not a notafs"),
        );
    }
    {
        // A notafs image whose first block was overwritten by another
        // filesystem: the backup copy must not resurrect it silently.
        let mut e = good.clone();
        e[..BS].fill(0);
        e[1024 + 56] = 0x53;
        e[1024 + 57] = 0xEF;
        add(
            "primary superblock overwritten",
            e,
            4,
            "backup was used",
            1,
            Mount::Gen(5),
        );
    }

    // ---- stale root slot from an earlier format ----
    {
        let dev = mem(&zeros(BLOCKS));
        let fs = notafs_core::Fs::format(
            dev.clone(),
            &notafs_core::FormatOptions {
                uuid: Some([0x22; 16]),
                root_slots: SLOTS,
                ..Default::default()
            },
        )
        .unwrap();
        fs.set_commit_log(false);
        fs.create("x").unwrap().write_at(0, b"new").unwrap();
        fs.commit().unwrap();
        drop(fs);
        let mut buf = zeros(BLOCKS);
        dev.read(0, &mut buf).unwrap();
        // Put the old format's newest slot (generation 5, other UUID) back.
        let mut b = Img::new(buf);
        let old = g.slot(ns).to_vec();
        b.block_mut(1 + ns as u64).copy_from_slice(&old);
        add(
            "stale slot from earlier format",
            b.b,
            0,
            "generation 2",
            0,
            Mount::Gen(2),
        );
    }

    // ---- bad checksum with good magic ----
    {
        let mut i = Img::new(good.clone());
        i.block_mut(0)[110] ^= 1;
        add(
            "primary superblock bad checksum",
            i.b,
            4,
            "checksum mismatch",
            1,
            Mount::Gen(5),
        );
        let mut i = Img::new(good.clone());
        let last = i.blocks() - 1;
        i.block_mut(last)[60] ^= 0x40;
        add(
            "backup superblock bad checksum",
            i.b,
            4,
            "checksum mismatch",
            1,
            Mount::Gen(5),
        );
        let mut i = Img::new(good.clone());
        i.block_mut(0)[110] ^= 1;
        i.block_mut(last)[110] ^= 1;
        add(
            "both superblocks bad checksum",
            i.b,
            8,
            "checksum mismatch",
            8,
            Mount::Err("checksum"),
        );
        let mut i = Img::new(good.clone());
        i.block_mut(1 + ns as u64)[100] ^= 1;
        add(
            "newest slot bad checksum",
            i.b,
            0,
            "generation 4",
            0,
            Mount::Gen(4),
        );
    }

    // ---- good checksum, absurd fields ----
    {
        let mut i = Img::new(good.clone());
        i.sb_edit(false, |b| put32(b, 56, 0));
        add(
            "primary block size 0",
            i.b,
            4,
            "block size 0 invalid",
            1,
            Mount::Gen(5),
        );
        let mut i = Img::new(good.clone());
        i.sb_edit(true, |b| put32(b, 56, 0));
        add(
            "both block size 0",
            i.b,
            8,
            "block size 0 invalid",
            8,
            Mount::Err("block size 0"),
        );
        let mut i = Img::new(good.clone());
        i.sb_edit(true, |b| put32(b, 56, 3000));
        add(
            "both block size 3000",
            i.b,
            8,
            "block size 3000 invalid",
            8,
            Mount::Err("invalid"),
        );
        let mut i = Img::new(good.clone());
        i.sb_edit(true, |b| put64(b, 32, 1 << 40));
        add(
            "unknown incompat flag",
            i.b,
            8,
            "unknown incompatible feature",
            8,
            Mount::Err("unknown incompatible"),
        );
        let mut i = Img::new(good.clone());
        i.sb_edit(true, |b| put64(b, 64, BLOCKS * 4));
        add(
            "block count past the end",
            i.b,
            8,
            "device only",
            8,
            Mount::Err("device only"),
        );
        let mut i = Img::new(good.clone());
        i.sb_edit(true, |b| put32(b, 88, 1000));
        add(
            "ring of 1000 slots",
            i.b,
            8,
            "root slots",
            8,
            Mount::Err("root slots"),
        );
        let mut i = Img::new(good.clone());
        i.slot_edit(ns, |b| put64(b, 40, 1 << 40));
        add(
            "slot pointer past the end",
            i.b,
            4,
            "skipped-root",
            1,
            Mount::Gen(4),
        );
        let mut i = Img::new(good.clone());
        i.slot_edit(ns, |b| put64(b, 40, 1));
        add(
            "slot pointer into the ring",
            i.b,
            4,
            "skipped-root",
            1,
            Mount::Gen(4),
        );
        let mut i = Img::new(good.clone());
        i.slot_edit(ns, |b| put64(b, 56, 0));
        add(
            "slot free list pointer null",
            i.b,
            4,
            "free-list",
            1,
            Mount::Gen(5),
        );
        let mut i = Img::new(good.clone());
        i.slot_edit(ns, |b| put32(b, 68, u32::MAX));
        add(
            "slot free list length huge",
            i.b,
            4,
            "free-list",
            1,
            Mount::Gen(5),
        );
        let mut i = Img::new(good.clone());
        i.slot_edit(ns, |b| b[52] = 200);
        add(
            "slot file table height 200",
            i.b,
            0,
            "generation 4",
            0,
            Mount::Gen(4),
        );
        let mut i = Img::new(good.clone());
        let slot7 = (u64::MAX % SLOTS as u64) as u32;
        let src = i.slot(ns).to_vec();
        i.block_mut(1 + slot7 as u64).copy_from_slice(&src);
        i.slot_edit(slot7, |b| put64(b, 8, u64::MAX));
        add(
            "slot generation u64::MAX",
            i.b,
            0,
            "generation 5",
            0,
            Mount::Gen(5),
        );
        // Counts in the root that disagree with the trees.
        let mut i = Img::new(good.clone());
        i.slot_edit(ns, |b| put64(b, 80, 1_000_000));
        add("slot inode count wrong", i.b, 4, "inodes", 1, Mount::Gen(5));
        let mut i = Img::new(good.clone());
        i.slot_edit(ns, |b| put64(b, 96, 3));
        add("slot free count wrong", i.b, 4, "free", 1, Mount::Gen(5));
    }

    // ---- equal generations, torn, all bad ----
    {
        let mut i = Img::new(good.clone());
        let other = (ns + 1) % SLOTS;
        let src = i.slot(ns).to_vec();
        i.block_mut(1 + other as u64).copy_from_slice(&src);
        i.slot_edit(other, |b| put64(b, 96, 7));
        add(
            "equal generations in two slots",
            i.b,
            0,
            "generation 5",
            0,
            Mount::Gen(5),
        );
        let mut i = Img::new(good.clone());
        i.block_mut(1 + ns as u64)[128..].fill(0xA5);
        add("newest slot torn", i.b, 0, "generation 4", 0, Mount::Gen(4));
        let mut i = Img::new(good.clone());
        for s in 0..SLOTS {
            i.block_mut(1 + s as u64)[40] ^= 0xFF;
        }
        add(
            "every slot bad",
            i.b,
            4,
            "no generation can be opened",
            4,
            Mount::Err("no valid root"),
        );
        let mut i = Img::new(good.clone());
        for s in 0..SLOTS {
            i.block_mut(1 + s as u64).fill(0);
        }
        add(
            "every slot empty",
            i.b,
            4,
            "no generation can be opened",
            4,
            Mount::Err("no valid root"),
        );
    }

    // ---- trees ----
    {
        // frag's extent tree has two levels; its root was rewritten by the
        // newest commit. Entry 1 of the root points back to the root.
        let mut i = Img::new(good.clone());
        let f = i.entry("frag");
        assert_eq!(f.ext_height, 2);
        let root = f.ext_block;
        let target = 0xC0FFEE11u32;
        let before = notafs_core::raw::crc(i.block(root));
        {
            let o = Img::ext_branch_ptr_off(1);
            let blk = i.block_mut(root);
            put64(blk, o, root);
            put32(blk, o + 8, target);
        }
        i.forge_crc(root, target);
        // Fix the inode's pointer to the root (crc changed).
        let after = notafs_core::raw::crc(i.block(root));
        i.edit_entries(|es| {
            for e in es.iter_mut().filter(|e| e.name == b"frag") {
                assert_eq!(e.ext_crc, before);
                e.ext_crc = after;
            }
        });
        add(
            "extent tree cycle (branch points to itself)",
            i.b,
            4,
            "level",
            1,
            Mount::GenReadErr(5),
        );

        // Entry 0 of the root points to the head of the free-space list (a
        // valid node of another kind).
        let mut i = Img::new(good.clone());
        let tb = le64(i.slot(ns), 56);
        let tc = le32(i.slot(ns), 64);
        let root = i.entry("frag").ext_block;
        i.node_edit(root, |blk| {
            let o = Img::ext_branch_ptr_off(0);
            put64(blk, o, tb);
            put32(blk, o + 8, tc);
        });
        add(
            "extent branch points to a free-list node",
            i.b,
            4,
            "kind",
            1,
            Mount::GenReadErr(5),
        );

        // Two children of the root are the same node.
        let mut i = Img::new(good.clone());
        let root = i.entry("frag").ext_block;
        let br = i.branch(root, 8);
        i.node_edit(root, |blk| {
            let o = Img::ext_branch_ptr_off(1);
            put64(blk, o, br[0].1);
            put32(blk, o + 8, br[0].2);
        });
        add(
            "extent tree DAG (shared child)",
            i.b,
            4,
            "more than once|outside the range",
            1,
            Mount::GenReadErrOrOk(5),
        );

        // A directory that is its own parent.
        let mut i = Img::new(good.clone());
        let dino = i.entry("dir").ino;
        i.edit_entries(|es| {
            for e in es.iter_mut().filter(|e| e.name == b"dir") {
                e.parent = dino;
            }
            es.sort_by(|a, b| (a.parent, &a.name).cmp(&(b.parent, &b.name)));
        });
        add("directory cycle", i.b, 4, "unreachable", 1, Mount::Gen(5));

        // Wrong level.
        let mut i = Img::new(good.clone());
        let leaf = i.table_leaf();
        i.node_edit(leaf, |b| b[5] = 1);
        add(
            "wrong level in file table root",
            i.b,
            4,
            "skipped-root",
            1,
            Mount::Gen(4),
        );
    }

    // ---- blocks ----
    {
        let mut i = Img::new(good.clone());
        let b_first = {
            let e = i.entries().into_iter().find(|e| e.name == b"b").unwrap();
            i.ext_leaf(e.ext_block)[0].pblock
        };
        i.edit_extents("a", |v| v[0].pblock = b_first);
        add(
            "block claimed twice",
            i.b,
            4,
            "referenced more than once",
            1,
            Mount::GenReadErr(5),
        );

        // A pointer into free space: the last block of the data area (the
        // good image fills a fraction of the device, from the start).
        let mut i = Img::new(good.clone());
        let free_start = i.blocks() - 2;
        i.edit_extents("a", |v| v[0].pblock = free_start);
        add(
            "pointer into free space",
            i.b,
            4,
            "free extent",
            1,
            Mount::GenReadErr(5),
        );

        // A leak: drop the last entry of the free list.
        let mut i = Img::new(good.clone());
        let head = le64(i.slot(ns), 56);
        let n = i.node_count(head);
        i.node_edit(head, |b| {
            let o = 48 + 24 * (n as usize - 1);
            b[o..o + 24].fill(0);
            b[6..8].copy_from_slice(&(n - 1).to_le_bytes());
        });
        add("leaked blocks", i.b, 4, "leaked", 1, Mount::Gen(5));
    }

    // ---- keys and counts ----
    {
        let mut i = Img::new(good.clone());
        i.edit_entries(|es| es.swap(0, 1));
        add(
            "unordered keys",
            i.b,
            4,
            "out of order",
            1,
            Mount::GenReadErr(5),
        );
        let mut i = Img::new(good.clone());
        i.edit_entries(|es| {
            let d = es[0].clone();
            es.insert(1, d);
        });
        add(
            "duplicate keys",
            i.b,
            4,
            "duplicated",
            1,
            Mount::GenReadErr(5),
        );
        let mut i = Img::new(good.clone());
        let leaf = i.table_leaf();
        i.node_edit(leaf, |b| b[6..8].copy_from_slice(&u16::MAX.to_le_bytes()));
        add(
            "count over capacity",
            i.b,
            4,
            "more than fit",
            1,
            Mount::GenReadErr(5),
        );
        let mut i = Img::new(good.clone());
        let leaf = i.table_leaf();
        let c = i.node_count(leaf);
        i.node_edit(leaf, |b| b[6..8].copy_from_slice(&(c + 1).to_le_bytes()));
        add(
            "count one too many",
            i.b,
            4,
            "empty name",
            1,
            Mount::GenReadErr(5),
        );
        let mut i = Img::new(good.clone());
        i.edit_extents("a", |v| {
            let last = v.len() - 1;
            v[last].key = u64::MAX;
        });
        add(
            "extent offset overflow",
            i.b,
            4,
            "overflows",
            1,
            Mount::Gen(5),
        );
        let mut i = Img::new(good.clone());
        i.edit_entries(|es| {
            for e in es.iter_mut().filter(|e| e.name == b"a") {
                e.size = u64::MAX;
            }
        });
        add(
            "file size overflow",
            i.b,
            4,
            "absurd size",
            1,
            Mount::GenReadErr(5),
        );
        let mut i = Img::new(good.clone());
        i.edit_extents("a", |v| {
            let l = v[0].crcs.len();
            v[0].crcs.extend(std::iter::repeat(0).take(300 - l));
        });
        add(
            "extent length over the limit",
            i.b,
            4,
            "limit",
            1,
            Mount::GenReadErr(5),
        );
        let mut i = Img::new(good.clone());
        let b_key = {
            let e = i.entries().into_iter().find(|e| e.name == b"b").unwrap();
            (e.ext_block, i.ext_leaf(e.ext_block))
        };
        assert!(
            b_key.1.len() >= 2,
            "dir/b should have several extents: {:?}",
            b_key.1
        );
        {
            let (blk, mut v) = b_key;
            v[1].key = v[0].key + v[0].crcs.len() as u64 - 1;
            i.node_edit(blk, |buf| Img::encode_ext_leaf(buf, &v));
        }
        add("overlapping extents", i.b, 4, "overlap", 1, Mount::Gen(5));
        let mut i = Img::new(good.clone());
        i.edit_extents("a", |v| {
            let last = v.len() - 1;
            v[last].key += 100
        });
        add(
            "extent past end of file",
            i.b,
            4,
            "past the end of the file",
            1,
            Mount::Gen(5),
        );
    }

    // ---- names ----
    for (label, name, msg) in [
        ("name with NUL", b"a\0x".to_vec(), "NUL"),
        ("name with '/'", b"a/x".to_vec(), "'/'"),
        ("name '..'", b"..".to_vec(), "'.' and '..'"),
        ("name '.'", b".".to_vec(), "'.' and '..'"),
        ("empty name", b"".to_vec(), "empty name"),
        ("name not UTF-8", b".\xff".to_vec(), "UTF-8"),
        ("name of 256 bytes", vec![b'0'; 256], "longer than 255"),
    ] {
        let mut i = Img::new(good.clone());
        i.edit_entries(|es| {
            for e in es.iter_mut().filter(|e| e.name == b"a") {
                e.name = name.clone();
            }
        });
        v.push(Case {
            name: label,
            img: i.b,
            block_size: None,
            n: 4,
            msg,
            y: 1,
            mount: Mount::GenReadErr(5),
        });
    }

    // ---- wrong block size ----
    for bs in [512u32, 8192] {
        v.push(Case {
            name: if bs == 512 {
                "opened with block size 512"
            } else {
                "opened with block size 8192"
            },
            img: good.clone(),
            block_size: Some(bs),
            n: 8,
            msg: "differs from the device",
            y: 8,
            mount: Mount::Err("differs"),
        });
    }
    v
}

fn mount(c: &Case) -> Result<u64, String> {
    let bs = c.block_size.unwrap_or(BS as u32);
    let dev: std::sync::Arc<dyn notafs_blockdev::BlockDevice> = std::sync::Arc::new(
        notafs_blockdev::memory::MemoryDevice::from_vec(bs, c.img.clone()),
    );
    let fs = notafs_core::Fs::open(dev, &notafs_core::OpenOptions::default())
        .map_err(|e| e.to_string())?;
    let g = fs.generation();
    read_tree(&fs.snapshot()).map_err(|e| format!("READ:{g}:{e}"))?;
    Ok(g)
}

#[test]
fn corpus() {
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_secs(20);
    let mut failures = Vec::new();
    let mut table =
        String::from("\n| case | fsck -n | fsck -y | then -n | mount |\n|---|---|---|---|---|\n");
    for (k, c) in cases().into_iter().enumerate() {
        let path = write_image(dir.path(), &format!("img{k}"), &c.img);
        let p = path.to_str().unwrap();
        let mut args: Vec<String> = vec!["-n".into(), "-v".into()];
        if let Some(bs) = c.block_size {
            args.push(format!("-b{bs}"));
        }
        args.push(p.into());
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let before = hash(&c.img);
        let r = run_fsck(&a, limit);
        let out = format!("{}{}", r.stdout, r.stderr);
        if r.code != c.n {
            failures.push(format!(
                "{}: fsck -n exit {} (want {})\n{out}",
                c.name, r.code, c.n
            ));
        }
        // `a|b`: either message (the core may report a case either way).
        if !c.msg.split('|').any(|m| out.contains(m)) {
            failures.push(format!(
                "{}: fsck -n output lacks {:?}\n{out}",
                c.name, c.msg
            ));
        }
        if hash(&std::fs::read(&path).unwrap()) != before {
            failures.push(format!("{}: fsck -n modified the image", c.name));
        }
        // In process: no panic.
        let dev = mem(&c.img);
        if c.block_size.is_none()
            && catch_unwind(AssertUnwindSafe(|| check(dev, &CheckOptions::default()))).is_err()
        {
            failures.push(format!("{}: check() panicked", c.name));
        }
        // Repair on a copy, then check again.
        let mut args: Vec<String> = vec!["-y".into()];
        if let Some(bs) = c.block_size {
            args.push(format!("-b{bs}"));
        }
        args.push(p.into());
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let ry = run_fsck(&a, limit);
        if ry.code != c.y {
            failures.push(format!(
                "{}: fsck -y exit {} (want {})\n{}{}",
                c.name, ry.code, c.y, ry.stdout, ry.stderr
            ));
        }
        let mut again = String::from("-");
        if ry.code == 1 {
            let r2 = run_fsck(&["-n", p], limit);
            again = r2.code.to_string();
            if r2.code != 0 {
                failures.push(format!(
                    "{}: fsck -n after -y exit {} (want 0)\n{}{}",
                    c.name, r2.code, r2.stdout, r2.stderr
                ));
            }
        }
        let m = catch_unwind(AssertUnwindSafe(|| mount(&c)));
        let got = match m {
            Err(_) => {
                failures.push(format!("{}: mount panicked", c.name));
                "PANIC".to_string()
            }
            Ok(res) => {
                let ok = match (&c.mount, &res) {
                    (Mount::Err(s), Err(e)) => e.contains(s) && !e.starts_with("READ:"),
                    (Mount::Gen(g), Ok(x)) => g == x,
                    (Mount::GenReadErr(g) | Mount::GenReadErrOrOk(g), Err(e)) => {
                        e.starts_with(&format!("READ:{g}:"))
                    }
                    (Mount::GenReadErrOrOk(g), Ok(x)) => g == x,
                    _ => false,
                };
                if !ok {
                    failures.push(format!(
                        "{}: mount gave {res:?}, want {:?}",
                        c.name, c.mount
                    ));
                }
                match res {
                    Ok(g) => format!("opens generation {g}, all files read"),
                    Err(e) if e.starts_with("READ:") => {
                        format!(
                            "opens generation {}, a file read fails",
                            e.split(':').nth(1).unwrap()
                        )
                    }
                    Err(e) => format!("error: {}", e.chars().take(70).collect::<String>()),
                }
            }
        };
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            c.name, r.code, ry.code, again, got
        ));
    }
    println!("{table}");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n---\n")
    );
}
