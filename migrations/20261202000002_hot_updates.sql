-- The hot path updates an order's status twice (processing, completed) and a
-- delivery's three times. An index on a column that changes makes every such
-- update write a new entry into every index of the table (no HOT update):
-- - `orders_status_idx (status, created_at)` served no query of Courier's
--   own (order lists filter with their own indexes); without it a status
--   change of an order is a HOT update when its page has room, which the
--   fill factor leaves.
-- - `deliveries_status_idx (status, updated_at)` served only the rescuer's
--   scan of held deliveries: a partial index of those replaces it.
DROP INDEX orders_status_idx;
DROP INDEX deliveries_status_idx;
CREATE INDEX deliveries_held_idx ON deliveries (updated_at, id) WHERE status = 'held';
ALTER TABLE orders SET (fillfactor = 80);
ALTER TABLE order_items SET (fillfactor = 80);
