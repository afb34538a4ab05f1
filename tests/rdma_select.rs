//! `--transport` selection on a machine without an RDMA device (or a binary
//! built without the `rdma` feature): `auto` falls back to TCP with one log
//! line; `rdma` fails with an error naming what is missing.

mod common;

use common::{init_brick, stretto};
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

fn names_what_is_missing(stderr: &str) -> bool {
    stderr.contains("RDMA transport unavailable")
        && (stderr.contains("built without RDMA support")
            || stderr.contains("no RDMA device")
            || stderr.contains("libibverbs"))
}

#[test]
fn brick_serve_rdma_fails_clearly_without_rdma() {
    if std::path::Path::new("/sys/class/infiniband")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
    {
        eprintln!("skipped: this machine has an RDMA device");
        return;
    }
    let b = init_brick();
    let out = stretto()
        .args(["brick", "serve"])
        .arg(&b.dir)
        .args(["--listen", "127.0.0.1:0", "--transport", "rdma"])
        .env("STRETTO_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(names_what_is_missing(&stderr), "{stderr}");
    assert!(
        stderr.contains("cannot serve --transport rdma on 127.0.0.1:0"),
        "{stderr}"
    );
    // Nothing claims to serve before the failure.
    assert!(!stderr.contains("brick serving"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
}

#[test]
fn brick_serve_auto_falls_back_to_tcp_with_one_line() {
    if std::path::Path::new("/sys/class/infiniband")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
    {
        eprintln!("skipped: this machine has an RDMA device");
        return;
    }
    let b = init_brick();
    let mut child = stretto()
        .args(["brick", "serve"])
        .arg(&b.dir)
        .args(["--listen", "127.0.0.1:0", "--transport", "auto"])
        .env("STRETTO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on "), "{line:?}");
    // The brick works over TCP: stats answer.
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let stats = stretto()
        .args(["brick", "stats", &addr, "--secret-file"])
        .arg(&b.secret)
        .output()
        .unwrap();
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("transport auto: serving TCP only"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(names_what_is_missing(lines[0]), "{stderr}");
}

#[test]
fn nbd_serve_rdma_fails_clearly_without_rdma() {
    if std::path::Path::new("/sys/class/infiniband")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
    {
        eprintln!("skipped: this machine has an RDMA device");
        return;
    }
    let b = init_brick();
    let out = stretto()
        .args([
            "nbd",
            "serve",
            "--volume",
            "v",
            "--listen",
            "127.0.0.1:0",
            "--pool",
            "127.0.0.1:1",
            "--transport",
            "rdma",
            "--secret-file",
        ])
        .arg(&b.secret)
        .env("STRETTO_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(names_what_is_missing(&stderr), "{stderr}");
}
