//! `stretto volume heal` end to end: a brick is SIGKILLed while a real NBD
//! client writes through `stretto nbd serve`; `heal info` shows what it
//! missed; after it restarts, `heal` copies it back and nothing is pending.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{run, stretto, BrickProcess, Pool};

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pending_regions(info: &str) -> Vec<u64> {
    info.lines()
        .filter_map(|l| l.strip_prefix("Number of entries: "))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn heal_info_then_heal_after_a_brick_comes_back() {
    let mut pool = Pool::start(3);
    let (a, b, c) = (pool.addr(0), pool.addr(1), pool.addr(2));
    let secret = pool.secret.to_str().unwrap().to_string();
    ok(pool.volume(0, &["create", "vm", "replica", "3", &a, &b, &c]));
    ok(pool.volume(0, &["start", "vm"]));
    ok(run(&[
        "image",
        "create",
        "disk0",
        "32M",
        "--volume",
        "vm",
        "--pool",
        &a,
        "--secret-file",
        &secret,
    ]));
    let mut nbd = stretto()
        .args([
            "nbd",
            "serve",
            "--volume",
            "vm",
            "--listen",
            "127.0.0.1:0",
            "--pool",
            &a,
            "--secret-file",
            &secret,
        ])
        .env("STRETTO_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(nbd.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    std::thread::spawn(move || for _ in out.lines() {});
    let uri = format!("nbd://{addr}/disk0");

    // Brick 2 dies; 4 MiB are written without it.
    pool.bricks[2].take().unwrap().kill9();
    let io = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x3c 1M 4M", "-c", "flush"])
        .arg(&uri)
        .output()
        .unwrap();
    assert!(
        io.status.success(),
        "{}",
        String::from_utf8_lossy(&io.stderr)
    );

    let info = ok(pool.volume(0, &["heal", "vm", "info"]));
    let pending = pending_regions(&info);
    assert_eq!(pending.len(), 3, "{info}");
    assert_eq!(pending[0], 0, "{info}");
    assert_eq!(pending[1], 0, "{info}");
    assert!(
        pending[2] > 0,
        "brick 2 should have pending regions:\n{info}"
    );
    assert!(
        info.contains(&format!("Brick {c} (set 0): offline")),
        "{info}"
    );

    // Back on the same address; heal copies what it missed.
    pool.bricks[2] = Some(BrickProcess::start(&pool.dirs[2], &c));
    // Heal skips objects a writer holds: stop the NBD server first.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(nbd.id() as libc::pid_t, libc::SIGTERM);
    }
    assert!(nbd.wait().unwrap().success());
    let healed = ok(pool.volume(0, &["heal", "vm"]));
    assert!(healed.contains("regions healed"), "{healed}");
    assert!(!healed.contains(" 0 regions healed"), "{healed}");
    let info = ok(pool.volume(1, &["heal", "vm", "info"]));
    assert_eq!(pending_regions(&info), vec![0, 0, 0], "{info}");
    let sb = ok(pool.volume(0, &["heal", "vm", "info", "split-brain"]));
    assert!(sb.contains("No regions in split-brain"), "{sb}");

    // Bad usage is one clear line.
    let bad = pool.volume(
        0,
        &["heal", "vm", "split-brain", "source-brick", "127.0.0.1:1"],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a brick of volume vm"));
}
