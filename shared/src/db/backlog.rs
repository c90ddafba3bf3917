//! Counts of work that is waiting, for `/metrics`. Each count is served by a
//! partial index (unpublished outbox rows, open dead letters, held and
//! due deliveries), so a scrape stays cheap on a large history.

use sqlx::PgPool;

#[derive(Debug, Clone, Copy, Default)]
pub struct Backlog {
    /// Outbox rows not yet published.
    pub outbox: i64,
    /// The oldest unpublished outbox row's age in seconds (0 when none).
    pub outbox_oldest_seconds: f64,
    pub dead_letters_open: i64,
    pub held: i64,
    pub waiting: i64,
}

pub async fn snapshot(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let (outbox, oldest, dead, held, waiting): (i64, f64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL), \
                (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) \
                   FROM outbox WHERE published_at IS NULL), \
                (SELECT count(*) FROM dead_letters WHERE resolved_at IS NULL), \
                (SELECT count(*) FROM deliveries WHERE status = 'held'), \
                (SELECT count(*) FROM deliveries WHERE status = 'waiting' \
                    AND status IN ('queued', 'retrying', 'waiting'))",
        // (the redundant IN names `deliveries_due_idx`'s predicate, so the
        // count reads that partial index, not the table)
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        outbox,
        outbox_oldest_seconds: oldest,
        dead_letters_open: dead,
        held,
        waiting,
    })
}
