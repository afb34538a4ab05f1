//! `stretto-fsx DIR`: runs the model-checked random file-operation tester on
//! an empty directory. Exit status 0: every operation matched the model;
//! 1: a mismatch (printed with the seed, the op, the ops before it and the
//! first differing offset); 2: bad usage or a directory it cannot use.
//!
//! `--pause-at K` (repeatable) and `--pause-every K` stop before operation K:
//! the tester prints `fsx: paused before op K` on stdout and waits for one
//! line on stdin, so a test can act at an exact point (kill a brick) and
//! then let it go on. The pause is at an operation count, never a time.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fsx::{Config, Features, Limits, Runner};

#[derive(Parser)]
#[command(
    name = "stretto-fsx",
    about = "Model-checked random file operations on a directory"
)]
struct Args {
    /// An existing, empty directory to test in.
    dir: PathBuf,
    /// The seed (the same seed runs the same operations).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many operations.
    #[arg(long, default_value_t = 20_000)]
    ops: u64,
    /// How many file names (half in DIR, half in DIR/sub).
    #[arg(long, default_value_t = 8)]
    files: usize,
    /// Largest file size in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    max_size: u64,
    /// Largest read, write or range in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_io: u64,
    /// Pause before operation K (repeatable).
    #[arg(long = "pause-at", value_name = "K")]
    pause_at: Vec<u64>,
    /// Pause before every K-th operation.
    #[arg(long, value_name = "K")]
    pause_every: Option<u64>,
    /// Do not punch holes (FALLOC_FL_PUNCH_HOLE).
    #[arg(long)]
    no_punch_hole: bool,
    /// Do not zero ranges (FALLOC_FL_ZERO_RANGE).
    #[arg(long)]
    no_zero_range: bool,
    /// Do not call fallocate mode 0.
    #[arg(long)]
    no_allocate: bool,
    /// Do not make hard links.
    #[arg(long)]
    no_links: bool,
    /// Do not read or write through mmap.
    #[arg(long)]
    no_mmap: bool,
    /// How many of the last operations a mismatch lists.
    #[arg(long, default_value_t = 20)]
    history: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = Config {
        seed: args.seed,
        ops: args.ops,
        files: args.files,
        limits: Limits {
            max_size: args.max_size,
            max_io: args.max_io,
        },
        features: Features {
            punch_hole: !args.no_punch_hole,
            zero_range: !args.no_zero_range,
            allocate: !args.no_allocate,
            links: !args.no_links,
            mmap: !args.no_mmap,
        },
        history: args.history,
    };
    let mut runner = match Runner::new(&args.dir, cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stretto-fsx: {}: {e}", args.dir.display());
            return ExitCode::from(2);
        }
    };
    let pause = |i: u64| {
        args.pause_at.contains(&i)
            || args
                .pause_every
                .is_some_and(|k| k > 0 && i > 0 && i % k == 0)
    };
    let stdin = std::io::stdin();
    let result = runner.run(|i, _| {
        if pause(i) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "fsx: paused before op {i}");
            let _ = out.flush();
            let mut line = String::new();
            if let Ok(0) | Err(_) = stdin.lock().read_line(&mut line) {
                eprintln!("stretto-fsx: stdin closed at the pause before op {i}; going on");
            }
        }
    });
    match result {
        Ok(stats) => {
            println!("fsx: seed {}: passed: {stats}", args.seed);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("{failure}");
            println!("fsx: seed {}: FAILED at op {}", args.seed, failure.index);
            ExitCode::from(1)
        }
    }
}
