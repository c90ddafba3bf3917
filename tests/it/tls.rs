//! TLS to the services. Postgres: the local server's own certificate (Debian's
//! package enables SSL with a self-signed "snakeoil" certificate), verified
//! with `sslmode=verify-ca&sslrootcert=<that certificate>` through a whole
//! stack — `verify-ca`, because the snakeoil certificate names the machine's
//! host name, which differs between machines. These tests need the
//! distribution's Postgres with SSL on and a `redis-server` binary (the
//! services `./dev` installs); they fail with a message saying so otherwise. Redis: a
//! second, TLS-only `redis-server` started here with a CA made here, reached
//! with `rediss://` and `tls.ca_file`. RabbitMQ over `amqps://` is not
//! exercised: the machine's one broker has no TLS listener (see README).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use courier_shared::config::TlsSettings;
use courier_shared::limits::{Limits, Permit};
use courier_shared::tls::CaBundle;
use courier_tests::stack::TestStack;

/// The certificate the local Postgres serves (its `ssl_cert_file`).
async fn server_certificate() -> String {
    let (settings, _) = courier_tests::stack::test_settings();
    let url = courier_tests::stack::replace_db(settings.database.url.expose(), "postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("connect to Postgres");
    let (ssl, file): (String, String) =
        sqlx::query_as("SELECT current_setting('ssl'), current_setting('ssl_cert_file')")
            .fetch_one(&mut conn)
            .await
            .expect("settings");
    assert_eq!(
        ssl, "on",
        "these tests need a Postgres with SSL on (Debian's package turns it on)"
    );
    assert!(
        std::path::Path::new(&file).is_file(),
        "the server's certificate {file} must be readable here (same machine)"
    );
    file
}

fn verified_url(url: &str, root: &str) -> String {
    format!("{url}?sslmode=verify-ca&sslrootcert={root}")
}

#[tokio::test]
async fn an_order_is_delivered_with_postgres_over_verified_tls() {
    let root = server_certificate().await;
    let game = courier_tests::fakes::rcon::FakeGameServer::start(
        "pw",
        courier_shared::rcon::Dialect::Minecraft,
    )
    .await
    .expect("fake server");
    let mut stack = TestStack::start_with(
        |s| {
            s.database.url =
                courier_shared::config::Secret::new(verified_url(s.database.url.expose(), &root))
        },
        false,
    )
    .await;
    stack.start_worker().await;
    stack.add_game_server("s", &game).await;
    stack.add_rcon_product("p", "s", "say hi {username}").await;
    let (status, order) = stack.post_order("p", "Steve", None).await;
    assert_eq!(status, 201, "{order}");
    let id = order["id"].as_str().expect("id");
    stack
        .wait_for_order(id, "completed", Duration::from_secs(20))
        .await;
    // Every connection to this stack's database, the API's and the worker's, is TLS.
    let (all, tls): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.datname = current_database()",
    )
    .fetch_one(&stack.pool)
    .await
    .expect("pg_stat_ssl");
    assert!(all >= 2, "connections: {all}");
    assert_eq!(tls, all, "{tls} of {all} connections use TLS");
    stack.teardown().await;
}

#[tokio::test]
async fn verify_ca_refuses_a_certificate_it_cannot_verify() {
    // Without sslrootcert the built-in roots apply, and they do not vouch
    // for a self-signed certificate: the connection must fail, not fall back.
    server_certificate().await;
    let (settings, _) = courier_tests::stack::test_settings();
    let url = courier_tests::stack::replace_db(settings.database.url.expose(), "postgres")
        + "?sslmode=verify-ca";
    let settings = courier_shared::config::DatabaseSettings {
        url: courier_shared::config::Secret::new(url),
        ..settings.database
    };
    let pool = courier_shared::db::connect_lazy(&settings).expect("pool");
    let err = sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .expect_err("an unverifiable certificate is refused");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("tls"),
        "{err}"
    );
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=courier-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
}

struct TlsRedis {
    child: std::process::Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_redis(dir: &Path) -> TlsRedis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no", "--dir", "."])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server starts (it is one of the services)");
    TlsRedis { child, port }
}

/// A scratch directory removed when dropped (also when a test panics).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn limits_reach_a_tls_only_redis_with_the_ca_bundle() {
    let tmp = TempDir(
        std::env::temp_dir().join(format!("courier-tls-{}", uuid::Uuid::new_v4().simple())),
    );
    let dir = tmp.0.clone();
    std::fs::create_dir_all(&dir).expect("temp dir");
    make_certs(&dir);
    let redis = start_tls_redis(&dir);
    let url = format!("rediss://127.0.0.1:{}/", redis.port);
    // Wait until it answers TLS handshakes.
    let ca = CaBundle::load(&TlsSettings {
        ca_file: Some(dir.join("ca.crt").display().to_string()),
    })
    .expect("ca bundle loads");
    let client = courier_shared::redis::client(&url, &ca).expect("client");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.get_multiplexed_async_connection().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "TLS redis never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let limits = Limits::with_client(Some(client.clone()), "tls-test.");
    let permit = limits.acquire("slot", 1, Duration::from_secs(5)).await;
    assert!(
        matches!(permit, Permit::Redis { .. }),
        "the slot is taken in Redis"
    );
    assert!(!limits.fallback_active());
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("courier:tls-test.*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(!keys.is_empty(), "the semaphore lives in the TLS Redis");
    limits.release(permit).await;

    // The built-in roots do not know this CA: no connection, local limits.
    let unverified = courier_shared::redis::client(&url, &CaBundle::default()).expect("client");
    let limits = Limits::with_client(Some(unverified), "tls-test2.");
    let permit = limits.acquire("slot", 1, Duration::from_secs(5)).await;
    assert!(
        matches!(permit, Permit::Local(_)),
        "an unverified server is not used"
    );
    assert!(limits.fallback_active());

    // A bundle that is not PEM is refused at start-up, naming the key.
    std::fs::write(dir.join("bad.pem"), "not a certificate").expect("write");
    let err = CaBundle::load(&TlsSettings {
        ca_file: Some(dir.join("bad.pem").display().to_string()),
    })
    .expect_err("refused");
    assert!(err.to_string().contains("tls.ca_file"), "{err}");
    drop(redis);
    drop(tmp);
}
