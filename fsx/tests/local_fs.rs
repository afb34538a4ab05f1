//! The tester on local file systems (the temporary directory's, usually ext4,
//! and tmpfs under /dev/shm): long runs with several seeds pass, a file
//! changed behind the tester's back is caught at the right op and offset,
//! and the binary's pause protocol stops at the exact op asked for.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use fsx::{Config, Features, Runner};

/// Temporary directories on each local file system at hand, with what
/// they support: tmpfs has no FALLOC_FL_ZERO_RANGE (EOPNOTSUPP).
fn roots() -> Vec<(String, tempfile::TempDir, Features)> {
    let mut v = vec![(
        "tmpdir".to_string(),
        tempfile::tempdir().unwrap(),
        Features::default(),
    )];
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            let features = Features {
                zero_range: false,
                ..Features::default()
            };
            v.push(("/dev/shm".to_string(), d, features));
        }
    }
    v
}

#[test]
fn twenty_thousand_ops_per_seed_pass_on_local_file_systems() {
    for (fs, root, features) in roots() {
        for seed in [1, 2, 3, 0xdead_beef] {
            let dir = root.path().join(format!("seed{seed}"));
            std::fs::create_dir(&dir).unwrap();
            let cfg = Config {
                seed,
                ops: 20_000,
                features,
                ..Config::default()
            };
            let mut runner = Runner::new(&dir, cfg).unwrap();
            let stats = runner
                .run(|_, _| {})
                .unwrap_or_else(|f| panic!("{fs}: {f}"));
            println!("{fs} seed {seed}: {stats}");
            assert_eq!(stats.ops, 20_000);
            // Every kind ran, and some ops failed as the model said they must.
            let kinds = fsx::Op::KINDS.len() - usize::from(!features.zero_range);
            assert_eq!(stats.by_kind.len(), kinds, "{stats}");
            assert!(stats.expected_errors > 0, "{stats}");
            assert!(stats.bytes_read > 0 && stats.bytes_written > 0);
        }
    }
}

#[test]
fn bytes_changed_behind_its_back_are_caught_with_their_offset() {
    let root = tempfile::tempdir().unwrap();
    let cfg = Config {
        seed: 7,
        ops: 5_000,
        ..Config::default()
    };
    let mut runner = Runner::new(root.path(), cfg).unwrap();
    let mut checked = false;
    let err = runner
        .run(|i, r| {
            if i != 2_000 {
                return;
            }
            // One byte flipped in the middle of the largest file: the full
            // check names that offset.
            let model = r.model().clone();
            let slot = model
                .occupied()
                .into_iter()
                .max_by_key(|&s| model.file(s).unwrap().data.len())
                .unwrap();
            let data = model.file(slot).unwrap().data.clone();
            assert!(data.len() > 2, "the largest file has some bytes");
            let off = data.len() / 2;
            let path = r.path(slot);
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&[data[off] ^ 0x5a], off as u64).unwrap();
            let err = r.verify_all(i).expect_err("a flipped byte");
            assert_eq!(err.first_diff, Some(off as u64), "{err}");
            assert!(err.to_string().contains("seed 7"), "{err}");
            // Then every byte of every file flipped: the run must stop at
            // the next op that reads any of them.
            for s in model.occupied() {
                let path = r.path(s);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes.iter_mut().for_each(|b| *b ^= 0xff);
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.write_all_at(&bytes, 0).unwrap();
            }
            checked = true;
        })
        .expect_err("the changed bytes must be noticed");
    assert!(checked);
    let text = err.to_string();
    assert!(err.index >= 2_000, "{text}");
    assert!(err.first_diff.is_some(), "{text}");
    assert!(text.contains("data differ"), "{text}");
    assert!(text.contains("last 20 ops"), "{text}");
    assert_eq!(err.history.last().map(|h| h.0), Some(err.index));
}

fn fsx_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stretto-fsx"))
}

#[test]
fn the_binary_pauses_at_the_ops_asked_for_and_passes() {
    let root = tempfile::tempdir().unwrap();
    let mut child = fsx_bin()
        .arg(root.path())
        .args(["--seed", "5", "--ops", "3000", "--pause-at", "1000"])
        .args(["--pause-every", "1200"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut paused = Vec::new();
    let mut last = String::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(k) = line.trim().strip_prefix("fsx: paused before op ") {
            paused.push(k.parse::<u64>().unwrap());
            // While paused the tester does nothing: the tree is still.
            writeln!(stdin, "go").unwrap();
        } else {
            last = line;
        }
    }
    assert!(child.wait().unwrap().success(), "{last}");
    assert_eq!(paused, vec![1000, 1200, 2400]);
    assert!(last.starts_with("fsx: seed 5: passed: 3000 ops"), "{last}");
}

#[test]
fn the_binary_exits_non_zero_on_a_mismatch_and_two_on_bad_use() {
    let root = tempfile::tempdir().unwrap();
    let mut child = fsx_bin()
        .arg(root.path())
        .args(["--seed", "11", "--ops", "4000", "--pause-at", "2000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "fsx: paused before op 2000");
    // Remove every file behind its back.
    for dir in [root.path().to_path_buf(), root.path().join("sub")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::remove_file(p).unwrap();
            }
        }
    }
    writeln!(stdin, "go").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("MISMATCH with seed 11"), "{err}");
    assert!(err.contains("at op 2"), "{err}");

    // A directory that is not empty is refused.
    let out = fsx_bin().arg(root.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
