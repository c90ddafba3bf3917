-- Digital downloads: files uploaded for a product, a `download` delivery
-- kind that gives each order item a link per file, and a log of every
-- download (dispute evidence). The bytes live in object storage (a local
-- directory or S3), never in Postgres; `storage_key` names them there.

ALTER TABLE deliveries DROP CONSTRAINT deliveries_kind_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_kind_check
    CHECK (kind IN ('rcon', 'discord_role', 'supplier_key', 'gateway_refund', 'webhook', 'email',
                    'alert', 'download'));
ALTER TABLE product_actions DROP CONSTRAINT product_actions_kind_check;
ALTER TABLE product_actions ADD CONSTRAINT product_actions_kind_check
    CHECK (kind IN ('rcon', 'discord_role', 'supplier_key', 'download'));

CREATE TABLE product_files (
    id            uuid PRIMARY KEY,
    product_id    uuid NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    name          text NOT NULL,
    content_type  text NOT NULL,
    -- An empty file is refused at upload, so an allowance of
    -- max_downloads × size is never zero.
    size_bytes    bigint NOT NULL CHECK (size_bytes > 0),
    sha256        text NOT NULL,
    storage_key   text NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Withdrawn files are not given to new orders; links already made keep
    -- working (the customer paid for them) and the object is kept.
    deleted_at    timestamptz
);
CREATE INDEX product_files_product_idx ON product_files (product_id) WHERE deleted_at IS NULL;

-- One link per (download delivery, file). The token in the URL is an HMAC of
-- (id, expires_at) and is not stored: it can be recomputed for a resend.
CREATE TABLE download_links (
    id              uuid PRIMARY KEY,
    order_id        uuid NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    item_id         uuid NOT NULL REFERENCES order_items(id) ON DELETE CASCADE,
    delivery_id     uuid NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    file_id         uuid NOT NULL REFERENCES product_files(id),
    ttl_hours       integer NOT NULL CHECK (ttl_hours > 0),
    expires_at      timestamptz NOT NULL,
    max_downloads   integer NOT NULL CHECK (max_downloads > 0),
    -- Responses that started at byte 0 (a new download).
    downloads       integer NOT NULL DEFAULT 0,
    -- Bytes sent in all responses; the link is used up at
    -- max_downloads × the file's size, so resumed (Range) downloads spend
    -- only what they fetch.
    bytes_served    bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_download_at timestamptz,
    revoked_at      timestamptz,
    revoked_reason  text,
    UNIQUE (delivery_id, file_id)
);
CREATE INDEX download_links_order_idx ON download_links (order_id);
CREATE INDEX download_links_item_idx ON download_links (item_id);

-- Every request for a valid link, served or refused.
CREATE TABLE download_log (
    id           bigserial PRIMARY KEY,
    link_id      uuid NOT NULL REFERENCES download_links(id) ON DELETE CASCADE,
    order_id     uuid NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT now(),
    -- The peer address, and `X-Forwarded-For` as the client or proxy sent it.
    ip           text,
    forwarded_for text,
    user_agent   text,
    range_header text,
    status       smallint NOT NULL,
    bytes        bigint NOT NULL DEFAULT 0,
    -- Why a request was refused (`link_revoked`, `link_expired`, …).
    refused      text
);
CREATE INDEX download_log_order_idx ON download_log (order_id, id);
