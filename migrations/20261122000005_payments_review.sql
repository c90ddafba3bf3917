-- Refund idempotency keys, and the newest gateway event applied to a dispute
-- (older events arriving late must not move it backwards).

ALTER TABLE refunds
    ADD COLUMN idempotency_key text,
    -- SHA-256 of the request, to tell a retry from a conflicting reuse of the key.
    ADD COLUMN request_hash bytea;
CREATE UNIQUE INDEX refunds_idempotency_idx ON refunds (order_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

ALTER TABLE disputes ADD COLUMN last_event_at timestamptz;

-- An event that waits too long for its payment is reported once.
ALTER TABLE payment_events ADD COLUMN alerted_at timestamptz;
