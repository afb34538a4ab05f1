//! Local checks of volume management that need no brick: sizes and
//! option validation, and errors for unreachable pools.

use std::collections::BTreeMap;

use transport::Secret;
use volume::manage::{self, check_option, parse_size, ManageError};
use volume::{VolumeKind, VolumeSpec, VolumeState};

fn spec(replica: u32) -> VolumeSpec {
    VolumeSpec {
        name: "v".into(),
        id: 1,
        kind: VolumeKind::Replicate { replica },
        bricks: (0..replica).map(|i| format!("h:{}", i + 1)).collect(),
        chunk_size: 1 << 20,
        options: BTreeMap::new(),
        state: VolumeState::Created,
        generation: 1,
    }
}

#[test]
fn sizes() {
    assert_eq!(parse_size("64M"), Some(64 << 20));
    assert_eq!(parse_size("1G"), Some(1 << 30));
    assert_eq!(parse_size("1GiB"), Some(1 << 30));
    assert_eq!(parse_size("512k"), Some(512 << 10));
    assert_eq!(parse_size("4096"), Some(4096));
    assert_eq!(parse_size("M"), None);
    assert_eq!(parse_size("-1M"), None);
    assert_eq!(parse_size("99999999999T"), None);
    assert_eq!(parse_size(""), None);
}

#[test]
fn options() {
    let s = spec(3);
    assert_eq!(check_option(&s, "quorum-type", "fixed").unwrap(), "fixed");
    assert_eq!(check_option(&s, "quorum-count", "03").unwrap(), "3");
    assert_eq!(check_option(&s, "ping-timeout", "10").unwrap(), "10");
    assert_eq!(check_option(&s, "transport", "tcp").unwrap(), "tcp");
    assert_eq!(check_option(&s, "transport", "rdma").unwrap(), "rdma");
    assert_eq!(
        check_option(&s, "transport", "rdma,tcp").unwrap(),
        "rdma,tcp"
    );
    let e = check_option(&s, "quorum-count", "4").unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad value \"4\" for quorum-count: expected a number of bricks from 1 to 3"
    );
    assert!(matches!(
        check_option(&s, "quorum-type", "most"),
        Err(ManageError::BadValue { .. })
    ));
    assert!(matches!(
        check_option(&s, "ping-timeout", "0"),
        Err(ManageError::BadValue { .. })
    ));
    assert!(matches!(
        check_option(&s, "transport", "udp"),
        Err(ManageError::BadValue { .. })
    ));
    assert!(matches!(
        check_option(&s, "nope", "1"),
        Err(ManageError::UnknownOption { .. })
    ));
}

#[tokio::test]
async fn create_is_validated_before_any_brick_is_asked() {
    let secret = Secret::generate();
    // Port 1 on loopback: nothing listens, but validation fails first.
    let pool = vec!["127.0.0.1:1".to_string()];
    let bricks: Vec<String> = (1..=4).map(|p| format!("127.0.0.1:{p}")).collect();
    let r3 = VolumeKind::Replicate { replica: 3 };
    let e = manage::create(&pool, &secret, "v", r3, &bricks, 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "replica 3 needs a multiple of 3 bricks, got 4"
    );
    let e = manage::create(&pool, &secret, "", r3, &bricks[..3], 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(e, ManageError::BadName { .. }));
    let dup = vec![bricks[0].clone(), bricks[1].clone(), bricks[0].clone()];
    let e = manage::create(&pool, &secret, "v", r3, &dup, 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "brick 127.0.0.1:1 is listed twice");
    let e = manage::create(&pool, &secret, "v", r3, &bricks[..3], 3 << 20)
        .await
        .unwrap_err();
    assert!(matches!(e, ManageError::BadChunkSize { .. }));
    // Valid request, dead brick: named.
    let e = manage::create(&pool, &secret, "v", r3, &bricks[..3], 1 << 20)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("brick 127.0.0.1:1 is unreachable"),
        "{e}"
    );
    let e = manage::list(&pool, &secret).await.unwrap_err();
    assert!(matches!(e, ManageError::NothingReachable { .. }), "{e}");
    let e = manage::list(&[], &secret).await.unwrap_err();
    assert!(matches!(e, ManageError::NoPool));
}
