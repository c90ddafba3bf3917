//! The RCON client against the fake game server, misbehaving in every way it can.

use std::sync::Arc;
use std::time::Duration;

use courier_shared::error::ErrorClass;
use courier_shared::rcon::{
    Dialect, Framing, RconConnection, RconError, RconPool, RconTarget, Timeouts,
};
use courier_tests::fakes::rcon::{Behaviour, FakeGameServer};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        command: Duration::from_millis(500),
        max_response_bytes: 1 << 20,
        slot_wait: Duration::from_secs(2),
    }
}

fn target(server: &FakeGameServer) -> RconTarget {
    RconTarget {
        host: server.addr.ip().to_string(),
        port: server.addr.port(),
        password: server.password.clone(),
        dialect: server.dialect,
        framing: Framing::Auto,
        quiet: Duration::from_millis(200),
    }
}

#[tokio::test]
async fn both_dialects_run_commands_and_collect_multi_packet_responses() {
    for dialect in [Dialect::Minecraft, Dialect::Source] {
        let server = FakeGameServer::start("pw", dialect).await.expect("server");
        let mut conn = RconConnection::connect(&target(&server), timeouts())
            .await
            .expect("login");
        assert_eq!(conn.exec("list").await.expect("exec"), "ok: list");
        let big = conn.exec("big 10000").await.expect("exec");
        assert_eq!(big.len(), 10_000, "{dialect}: three packets joined");
        // The connection stays usable after a multi-packet answer (stale packets skipped).
        assert_eq!(
            conn.exec("time set day").await.expect("exec"),
            "ok: time set day"
        );
        assert_eq!(server.commands(), vec!["list", "big 10000", "time set day"]);
    }
}

#[tokio::test]
async fn fragmented_answers_are_reassembled() {
    let server = FakeGameServer::start("pw", Dialect::Source)
        .await
        .expect("server");
    server.set(Behaviour {
        fragment: true,
        ..Behaviour::default()
    });
    let mut conn = RconConnection::connect(&target(&server), timeouts())
        .await
        .expect("login");
    assert_eq!(conn.exec("status").await.expect("exec"), "ok: status");
}

#[tokio::test]
async fn wrong_password_is_a_permanent_error() {
    let server = FakeGameServer::start("right", Dialect::Minecraft)
        .await
        .expect("server");
    let mut t = target(&server);
    t.password = "wrong".into();
    let err = RconConnection::connect(&t, timeouts())
        .await
        .expect_err("refused");
    assert!(matches!(err, RconError::AuthFailed), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn slow_dropped_and_malformed_answers_are_transient_and_flag_a_possible_send() {
    let server = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("server");
    for (behaviour, expect) in [
        (
            Behaviour {
                delay: Duration::from_secs(2),
                ..Behaviour::default()
            },
            "timed out",
        ),
        (
            Behaviour {
                drop_after_command: true,
                ..Behaviour::default()
            },
            "closed",
        ),
        (
            Behaviour {
                malformed: true,
                ..Behaviour::default()
            },
            "malformed",
        ),
    ] {
        server.set(behaviour);
        let mut conn = RconConnection::connect(&target(&server), timeouts())
            .await
            .expect("login");
        let err = conn.exec("give alex apple").await.expect_err("fails");
        assert!(err.to_string().contains(expect), "{err}");
        assert_eq!(err.error.class(), ErrorClass::Transient);
        assert!(err.maybe_sent, "the command was written before the failure");
    }
}

#[tokio::test]
async fn commands_over_the_minecraft_limit_are_refused_before_sending() {
    let server = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("server");
    let mut conn = RconConnection::connect(&target(&server), timeouts())
        .await
        .expect("login");
    let err = conn.exec(&"x".repeat(1447)).await.expect_err("too long");
    assert!(matches!(
        err.error,
        RconError::CommandTooLong {
            len: 1447,
            max: 1446
        }
    ));
    assert!(!err.maybe_sent);
    assert_eq!(err.error.class(), ErrorClass::Permanent);
    assert!(server.commands().is_empty());
}

#[tokio::test]
async fn pool_never_exceeds_max_connections_and_reuses_sessions() {
    let server = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("server");
    server.set(Behaviour {
        delay: Duration::from_millis(30),
        ..Behaviour::default()
    });
    let pool = Arc::new(RconPool::new(
        target(&server),
        2,
        timeouts(),
        Duration::from_secs(60),
    ));
    let runs = (0..12).map(|i| {
        let pool = pool.clone();
        async move { pool.exec(&format!("say {i}")).await }
    });
    for r in futures_util::future::join_all(runs).await {
        r.expect("exec");
    }
    assert_eq!(server.commands().len(), 12);
    assert_eq!(server.max_concurrent_sessions(), 2);
    assert_eq!(
        server.logins(),
        2,
        "connections are pooled, not reopened per command"
    );
}

/// Property: whatever bytes a server sends, the client returns an error or a
/// result — it never panics, hangs past its timeout, or buffers without bound.
#[tokio::test]
async fn arbitrary_server_bytes_never_panic_the_client() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let rounds = 300;
    let server = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for _ in 0..rounds {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let len = rng.random_range(0..200);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && bytes.len() >= 12 {
                // A plausible header now and then, to reach the body paths.
                let size: i32 = rng.random_range(-5..300);
                bytes[..4].copy_from_slice(&size.to_le_bytes());
            }
            let mut sink = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut sink)).await;
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        }
    });
    let t = RconTarget {
        host: addr.ip().to_string(),
        port: addr.port(),
        password: "pw".into(),
        dialect: Dialect::Source,
        framing: Framing::Auto,
        quiet: Duration::from_millis(200),
    };
    let quick = Timeouts {
        connect: Duration::from_millis(300),
        command: Duration::from_millis(300),
        max_response_bytes: 4096,
        slot_wait: Duration::from_millis(300),
    };
    for _ in 0..rounds {
        let started = std::time::Instant::now();
        if let Ok(mut conn) = RconConnection::connect(&t, quick).await {
            let _ = conn.exec("status").await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a call outlived its timeouts"
        );
    }
    server.await.expect("server task");
}
