//! The set-based claim and completion against the real Postgres: what a
//! batch does with duplicates, lost leases and withdrawn orders.

use courier_shared::db::deliveries::{self, NotClaimed, Success};
use courier_shared::domain::delivery::DeliveryStatus;
use courier_tests::stack::TestStack;
use uuid::Uuid;

/// A stack without a worker and `n` paid orders of an RCON product: their
/// deliveries stay queued for the test to claim.
async fn queued(n: usize) -> (TestStack, Vec<(Uuid, Uuid)>) {
    let stack = TestStack::start_with(|_| {}, false).await;
    let game = courier_tests::fakes::rcon::FakeGameServer::start(
        "pw",
        courier_shared::rcon::Dialect::Minecraft,
    )
    .await
    .expect("fake server");
    stack.add_game_server("s", &game).await;
    stack.add_rcon_product("p", "s", "say {username}").await;
    let mut out = Vec::new();
    for i in 0..n {
        let (_, o) = stack.post_order("p", &format!("u{i}"), None).await;
        let order: Uuid = o["id"].as_str().expect("id").parse().expect("uuid");
        let delivery: Uuid = sqlx::query_scalar("SELECT id FROM deliveries WHERE order_id = $1")
            .bind(order)
            .fetch_one(&stack.pool)
            .await
            .expect("delivery");
        out.push((order, delivery));
    }
    (stack, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_claims_each_delivery_once_and_completes_only_what_it_still_holds() {
    let (stack, rows) = queued(3).await;
    let (a, b, c) = (rows[0], rows[1], rows[2]);

    // `a` twice in one batch (a redelivered message), and an unknown id.
    let ghost = Uuid::new_v4();
    let mut tx = stack.pool.begin().await.expect("tx");
    let claims = deliveries::claim_batch(&mut tx, &[a.1, b.1, a.1, c.1, ghost], "w1", 30)
        .await
        .expect("claim");
    tx.commit().await.expect("commit");
    assert!(claims[0].1.is_ok() && claims[1].1.is_ok() && claims[3].1.is_ok());
    assert_eq!(
        claims[2].1.as_ref().err(),
        Some(&NotClaimed::NotClaimable(DeliveryStatus::Running))
    );
    assert_eq!(claims[4].1.as_ref().err(), Some(&NotClaimed::Missing));
    assert_eq!(
        stack
            .count("SELECT count(*) FROM orders WHERE status = 'processing'")
            .await,
        3,
        "each order moved to processing once"
    );
    assert_eq!(
        stack.count("SELECT count(*) FROM delivery_attempts").await,
        3
    );

    // `b`'s lease was taken over (another worker holds it now); `c`'s order
    // was withdrawn while it ran: the batch applies only `a`.
    sqlx::query("UPDATE deliveries SET leased_by = 'w2' WHERE id = $1")
        .bind(b.1)
        .execute(&stack.pool)
        .await
        .expect("steal");
    sqlx::query("UPDATE orders SET revoked_at = now() WHERE id = $1")
        .bind(c.0)
        .execute(&stack.pool)
        .await
        .expect("withdraw");
    let batch: Vec<Success> = [a, b, c]
        .iter()
        .map(|(order_id, id)| Success {
            id: *id,
            order_id: *order_id,
            attempt: 1,
            response: Some(format!("ok {id}")),
        })
        .collect();
    let applied = courier_shared::service::fulfilment::complete(&stack.pool, "w1", &batch)
        .await
        .expect("complete");
    assert_eq!(applied, vec![a.1]);
    let status = |id: Uuid| {
        let pool = stack.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT d.status || '/' || i.delivery_status || '/' || o.status FROM deliveries d \
                 JOIN order_items i ON i.id = d.item_id JOIN orders o ON o.id = d.order_id WHERE d.id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("status")
        }
    };
    assert_eq!(status(a.1).await, "succeeded/delivered/completed");
    assert_eq!(
        status(b.1).await,
        "running/processing/processing",
        "left to its holder"
    );
    assert_eq!(
        status(c.1).await,
        "running/processing/processing",
        "left to `record`"
    );
    let answer: Option<String> =
        sqlx::query_scalar("SELECT response FROM delivery_attempts WHERE delivery_id = $1")
            .bind(a.1)
            .fetch_one(&stack.pool)
            .await
            .expect("attempt");
    assert_eq!(answer, Some(format!("ok {}", a.1)));
    // One stored event per order change: created (`processing` at once), completed.
    assert_eq!(
        stack
            .count(&format!(
                "SELECT count(*) FROM order_events WHERE order_id = '{}'",
                a.0
            ))
            .await,
        2
    );
    stack.teardown().await;
}

/// The common claim (order and item already `processing`) takes no order
/// lock: it goes through while another transaction holds the order's row,
/// as a withdrawal or an admin action would. A pending order's first claim
/// still moves it, and every message is answered in the order given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_order_is_claimed_without_its_lock_and_a_pending_one_still_moves() {
    let (stack, rows) = queued(2).await;
    let (started, pending) = (rows[0], rows[1]);
    sqlx::query("UPDATE orders SET status = 'pending' WHERE id = $1")
        .bind(pending.0)
        .execute(&stack.pool)
        .await
        .expect("pending order");
    sqlx::query("UPDATE order_items SET delivery_status = 'pending' WHERE order_id = $1")
        .bind(pending.0)
        .execute(&stack.pool)
        .await
        .expect("pending item");

    let mut holder = stack.pool.begin().await.expect("tx");
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(started.0)
        .execute(&mut *holder)
        .await
        .expect("lock the started order");
    let ghost = Uuid::new_v4();
    let claims = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        courier_shared::service::fulfilment::claim(
            &stack.pool,
            &[started.1, pending.1, started.1, ghost],
            "w1",
            30,
        ),
    )
    .await
    .expect("the claim waited for the order's lock")
    .expect("claim");
    holder.rollback().await.expect("release");

    let ids: Vec<Uuid> = claims.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![started.1, pending.1, started.1, ghost]);
    assert_eq!(claims[0].1.as_ref().map(|c| c.id).ok(), Some(started.1));
    assert_eq!(claims[1].1.as_ref().map(|c| c.id).ok(), Some(pending.1));
    assert_eq!(
        claims[2].1.as_ref().err(),
        Some(&NotClaimed::NotClaimable(DeliveryStatus::Running))
    );
    assert_eq!(claims[3].1.as_ref().err(), Some(&NotClaimed::Missing));
    for (order, _) in [started, pending] {
        let s: String = sqlx::query_scalar(
            "SELECT o.status || '/' || i.delivery_status FROM orders o \
             JOIN order_items i ON i.order_id = o.id WHERE o.id = $1",
        )
        .bind(order)
        .fetch_one(&stack.pool)
        .await
        .expect("status");
        assert_eq!(s, "processing/processing");
    }
    let timeline = |order: Uuid| {
        let pool = stack.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT string_agg(kind, ',' ORDER BY id) FROM order_events WHERE order_id = $1",
            )
            .bind(order)
            .fetch_one(&pool)
            .await
            .expect("events")
        }
    };
    assert_eq!(timeline(started.0).await, "order.created");
    assert_eq!(timeline(pending.0).await, "order.created,order.processing");
    assert_eq!(
        stack.count("SELECT count(*) FROM delivery_attempts").await,
        2
    );
    stack.teardown().await;
}

