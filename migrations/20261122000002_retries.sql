-- Retries, waiting, dead letters.

ALTER TABLE deliveries
    -- Transient failures so far; the attempt limit counts these, not waiting re-checks.
    ADD COLUMN failures integer NOT NULL DEFAULT 0,
    -- When the next attempt is due (queued: at once; retrying/waiting: after the delay).
    -- The rescuer re-publishes deliveries overdue by far, in case a message was lost.
    ADD COLUMN next_attempt_at timestamptz,
    ADD COLUMN waiting_since timestamptz;
UPDATE deliveries SET next_attempt_at = created_at WHERE status IN ('queued', 'retrying', 'waiting');
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at) WHERE status IN ('queued', 'retrying', 'waiting');

-- Per-message TTL for messages bound for a delay tier.
ALTER TABLE outbox ADD COLUMN expiration_ms bigint;

-- Failures an admin must look at: dead deliveries (written by the worker when
-- it gives up, and completed by the recorder draining `courier.dead`) and
-- messages that never reached a delivery row (poison, unknown id).
CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    delivery_id  uuid REFERENCES deliveries(id) ON DELETE CASCADE,
    kind         text,
    target       text,
    reason       text NOT NULL,
    -- The raw message as it reached `courier.dead`, once the recorder saw it.
    body         text,
    -- The message's x-death header (why and where RabbitMQ dead-lettered it).
    x_death      jsonb,
    source       text NOT NULL CHECK (source IN ('worker', 'recorder')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz,
    resolved_by  text,
    resolution   text CHECK (resolution IN ('retried', 'discarded'))
);
CREATE UNIQUE INDEX dead_letters_open_delivery_idx ON dead_letters (delivery_id) WHERE resolved_at IS NULL;
CREATE INDEX dead_letters_open_idx ON dead_letters (created_at) WHERE resolved_at IS NULL;
