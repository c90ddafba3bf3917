-- Courier's initial schema. Status columns are text checked against the values
-- of the state machines in `shared/src/domain/`; every status change goes
-- through those transition functions and a guarded UPDATE.

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    -- First characters of the key, so an admin can tell keys apart without the secret.
    key_prefix  text NOT NULL,
    -- SHA-256 of the whole key; keys are 256-bit random, so a fast hash is enough.
    key_hash    bytea NOT NULL UNIQUE,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE game_servers (
    id               uuid PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    host             text NOT NULL,
    port             integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    password         text NOT NULL,
    dialect          text NOT NULL CHECK (dialect IN ('minecraft', 'source')),
    max_connections  integer NOT NULL DEFAULT 2 CHECK (max_connections BETWEEN 1 AND 64),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id          uuid PRIMARY KEY,
    sku         text NOT NULL UNIQUE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One fulfilment action of a product: what one delivery row will do.
CREATE TABLE product_actions (
    id          uuid PRIMARY KEY,
    product_id  uuid NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    position    integer NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('rcon', 'discord_role', 'supplier_key')),
    -- Kind-specific settings (for rcon: game_server id, command template, on_ambiguous).
    config      jsonb NOT NULL,
    UNIQUE (product_id, position)
);

CREATE TABLE orders (
    id                uuid PRIMARY KEY,
    order_number      text NOT NULL UNIQUE,
    status            text NOT NULL CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'refunded', 'partially_refunded', 'cancelled')),
    payment_status    text NOT NULL CHECK (payment_status IN ('pending', 'paid', 'failed', 'refunded', 'partially_refunded')),
    gateway           text,
    transaction_id    text,
    customer_name     text,
    customer_email    text,
    customer_phone    text,
    game_username     text,
    game_uuid         text,
    discord_user_id   text,
    currency          char(3) NOT NULL,
    subtotal          numeric NOT NULL CHECK (subtotal >= 0),
    tax               numeric NOT NULL CHECK (tax >= 0),
    total             numeric NOT NULL CHECK (total >= 0),
    idempotency_key   text UNIQUE,
    -- SHA-256 of the canonical request body, to tell a retry from a conflicting reuse of the key.
    request_hash      bytea,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    paid_at           timestamptz,
    completed_at      timestamptz
);
CREATE INDEX orders_status_idx ON orders (status, created_at);

CREATE TABLE order_items (
    id               uuid PRIMARY KEY,
    order_id         uuid NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    position         integer NOT NULL,
    product_id       uuid NOT NULL REFERENCES products(id),
    sku              text NOT NULL,
    product_name     text NOT NULL,
    quantity         integer NOT NULL CHECK (quantity > 0),
    unit_price       numeric NOT NULL CHECK (unit_price >= 0),
    total            numeric NOT NULL CHECK (total >= 0),
    delivery_status  text NOT NULL CHECK (delivery_status IN ('pending', 'processing', 'waiting', 'fulfilled', 'delivered', 'failed', 'revoked')),
    custom_fields    jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (order_id, position)
);

CREATE TABLE deliveries (
    id              uuid PRIMARY KEY,
    order_id        uuid NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    item_id         uuid NOT NULL REFERENCES order_items(id) ON DELETE CASCADE,
    action_id       uuid REFERENCES product_actions(id) ON DELETE SET NULL,
    kind            text NOT NULL CHECK (kind IN ('rcon', 'discord_role', 'supplier_key')),
    -- What the delivery acts on, for filtering (game server id, guild id, supplier).
    target          text NOT NULL,
    -- The action rendered at accept time (for rcon: the exact command to run).
    payload         jsonb NOT NULL,
    status          text NOT NULL CHECK (status IN ('queued', 'running', 'retrying', 'waiting', 'succeeded', 'dead', 'held', 'cancelled')),
    attempts        integer NOT NULL DEFAULT 0,
    lease_until     timestamptz,
    leased_by       text,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);
CREATE INDEX deliveries_order_idx ON deliveries (order_id);
CREATE INDEX deliveries_item_idx ON deliveries (item_id);
CREATE INDEX deliveries_status_idx ON deliveries (status, updated_at);
CREATE INDEX deliveries_lease_idx ON deliveries (lease_until) WHERE status = 'running';

CREATE TABLE delivery_attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  uuid NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    worker       text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    -- NULL while the attempt runs.
    outcome      text CHECK (outcome IN ('succeeded', 'transient', 'permanent', 'waiting', 'abandoned')),
    error        text,
    response     text,
    UNIQUE (delivery_id, attempt)
);

CREATE TABLE order_events (
    id           bigserial PRIMARY KEY,
    order_id     uuid NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    delivery_id  uuid REFERENCES deliveries(id) ON DELETE CASCADE,
    kind         text NOT NULL,
    message      text NOT NULL,
    actor        text NOT NULL,
    data         jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_events_order_idx ON order_events (order_id, id);

-- Messages to publish, written in the same transaction as the change that
-- causes them; the relay publishes them with confirms and marks them sent.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    queue         text NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
