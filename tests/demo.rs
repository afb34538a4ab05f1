//! The README's demo command works and says what it did.

mod common;

#[test]
fn demo_once_runs_bricks_volume_and_nbd_export() {
    let out = common::stretto()
        .args(["demo", "--once", "--nbd-listen", "127.0.0.1:0"])
        .env("STRETTO_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "brick 2:",
        "volume demo: replica 3",
        "read it back: identical",
        "image disk0",
        "nbd export disk0",
        "mounted volume demo on ",
        "hello.txt written and read back: identical; images/: disk0",
        "unmounted ",
        "nbdinfo nbd://127.0.0.1:",
        "nbd-client 127.0.0.1 ",
        "stopped the nbd server and the bricks",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
}
