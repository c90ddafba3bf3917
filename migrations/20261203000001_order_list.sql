-- Order management (staff): list, filter, sort and search orders on a large
-- history, and staff notes.
--
-- Search: `q` matches a substring of one lower-cased text per order — order
-- number, customer e-mail and name, game username, transaction id and the
-- names of its products — through a trigram GIN index (pg_trgm is a trusted
-- extension: the database owner may create it). Product names are copied onto
-- the order at accept (`item_names`): items never change after it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

ALTER TABLE orders ADD COLUMN item_names text NOT NULL DEFAULT '';
UPDATE orders o SET item_names = coalesce(
    (SELECT string_agg(i.product_name, ' ' ORDER BY i.position) FROM order_items i WHERE i.order_id = o.id), '');
ALTER TABLE orders ADD COLUMN search text GENERATED ALWAYS AS (lower(
    order_number || ' ' || coalesce(customer_email, '') || ' ' || coalesce(customer_name, '') || ' ' ||
    coalesce(game_username, '') || ' ' || coalesce(transaction_id, '') || ' ' || item_names)) STORED;
CREATE INDEX orders_search_idx ON orders USING gin (search gin_trgm_ops);

-- Keyset pages for each sort (key, id).
CREATE INDEX orders_created_idx ON orders (created_at, id);
CREATE INDEX orders_total_idx ON orders (total, id);
CREATE INDEX orders_status_list_idx ON orders (status, id);
CREATE INDEX orders_payment_status_idx ON orders (payment_status, id);

-- Filters by product, game server or supplier, and orders needing attention.
CREATE INDEX order_items_sku_idx ON order_items (sku, order_id);
CREATE INDEX deliveries_target_idx ON deliveries (target, order_id);
CREATE INDEX item_keys_supplier_idx ON item_keys (supplier, item_id) WHERE supplier IS NOT NULL;
CREATE INDEX deliveries_attention_idx ON deliveries (status, order_id)
    WHERE status IN ('dead', 'held', 'waiting');

-- Staff notes: never shown to customers; edits keep the earlier text.
CREATE TABLE order_notes (
    id          bigserial PRIMARY KEY,
    order_id    uuid NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    body        text NOT NULL,
    author      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text,
    deleted_at  timestamptz,
    deleted_by  text
);
CREATE INDEX order_notes_order_idx ON order_notes (order_id, id);

CREATE TABLE order_note_revisions (
    id         bigserial PRIMARY KEY,
    note_id    bigint NOT NULL REFERENCES order_notes(id) ON DELETE CASCADE,
    -- The text as it was before the edit.
    body       text NOT NULL,
    author     text NOT NULL,
    written_at timestamptz NOT NULL
);
CREATE INDEX order_note_revisions_note_idx ON order_note_revisions (note_id, id);
