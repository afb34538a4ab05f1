//! `stretto image ...` end to end: real bricks, a replica-3 volume, the
//! image table changed all-or-nothing on every brick.

mod common;

use common::{run, Pool};

fn image(pool: &Pool, via: usize, args: &[&str]) -> std::process::Output {
    let addr = pool.addr(via);
    let mut all = vec!["image"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--volume",
        "vm",
        "--pool",
        &addr,
        "--secret-file",
        pool.secret.to_str().unwrap(),
    ]);
    run(&all)
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "command succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[test]
fn images_are_created_listed_resized_and_deleted_on_every_brick() {
    let pool = Pool::start(3);
    let (a, b, c) = (pool.addr(0), pool.addr(1), pool.addr(2));
    ok(pool.volume(0, &["create", "vm", "replica", "3", &a, &b, &c]));
    ok(pool.volume(0, &["start", "vm"]));

    ok(image(&pool, 0, &["create", "disk0", "64M"]));
    ok(image(&pool, 1, &["create", "disk1", "1G"]));
    // Every brick lists the same images.
    for via in 0..3 {
        let list = ok(image(&pool, via, &["list"]));
        assert!(
            list.contains("disk0") && list.contains("67108864"),
            "{list}"
        );
        assert!(
            list.contains("disk1") && list.contains("1073741824"),
            "{list}"
        );
    }
    ok(image(&pool, 2, &["resize", "disk0", "128M"]));
    assert!(ok(image(&pool, 0, &["list"])).contains("134217728"));

    // Bad requests change nothing.
    let before = ok(image(&pool, 0, &["list"]));
    fails(
        image(&pool, 0, &["create", "disk0", "1G"]),
        "already has an image named disk0",
    );
    fails(
        image(&pool, 0, &["create", "bad/name", "1G"]),
        "bad image name",
    );
    fails(
        image(&pool, 0, &["create", "odd", "1000"]),
        "multiple of 512",
    );
    fails(
        image(&pool, 0, &["create", "zero", "0"]),
        "at least one byte",
    );
    fails(image(&pool, 0, &["resize", "disk0", "64M"]), "shrinking");
    fails(
        image(&pool, 0, &["resize", "nope", "64M"]),
        "no image named nope",
    );
    fails(image(&pool, 0, &["delete", "nope"]), "no image named nope");
    let out = run(&[
        "image",
        "list",
        "--volume",
        "novol",
        "--pool",
        &a,
        "--secret-file",
        pool.secret.to_str().unwrap(),
    ]);
    fails(out, "no volume named novol");
    assert_eq!(ok(image(&pool, 1, &["list"])), before);

    ok(image(&pool, 0, &["delete", "disk1"]));
    for via in 0..3 {
        let list = ok(image(&pool, via, &["list"]));
        assert!(!list.contains("disk1"), "{list}");
        assert!(list.contains("disk0"), "{list}");
    }
}

#[test]
fn a_dead_brick_blocks_image_changes_and_nothing_moves() {
    let mut pool = Pool::start(3);
    let (a, b, c) = (pool.addr(0), pool.addr(1), pool.addr(2));
    ok(pool.volume(0, &["create", "vm", "replica", "3", &a, &b, &c]));
    ok(image(&pool, 0, &["create", "disk0", "64M"]));
    pool.bricks[2].take().unwrap().kill9();
    fails(image(&pool, 0, &["create", "disk1", "64M"]), &c);
    // Reads go on without the dead brick.
    let list = ok(image(&pool, 1, &["list"]));
    assert!(list.contains("disk0") && !list.contains("disk1"), "{list}");
    // Back up: the table was not changed anywhere.
    let p = common::BrickProcess::start(&pool.dirs[2], &c);
    pool.bricks[2] = Some(p);
    for via in 0..3 {
        let list = ok(image(&pool, via, &["list"]));
        assert!(list.contains("disk0") && !list.contains("disk1"), "{list}");
    }
}