/// An order's status changes on the hot path (and an item's) are HOT
/// updates only while no index of `orders` or `order_items` names a column
/// they write — in its key, its expressions or its predicate
/// (docs/hot-path.md, "Status changes are HOT updates").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_index_names_a_column_the_status_changes_write() {
    let stack = TestStack::start_with(|_| {}, false).await;
    let offending: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index \
         WHERE indrelid IN ('orders'::regclass, 'order_items'::regclass) \
           AND pg_get_indexdef(indexrelid) ~ '\\m(status|delivery_status|updated_at|completed_at)\\M'",
    )
    .fetch_all(&stack.pool)
    .await
    .expect("indexes");
    assert!(
        offending.is_empty(),
        "these make every status change rewrite all indexes: {offending:?}"
    );
    let indexes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_index WHERE indrelid = 'orders'::regclass")
            .fetch_one(&stack.pool)
            .await
            .expect("count");
    assert!(
        indexes >= 10,
        "the check read the orders' indexes: {indexes}"
    );
    stack.teardown().await;
}

/// The product cache of an API process (`service::orders::ProductCache`):
/// a change made by another process (here straight in SQL, as a CLI or
/// another replica would) reaches the next orders through the catalog
/// trigger's announcement, with no restart and no read per order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_change_made_elsewhere_reaches_the_next_orders() {
    // Orders accepted until the product is kept: the first one can come
    // before the cache's `LISTEN` is in place (it keeps nothing then) or
    // before the product's own announcement arrives (which empties it).
    let (stack, _) = queued(1).await;
    let cache = stack.api.as_ref().expect("api").products.clone();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while cache.kept() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an accepted order's product is never kept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (code, o) = stack.post_order("p", "warm", None).await;
        assert_eq!(code, reqwest::StatusCode::CREATED, "{o}");
    }
    sqlx::query(
        "UPDATE product_actions SET config = jsonb_set(config, '{command}', '\"say changed {username}\"')",
    )
    .execute(&stack.pool)
    .await
    .expect("change the command");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (code, o) = stack.post_order("p", "late", None).await;
        assert_eq!(code, reqwest::StatusCode::CREATED, "{o}");
        let payload: String = sqlx::query_scalar(
            "SELECT payload::text FROM deliveries WHERE order_id = $1::text::uuid",
        )
        .bind(o["id"].as_str().expect("id"))
        .fetch_one(&stack.pool)
        .await
        .expect("delivery");
        if payload.contains("say changed late") {
            // Kept again, as it is now: no read per order after the change either.
            assert_eq!(cache.kept(), 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "orders still planned from the old product: {payload}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stack.teardown().await;
}

/// A product saved anew gets new action ids; an order planned from the
/// ones a cache kept is refused by the deliveries' foreign key and planned
/// again from what is stored — never a 5xx, never the old action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_planned_from_a_product_saved_anew_is_planned_again() {
    use courier_shared::service::orders::NewOrder;
    let (stack, _) = queued(0).await;
    // Its cache keeps what it reads and hears of no change.
    let own = courier_tests::stack::OwnAccepts::new(&stack, None);
    let (with, cache) = (own.with(&stack.pool), &own.cache);
    let order = |user: &str| -> NewOrder {
        serde_json::from_value(courier_tests::stack::sample_order("p", user)).expect("order")
    };
    courier_shared::service::orders::create_order(&with, order("first"), None, "test")
        .await
        .expect("first order");
    assert_eq!(cache.kept(), 1, "the product is kept");

    stack
        .add_rcon_product("p", "s", "say again {username}")
        .await;
    let second =
        courier_shared::service::orders::create_order(&with, order("second"), None, "test")
            .await
            .expect("planned again");
    let (payload, current): (String, bool) = sqlx::query_as(
        "SELECT d.payload::text, d.action_id = a.id FROM deliveries d \
         JOIN order_items i ON i.id = d.item_id \
         JOIN product_actions a ON a.product_id = i.product_id WHERE d.order_id = $1",
    )
    .bind(second.order.id)
    .fetch_one(&stack.pool)
    .await
    .expect("delivery");
    assert!(payload.contains("say again second"), "{payload}");
    assert!(current, "the delivery names the product's current action");
    stack.teardown().await;
}

