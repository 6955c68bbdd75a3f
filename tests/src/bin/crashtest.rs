//! notafs-crashtest: check the atomic root swap under every crash the block
//! model allows. See docs/CRASH-TESTING.md.
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use notafs_core::Fs;
use tests::runner::{self, Caps, RunOptions};
use tests::workload::Kind;

#[derive(Parser, Debug)]
#[command(
    name = "notafs-crashtest",
    about = "Crash-consistency harness: every crash state of every workload must open, check clean and show exactly one committed generation"
)]
struct Args {
    /// Seed of everything random (workloads, subsets, garbage).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Crash states to check (default 1,000,000; 100,000,000 with --long).
    #[arg(long)]
    states: Option<u64>,
    /// Stop after this many seconds (whatever the state budget).
    #[arg(long)]
    seconds: Option<f64>,
    /// Long mode: 100M states.
    #[arg(long)]
    long: bool,
    /// Worker threads (default: available cores, at most 2 unless asked).
    #[arg(long)]
    threads: Option<usize>,
    /// Break the commit protocol on purpose: skip-barrier, root-before-data,
    /// reuse-freed, skip-verify, forget-last-extent, log-omits-data, skip-log-verify, delta-drops-range, patch-drops-inode, log-run-first-block. The run must then fail.
    #[arg(long)]
    inject: Option<String>,
    /// Only these workload kinds (comma separated): exhaustive, random,
    /// near-full, pack-store, recovery, repair, lost-write, mkfs, read-error.
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// Run only workload number N (as printed in a violation report).
    #[arg(long)]
    workload: Option<u64>,
    /// Stop after this many violations.
    #[arg(long, default_value_t = 1)]
    max_violations: u64,
    /// Do not shrink the failing workload.
    #[arg(long)]
    no_shrink: bool,
    /// Seconds to spend shrinking.
    #[arg(long, default_value_t = 60.0)]
    shrink_seconds: f64,
    /// Per-workload state cap for random and pack-store workloads.
    #[arg(long)]
    cap: Option<u64>,
    /// Print the workload list size and exit.
    #[arg(long)]
    list: bool,
    /// Progress on stderr every 100k states.
    #[arg(long)]
    progress: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NOTAFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    if a.list {
        println!(
            "exhaustive workloads: {} per device variant (3 variants)",
            runner::exhaustive_count()
        );
        return ExitCode::SUCCESS;
    }
    if let Some(name) = &a.inject {
        match tests::faults_for(name) {
            Some(f) => Fs::set_faults(f),
            None => {
                eprintln!(
                    "notafs-crashtest: unknown injection {name:?}; known: {}",
                    tests::INJECTIONS.join(", ")
                );
                return ExitCode::from(2);
            }
        }
    }
    let mut kinds = Vec::new();
    for k in &a.kinds {
        match Kind::ALL.iter().find(|x| x.name() == k) {
            Some(x) => kinds.push(*x),
            None => {
                eprintln!("notafs-crashtest: unknown kind {k:?}");
                return ExitCode::from(2);
            }
        }
    }
    let mut caps = Caps::default();
    if let Some(c) = a.cap {
        caps.random = c;
        caps.pack = c;
    }
    let states = a
        .states
        .unwrap_or(if a.long { 100_000_000 } else { 1_000_000 });
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(2)
    });
    let o = RunOptions {
        seed: a.seed,
        states,
        seconds: a.seconds,
        threads,
        caps,
        kinds,
        only: a.workload,
        max_violations: a.max_violations.max(1),
        progress: a.progress,
    };
    println!(
        "notafs-crashtest: seed {}, budget {} states{}, {} threads{}",
        a.seed,
        states,
        a.seconds.map_or(String::new(), |s| format!(" or {s} s")),
        threads,
        a.inject
            .as_ref()
            .map_or(String::new(), |i| format!(", INJECTED FAULT {i}"))
    );
    let out = runner::run(&o);
    for (k, s) in &out.per_kind {
        println!(
            "  {:<11} {:>6} workloads {:>9} states {:>8} ops logged {:>5} NoSpace {:>5} skipped ops {:>3} violations",
            k.name(),
            s.workloads,
            s.states,
            s.ops,
            s.nospace,
            s.skipped_ops,
            s.violations
        );
    }
    if let Some(v) = out.violations.first() {
        println!();
        println!("VIOLATION (seed {}, workload #{})", a.seed, v.index);
        println!(
            "  workload: {}",
            v.workload.describe().replace('\n', "\n  ")
        );
        println!("  crash state: {}", v.state);
        println!("  problem: {}", v.message);
        if !a.no_shrink {
            let (small, last) =
                runner::shrink(&v.workload, Duration::from_secs_f64(a.shrink_seconds));
            println!(
                "  shrunk reproducer ({} of {} ops):",
                small.ops.len(),
                v.workload.ops.len()
            );
            println!("    {}", small.describe().replace('\n', "\n    "));
            if let Some((state, msg)) = last {
                println!("    crash state: {state}");
                println!("    problem: {msg}");
            }
        }
        println!(
            "  rerun: notafs-crashtest --seed {} --workload {}{}",
            a.seed,
            v.index,
            a.inject
                .as_ref()
                .map_or(String::new(), |i| format!(" --inject {i}"))
        );
        for v in out.violations.iter().skip(1) {
            println!(
                "  also: workload #{} ({}): {}: {}",
                v.index, v.workload.name, v.state, v.message
            );
        }
    }
    let secs = out.elapsed.as_secs_f64();
    println!(
        "throughput: {:.0} states/s ({} workloads, {:.1} s, {} threads)",
        out.states as f64 / secs.max(1e-9),
        out.workloads,
        secs,
        threads
    );
    println!(
        "crash states: {} checked, {} violations",
        out.states,
        out.violations.len()
    );
    if out.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
