//! Real-process crash test: a writer process (`notafs-crashwriter`) appends
//! and commits in a loop on an image file; it is killed with SIGKILL at
//! random moments, 100+ times. After each kill the image must open at a
//! generation at least as new as the last one the writer acknowledged,
//! check clean, and hold exactly what the writer's pattern implies.
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notafs_blockdev::file::{FileDevice, FileOptions};
use notafs_core::check::{check, CheckOptions};
use notafs_core::{Fs, OpenOptions};
use rand::{Rng, SeedableRng};
use tests::model::pattern;

#[test]
fn sigkill_writer_100_times() {
    let kills: usize = std::env::var("NOTAFS_SIGKILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let dir = std::env::temp_dir().join(format!("notafs-sigkill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("image");
    let _ = std::fs::remove_file(&image);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5161_c111);
    let start = Instant::now();
    let mut acked_total = 0u64;
    let mut last_gen = 0u64;
    let mut mid_commit_kills = 0;
    for round in 0..kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_notafs-crashwriter"))
            .arg(&image)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        // The first round also formats: give it time to commit something.
        let ms = if round == 0 {
            150
        } else {
            rng.gen_range(1..60)
        };
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().expect("kill -9");
        let _ = child.wait();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        // The last complete line is the last acknowledged commit.
        let acked: Option<(u64, u64)> = out
            .lines()
            .filter(|l| out.ends_with('\n') || !out.ends_with(l))
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
            })
            .last();
        acked_total += out.lines().count() as u64;
        if !image.exists() {
            continue; // killed before it created the image
        }
        let dev = Arc::new(FileDevice::open(&image, &FileOptions::default()).unwrap());
        let fs = match Fs::open(dev.clone(), &OpenOptions::default()) {
            Ok(fs) => fs,
            Err(e) => {
                // Only possible if killed during format, before the
                // superblock: then nothing can have been acknowledged.
                assert!(
                    acked.is_none() && last_gen == 0,
                    "round {round}: image does not open after acknowledged commits: {e}"
                );
                std::fs::remove_file(&image).unwrap();
                continue;
            }
        };
        let g = fs.generation();
        if let Some((ag, _)) = acked {
            assert!(
                g >= ag,
                "round {round}: opened generation {g}, writer acknowledged {ag}"
            );
            if g > ag {
                mid_commit_kills += 1;
            }
        }
        assert!(
            g >= last_gen,
            "round {round}: generation went back from {last_gen} to {g}"
        );
        last_gen = g;
        let rep = check(dev.clone(), &CheckOptions::default()).unwrap();
        assert!(rep.is_clean(), "round {round}: check: {:?}", rep.problems);
        let snap = fs.snapshot();
        if g >= 2 {
            let log = snap.read_to_vec("log").unwrap();
            assert_eq!(
                log,
                pattern(0, 0, log.len()),
                "round {round}: log content is not the writer's pattern"
            );
            let meta = String::from_utf8(snap.read_to_vec("meta").unwrap()).unwrap();
            let want = format!("{g} {}", log.len());
            assert_eq!(
                meta, want,
                "round {round}: meta and log disagree at generation {g}"
            );
            if let Some((ag, alen)) = acked {
                if ag == g {
                    assert_eq!(log.len() as u64, alen, "round {round}: acknowledged length");
                }
            }
        }
    }
    let el = start.elapsed();
    println!(
        "{kills} SIGKILLs in {:.1} s: {acked_total} acknowledged commits, final generation {last_gen}, {mid_commit_kills} kills left a newer-than-acknowledged commit",
        el.as_secs_f64()
    );
    assert!(last_gen > 10, "the writer made too little progress");
    let _ = std::fs::remove_dir_all(&dir);
}
