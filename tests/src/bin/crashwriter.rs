//! notafs-crashwriter IMAGE: the writer process of the real-process crash
//! test. Formats IMAGE if it is new, then forever: appends a record to
//! `log` whose bytes are `pattern(0, offset)` (so any length of `log`
//! implies its content), rewrites `meta` by tmp + rename with the
//! generation and length this commit produces, commits, and prints
//! `<generation> <log length>` for each acknowledged commit.
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use notafs_blockdev::file::{FileDevice, FileOptions};
use notafs_core::{FormatOptions, Fs, OpenOptions};
use tests::model::pattern;

fn main() {
    let path = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: notafs-crashwriter IMAGE"),
    );
    let fresh = !path.exists();
    let dev = Arc::new(if fresh {
        FileDevice::create(&path, 8 << 20).expect("create image")
    } else {
        FileDevice::open(&path, &FileOptions::default()).expect("open image")
    });
    let fs = if fresh {
        Fs::format(
            dev,
            &FormatOptions {
                root_slots: 4,
                ..FormatOptions::default()
            },
        )
        .expect("format")
    } else {
        Fs::open(dev, &OpenOptions::default()).expect("open")
    };
    let log = fs.open_file_with("log", true, false).expect("log");
    let mut out = std::io::stdout().lock();
    let mut i: u64 = fs.generation();
    loop {
        i += 1;
        let mut len = log.len().expect("len");
        if len > (3 << 20) {
            // Keep the image from filling up: start the pattern again.
            log.set_len(0).expect("truncate");
            len = 0;
        }
        let n = 1 + (i * 7919 % 9000) as usize;
        log.append(&pattern(0, len, n)).expect("append");
        let g = fs.generation() + 1;
        let total = len + n as u64;
        let tmp = fs.open_file_with("meta.tmp", true, true).expect("meta.tmp");
        tmp.write_at(0, format!("{g} {total}").as_bytes())
            .expect("meta");
        fs.rename("meta.tmp", "meta").expect("rename");
        let got = fs.commit().expect("commit");
        assert_eq!(got, g);
        writeln!(out, "{g} {total}").expect("stdout");
        out.flush().expect("stdout");
    }
}
