-- Payment webhooks, refunds, disputes, cancellation and revocation.

ALTER TABLE orders
    -- The buyer's IP as the store saw it, for dispute evidence.
    ADD COLUMN customer_ip text,
    -- Sum of every refund recorded (requested through Courier or seen at the
    -- gateway); never above the total.
    ADD COLUMN refunded_amount numeric NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    -- Set once access is withdrawn (full refund, cancel, chargeback): no
    -- delivery of the order runs again, and one that finishes afterwards is revoked.
    ADD COLUMN revoked_at timestamptz,
    ADD CONSTRAINT orders_refunds_within_total CHECK (refunded_amount <= total);
CREATE INDEX orders_transaction_idx ON orders (gateway, transaction_id) WHERE transaction_id IS NOT NULL;

-- Deliveries now also revoke what was delivered and move money back
-- (a gateway refund is a job like any other: retries, dead letters, admin retry).
ALTER TABLE deliveries DROP CONSTRAINT deliveries_kind_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_kind_check
    CHECK (kind IN ('rcon', 'discord_role', 'supplier_key', 'gateway_refund'));
ALTER TABLE deliveries ALTER COLUMN item_id DROP NOT NULL;
ALTER TABLE deliveries
    ADD COLUMN purpose text NOT NULL DEFAULT 'deliver' CHECK (purpose IN ('deliver', 'revoke', 'refund')),
    -- For revoke jobs: the delivery whose effect they undo.
    ADD COLUMN revokes uuid REFERENCES deliveries(id) ON DELETE SET NULL;

-- Shown to the customer: a stock key revealed once cannot be taken back.
ALTER TABLE item_keys ADD COLUMN revealed_at timestamptz;

CREATE TABLE refunds (
    id            uuid PRIMARY KEY,
    order_id      uuid NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    amount        numeric NOT NULL CHECK (amount > 0),
    currency      char(3) NOT NULL,
    reason        text NOT NULL CHECK (reason IN ('requested_by_customer', 'duplicate', 'fraudulent', 'not_as_described', 'other')),
    reason_text   text,
    -- `api`: asked of Courier, which asks the gateway; `gateway`: seen in a webhook.
    source        text NOT NULL CHECK (source IN ('api', 'gateway')),
    -- pending: the gateway job has not succeeded yet; succeeded; failed (its job is
    -- dead, see dead letters); recorded: no gateway to ask (money moved elsewhere).
    status        text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'recorded')),
    -- The gateway's refund id, once known.
    external_id   text UNIQUE,
    delivery_id   uuid REFERENCES deliveries(id) ON DELETE SET NULL,
    revoke        boolean NOT NULL,
    requested_by  text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz
);
CREATE INDEX refunds_order_idx ON refunds (order_id);

CREATE TABLE disputes (
    id               uuid PRIMARY KEY,
    order_id         uuid NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    external_id      text NOT NULL UNIQUE,
    amount           numeric NOT NULL,
    currency         char(3) NOT NULL,
    reason           text NOT NULL,
    -- The gateway's own status word, as last seen.
    gateway_status   text NOT NULL,
    evidence_due_by  timestamptz,
    outcome          text CHECK (outcome IN ('won', 'lost', 'accepted')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    closed_at        timestamptz
);
CREATE INDEX disputes_order_idx ON disputes (order_id);

-- Every verified webhook event, once: the unique key is the dedupe of
-- at-least-once delivery. Events about a payment Courier has not seen yet wait
-- here (`pending`, keyed by `order_ref`) and are applied, in the order they
-- happened, when it arrives.
CREATE TABLE payment_events (
    id           bigserial PRIMARY KEY,
    provider     text NOT NULL CHECK (provider IN ('stripe', 'generic')),
    event_id     text NOT NULL,
    event_type   text NOT NULL,
    order_ref    text,
    order_id     uuid REFERENCES orders(id) ON DELETE SET NULL,
    payload      jsonb NOT NULL,
    occurred_at  timestamptz NOT NULL,
    status       text NOT NULL CHECK (status IN ('received', 'applied', 'pending', 'ignored', 'failed')),
    note         text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    applied_at   timestamptz,
    UNIQUE (provider, event_id)
);
CREATE INDEX payment_events_pending_idx ON payment_events (provider, order_ref) WHERE status = 'pending';