/// Each `(node type, relation)` of an `EXPLAIN (FORMAT JSON)` plan.
fn plan_nodes(node: &serde_json::Value, out: &mut Vec<(String, String)>) {
    if let Some(kind) = node.get("Node Type").and_then(|v| v.as_str()) {
        let relation = node
            .get("Relation Name")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        out.push((kind.to_owned(), relation.to_owned()));
    }
    if let Some(plan) = node.get("Plan") {
        plan_nodes(plan, out);
    }
    for child in node
        .get("Plans")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        plan_nodes(child, out);
    }
}

/// The worker's connections (`db::WORKER_PLANS`) plan a statement once and
/// keep a plan that finds its rows through an index, on a database that is
/// still nearly empty (where the generic plan of this very shape, the
/// completer's status write, was a hash join over a sequential scan, kept
/// as the table grew), and never JIT-compile it (a disabled scan is costed
/// far above `jit_above_cost`; the game server found by its text id has no
/// index, as in the claim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_connections_keep_one_indexed_plan_without_jit() {
    let (mut stack, rows) = queued(1).await;
    stack.start_worker().await;
    let worker = stack.worker.as_ref().expect("worker");
    let mut conn = worker.context().pool.acquire().await.expect("connection");
    let item: Uuid = sqlx::query_scalar("SELECT item_id FROM deliveries WHERE id = $1")
        .bind(rows[0].1)
        .fetch_one(&mut *conn)
        .await
        .expect("item");
    sqlx::query(
        "PREPARE status_write_like(uuid[], text) AS SELECT i.id, \
           (SELECT g.name FROM game_servers g WHERE g.id::text = $2) \
         FROM UNNEST($1::uuid[]) AS u(id) JOIN order_items i ON i.id = u.id WHERE i.id = ANY($1)",
    )
    .execute(&mut *conn)
    .await
    .expect("prepare");
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        // `item` is a Uuid: nothing of it can escape the literal.
        "EXPLAIN (FORMAT JSON) EXECUTE status_write_like('{{{item}}}', 'x')"
    )))
    .fetch_one(&mut *conn)
    .await
    .expect("explain");
    let text = plan.to_string();
    assert!(
        text.contains("$1"),
        "a generic plan (its conditions name the parameter): {text}"
    );
    let mut nodes = Vec::new();
    for entry in plan.as_array().into_iter().flatten() {
        plan_nodes(entry, &mut nodes);
    }
    let items: Vec<&String> = nodes
        .iter()
        .filter(|(_, r)| r == "order_items")
        .map(|(k, _)| k)
        .collect();
    assert!(
        !items.is_empty() && items.iter().all(|k| k.as_str() != "Seq Scan"),
        "order_items are found through an index: {nodes:?}"
    );
    assert!(!text.contains("JIT"), "no JIT compilation: {text}");
    stack.teardown().await;
}
