-- The API process that accepted an order publishes its job messages itself,
-- right after the accept commits (the relay's direct lanes), instead of
-- waiting for a relay lane to lock them. Until `publishing_until` the row is
-- that process's to publish: relays sweeping the outbox skip it, so it is
-- not sent twice while its confirm is on the way. When the process cannot
-- publish it (the broker is away, the process died), the lease runs out
-- (or is cleared) and the relay takes the row as any other. NULL for every
-- row written elsewhere.
ALTER TABLE outbox ADD COLUMN publishing_until timestamptz;
