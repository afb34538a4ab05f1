//! End-to-end tests of `stretto volume`: real `stretto brick serve`
//! processes on loopback, driven through the real binary as a user would.

mod common;

use std::process::Output;

use common::Pool;
use transport::Secret;

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with one clear line naming `needle`, and no output on stdout.
fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "command succeeded; stderr {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("stretto: "), "{err:?}");
    assert!(err.contains(needle), "{err:?} does not say {needle:?}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
}

/// Generations of configuration `id` on the given bricks (None: none held).
fn generations(pool: &Pool, bricks: &[String], id: u32) -> Vec<Option<u64>> {
    let secret = Secret::load(&pool.secret).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(volume::manage::generations(&secret, bricks, id))
        .unwrap()
}

/// Everything a user can see of the pool, through every live brick:
/// `volume list`, `volume info` of each listed volume, and the raw
/// generations of the table and of volume ids 1..=3 on every brick.
fn snapshot(pool: &Pool, live: &[usize]) -> Vec<String> {
    let mut seen = Vec::new();
    let addrs: Vec<String> = live.iter().map(|i| pool.addr(*i)).collect();
    for &i in live {
        let list = ok(&pool.volume(i, &["list"]));
        seen.push(format!("list via {i}: {list}"));
        for name in list.lines().filter(|l| !l.starts_with("No volumes")) {
            seen.push(format!(
                "info {name} via {i}: {}",
                ok(&pool.volume(i, &["info", name]))
            ));
        }
    }
    for id in 0..=3 {
        seen.push(format!("gens {id}: {:?}", generations(pool, &addrs, id)));
    }
    seen
}

#[test]
fn replica3_lifecycle_on_three_bricks() {
    let pool = Pool::start(3);
    let b: Vec<String> = (0..3).map(|i| pool.addr(i)).collect();

    let out = ok(&pool.volume(
        0,
        &[
            "create",
            "vol0",
            "replica",
            "3",
            &b[0],
            &b[1],
            &b[2],
            "--chunk-size",
            "1M",
        ],
    ));
    assert!(out.contains("volume create: vol0: success"), "{out}");

    // Every brick tells the same story.
    let info0 = ok(&pool.volume(0, &["info", "vol0"]));
    for i in 1..3 {
        assert_eq!(ok(&pool.volume(i, &["info", "vol0"])), info0);
        assert_eq!(ok(&pool.volume(i, &["list"])), "vol0\n");
    }
    for line in [
        "Volume Name: vol0",
        "Type: Replicate",
        "Volume ID: 1",
        "Status: Created",
        "Chunk Size: 1M",
        "Number of Bricks: 1 x 3 = 3",
        &format!("Brick1: {}", b[0]),
        &format!("Brick2: {}", b[1]),
        &format!("Brick3: {}", b[2]),
    ] {
        assert!(info0.lines().any(|l| l == line), "no {line:?} in\n{info0}");
    }
    assert_eq!(generations(&pool, &b, 1), vec![Some(1); 3]);
    let table_gens = generations(&pool, &b, 0);
    assert_eq!(table_gens, vec![Some(1); 3]);

    ok(&pool.volume(1, &["start", "vol0"]));
    assert!(ok(&pool.volume(2, &["info", "vol0"])).contains("Status: Started\n"));
    fails_with(&pool.volume(0, &["start", "vol0"]), "already started");

    // set: every brick holds the new generation.
    ok(&pool.volume(2, &["set", "vol0", "quorum-type", "fixed"]));
    ok(&pool.volume(0, &["set", "vol0", "quorum-count", "2"]));
    assert_eq!(generations(&pool, &b, 1), vec![Some(4); 3]);
    let info = ok(&pool.volume(1, &["info", "vol0"]));
    assert!(
        info.contains("Options Reconfigured:\nquorum-count: 2\nquorum-type: fixed\n"),
        "{info}"
    );
    let got = ok(&pool.volume(0, &["get", "vol0", "quorum-type"]));
    assert!(
        got.lines()
            .any(|l| l.split_whitespace().eq(["quorum-type", "fixed"])),
        "{got}"
    );
    let all = ok(&pool.volume(1, &["get", "vol0", "all"]));
    for kv in [
        ["quorum-type", "fixed"],
        ["quorum-count", "2"],
        ["ping-timeout", "10"],
        ["transport", "tcp"],
    ] {
        assert!(
            all.lines().any(|l| l.split_whitespace().eq(kv)),
            "{kv:?} in {all}"
        );
    }

    let status = ok(&pool.volume(0, &["status", "detail", "vol0"]));
    for a in &b {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(a.as_str()) && l.contains(" Y ")),
            "{a} not online in\n{status}"
        );
    }
    assert!(status.contains("uptime"), "{status}");
    assert!(
        status.contains("Capacity: ") && !status.contains("Capacity: unknown"),
        "{status}"
    );

    fails_with(&pool.volume(0, &["delete", "vol0"]), "stop it first");
    ok(&pool.volume(0, &["stop", "vol0"]));
    assert!(ok(&pool.volume(1, &["info", "vol0"])).contains("Status: Stopped\n"));
    ok(&pool.volume(2, &["delete", "vol0"]));
    for i in 0..3 {
        assert_eq!(
            ok(&pool.volume(i, &["list"])),
            "No volumes present in cluster\n"
        );
        fails_with(&pool.volume(i, &["info", "vol0"]), "no volume named vol0");
    }
    // The tombstone and the table moved forward together on every brick.
    assert_eq!(generations(&pool, &b, 1), vec![Some(6); 3]);
    assert_eq!(generations(&pool, &b, 0), vec![Some(2); 3]);

    // The name can be used again; ids are not reused.
    ok(&pool.volume(1, &["create", "vol0", &b[2], &b[0]]));
    let info = ok(&pool.volume(0, &["info", "vol0"]));
    assert!(
        info.contains("Volume ID: 2\n") && info.contains("Type: Distribute\n"),
        "{info}"
    );
}

