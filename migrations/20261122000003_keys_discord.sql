-- CD keys (own stock and bought), the supplier order of a key delivery, admin alerts.

-- Pre-loaded codes of a product, encrypted (AES-256-GCM, bound to the product).
CREATE TABLE key_stock (
    id          bigserial PRIMARY KEY,
    product_id  uuid NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    code_enc    bytea NOT NULL,
    -- SHA-256 of product id and code, to refuse duplicates without decrypting.
    code_hash   bytea NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    taken_by    uuid REFERENCES deliveries(id) ON DELETE SET NULL,
    taken_at    timestamptz,
    UNIQUE (product_id, code_hash)
);
CREATE INDEX key_stock_free_idx ON key_stock (product_id, id) WHERE taken_by IS NULL;
CREATE UNIQUE INDEX key_stock_taken_idx ON key_stock (taken_by) WHERE taken_by IS NOT NULL;

-- The key a delivery obtained, encrypted and bound to its item.
CREATE TABLE item_keys (
    id                 bigserial PRIMARY KEY,
    item_id            uuid NOT NULL REFERENCES order_items(id) ON DELETE CASCADE,
    delivery_id        uuid UNIQUE REFERENCES deliveries(id) ON DELETE CASCADE,
    code_enc           bytea NOT NULL,
    source             text NOT NULL CHECK (source IN ('stock', 'supplier', 'manual')),
    supplier           text,
    supplier_order_id  text,
    -- What the key cost us (supplier price), for profit reports.
    cost               numeric,
    stock_id           bigint REFERENCES key_stock(id) ON DELETE SET NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    released_at        timestamptz
);
CREATE INDEX item_keys_item_idx ON item_keys (item_id);

-- Once a supplier order is placed for a delivery: {supplier, order_id, price}.
ALTER TABLE deliveries ADD COLUMN supplier_order jsonb;

-- Things an admin should know about (low stock, nothing purchasable). Sent by
-- email/webhook once notifications exist; listed by the admin API now.
CREATE TABLE admin_alerts (
    id               bigserial PRIMARY KEY,
    kind             text NOT NULL,
    message          text NOT NULL,
    data             jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    acknowledged_at  timestamptz
);
