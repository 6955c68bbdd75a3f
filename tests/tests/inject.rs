//! The harness can fail: with each protocol-breaking switch of notafs-core
//! turned on, `notafs-crashtest --inject NAME` must report violations; with
//! none it must report zero. Each run is a separate process because the
//! switches are process-global.
use std::process::Command;

fn run(args: &[&str]) -> (bool, u64, u64, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_notafs-crashtest"))
        .args(args)
        .output()
        .expect("run notafs-crashtest");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let last = stdout.lines().last().unwrap_or_default().to_string();
    // "crash states: N checked, V violations"
    let nums: Vec<u64> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(
        last.starts_with("crash states: ") && nums.len() == 2,
        "unexpected last line {last:?}\n{stdout}"
    );
    (out.status.success(), nums[0], nums[1], stdout)
}

#[test]
fn every_injection_is_caught() {
    for name in tests::INJECTIONS {
        let (ok, n, v, out) = run(&[
            "--inject",
            name,
            "--states",
            "20000",
            "--no-shrink",
            "--seed",
            "7",
        ]);
        println!("{name}: {n} states, {v} violations");
        assert!(v > 0, "--inject {name} was not caught:\n{out}");
        assert!(!ok, "--inject {name}: exit status must be non-zero");
        assert!(out.contains("VIOLATION"), "{out}");
    }
}

#[test]
fn no_injection_no_violation() {
    let (ok, n, v, out) = run(&["--states", "3000", "--seed", "7"]);
    assert_eq!(v, 0, "{out}");
    assert!(ok);
    assert!(n >= 3000, "{out}");
}

#[test]
fn shrinks_a_violation() {
    // The report must carry a shrunk reproducer and the rerun line.
    let (_, _, v, out) = run(&[
        "--inject",
        "skip-barrier",
        "--kinds",
        "exhaustive",
        "--states",
        "20000",
        "--shrink-seconds",
        "10",
    ]);
    assert!(v > 0, "{out}");
    assert!(out.contains("shrunk reproducer"), "{out}");
    assert!(out.contains("rerun: notafs-crashtest --seed"), "{out}");
}