#[test]
fn bad_commands_fail_with_one_line_and_change_nothing() {
    let mut pool = Pool::start(4);
    let b: Vec<String> = (0..4).map(|i| pool.addr(i)).collect();
    ok(&pool.volume(0, &["create", "good", "replica", "3", &b[0], &b[1], &b[2]]));
    ok(&pool.volume(0, &["set", "good", "ping-timeout", "10"]));
    let before = snapshot(&pool, &[0, 1, 2, 3]);

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["create", "v2", "replica", "3", &b[0], &b[1], &b[2], &b[3]],
            "replica 3 needs a multiple of 3 bricks, got 4",
        ),
        (
            vec!["create", "good", &b[3]],
            "a volume named good already exists",
        ),
        (
            vec!["create", "v2", "replica", "2", &b[3], &b[3]],
            "is listed twice",
        ),
        (vec!["create", "bad/name", &b[3]], "bad volume name"),
        (
            vec!["create", "v2", &b[3], "--chunk-size", "3M"],
            "bad chunk size",
        ),
        (
            vec!["create", "v2", &b[3], "--chunk-size", "lots"],
            "bad chunk size",
        ),
        (vec!["create", "v2", "nohostport"], "bad brick address"),
        (vec!["info", "nosuch"], "no volume named nosuch"),
        (vec!["start", "nosuch"], "no volume named nosuch"),
        (vec!["delete", "nosuch"], "no volume named nosuch"),
        (
            vec!["set", "nosuch", "quorum-type", "auto"],
            "no volume named nosuch",
        ),
        (
            vec!["set", "good", "colour", "blue"],
            "unknown option \"colour\"",
        ),
        (
            vec!["set", "good", "quorum-type", "maybe"],
            "bad value \"maybe\" for quorum-type",
        ),
        (
            vec!["set", "good", "quorum-count", "4"],
            "bad value \"4\" for quorum-count",
        ),
        (
            vec!["set", "good", "ping-timeout", "-1"],
            "for ping-timeout",
        ),
        (vec!["set", "good", "transport", "udp"], "for transport"),
        (vec!["get", "good", "colour"], "unknown option"),
        (vec!["stop", "good"], "only a started volume can be stopped"),
        (vec!["status", "detail", "nosuch"], "no volume named nosuch"),
    ];
    for (args, needle) in &cases {
        for via in [0, 1] {
            fails_with(&pool.volume(via, args), needle);
        }
    }
    assert_eq!(snapshot(&pool, &[0, 1, 2, 3]), before);

    // A dead brick at create: the error names it and no brick lists the
    // volume or holds anything for its id.
    let dead = b[3].clone();
    pool.bricks[3].take().unwrap().kill9();
    let out = pool.volume(0, &["create", "v2", "replica", "2", &b[1], &dead]);
    fails_with(&out, &format!("brick {dead} is unreachable"));
    let after = snapshot(&pool, &[0, 1, 2]);
    let before_live: Vec<String> = snapshot_filter(&before);
    assert_eq!(snapshot_filter(&after), before_live);
    assert_eq!(generations(&pool, &b[..3], 2), vec![None; 3]);

    // A volume of live bricks only can still be created...
    ok(&pool.volume(1, &["create", "v3", &b[1], &b[2]]));
    // ...but a pool member being down blocks changes to its volume.
    assert!(ok(&pool.volume(2, &["list"])).contains("v3"));
}

/// Drops what only brick 3 could show (it is dead in `after`).
fn snapshot_filter(snap: &[String]) -> Vec<String> {
    snap.iter()
        .filter(|l| !l.contains(" via 3:") && !l.starts_with("gens "))
        .cloned()
        .collect()
}

#[test]
fn a_dead_volume_brick_blocks_changes_and_nothing_moves() {
    let mut pool = Pool::start(3);
    let b: Vec<String> = (0..3).map(|i| pool.addr(i)).collect();
    ok(&pool.volume(0, &["create", "r", "replica", "3", &b[0], &b[1], &b[2]]));
    pool.bricks[2].take().unwrap().kill9();
    fails_with(
        &pool.volume(0, &["set", "r", "quorum-type", "none"]),
        &format!("brick {} is unreachable", b[2]),
    );
    fails_with(&pool.volume(1, &["start", "r"]), "is unreachable");
    assert_eq!(generations(&pool, &b[..2], 1), vec![Some(1); 2]);
    // Reads still work from the live bricks, and status shows the dead one.
    let info = ok(&pool.volume(1, &["info", "r"]));
    assert!(info.contains("Status: Created\n"), "{info}");
    let status = ok(&pool.volume(0, &["status", "r"]));
    assert!(
        status
            .lines()
            .any(|l| l.starts_with(b[2].as_str()) && l.contains(" N ")),
        "{status}"
    );
}

/// A change that was committed on one brick only (as if the command died
/// part way through its commit) wins: reads see it, and the next change
/// first copies it to the other bricks.
#[test]
fn an_interrupted_commit_is_rolled_forward() {
    let pool = Pool::start(3);
    let b: Vec<String> = (0..3).map(|i| pool.addr(i)).collect();
    ok(&pool.volume(0, &["create", "r", "replica", "3", &b[0], &b[1], &b[2]]));
    let secret = Secret::load(&pool.secret).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut spec = rt
        .block_on(volume::manage::fetch(&b[..1], &secret, "r"))
        .unwrap();
    spec.state = volume::VolumeState::Started;
    spec.generation = 2;
    let bytes = volume::volfile::encode_spec(&spec).unwrap();
    rt.block_on(async {
        let c = transport::TcpClient::connect(&b[0], secret.clone(), Default::default())
            .await
            .unwrap();
        let (resp, _) = c
            .call(
                transport::Request::PutVolConfig(transport::wire::PutVolConfig {
                    volume: spec.id,
                    generation: 2,
                    config: bytes,
                }),
                transport::Payload::None,
            )
            .await
            .unwrap();
        assert!(matches!(
            resp,
            transport::Response::VolConfigStored { generation: 2 }
        ));
    });
    assert_eq!(generations(&pool, &b, 1), vec![Some(2), Some(1), Some(1)]);
    // Newest generation wins for readers, through any brick.
    assert!(ok(&pool.volume(2, &["info", "r"])).contains("Status: Started\n"));
    ok(&pool.volume(2, &["set", "r", "quorum-type", "none"]));
    assert_eq!(generations(&pool, &b, 1), vec![Some(3); 3]);
    let info = ok(&pool.volume(1, &["info", "r"]));
    assert!(
        info.contains("Status: Started\n") && info.contains("quorum-type: none\n"),
        "{info}"
    );
}
