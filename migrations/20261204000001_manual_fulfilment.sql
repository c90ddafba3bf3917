-- Order management (staff), part two: addresses and the store's customer
-- reference on orders, fulfilment by hand, and orders that wait for an admin
-- (or a delay) before their deliveries start.

-- Optional, as the store sends them: {line1, line2, city, region,
-- postal_code, country}. Shown to staff, never used to deliver.
ALTER TABLE orders
    ADD COLUMN billing_address  jsonb,
    ADD COLUMN shipping_address jsonb,
    -- The store's own id of the customer's account.
    ADD COLUMN customer_ref     text,
    -- Why a paid order has no deliveries yet: `manual` (an admin processes
    -- it), `delayed` (started at `process_after`). NULL once processed, and
    -- for orders that started at once.
    ADD COLUMN process_hold     text CHECK (process_hold IN ('manual', 'delayed')),
    ADD COLUMN process_after    timestamptz;
-- The sweep that starts delayed orders once due, and the list's filter of
-- orders that wait (few among many: without it a filtered page would walk
-- the whole sort index).
CREATE INDEX orders_process_due_idx ON orders (process_after) WHERE process_hold = 'delayed';
CREATE INDEX orders_waiting_idx ON orders (process_hold, created_at, id) WHERE process_hold IS NOT NULL;

-- An item marked delivered by staff [Mark as Delivered], with their notes
-- for the customer; a redemption code given with it is an `item_keys` row
-- (source `manual`), encrypted like every key.
ALTER TABLE order_items
    ADD COLUMN delivered_by_hand_at timestamptz,
    ADD COLUMN delivered_by         text,
    ADD COLUMN delivery_notes       text;

-- How paid orders of a product start: NULL takes the store-wide setting
-- (`orders.auto_process`, `orders.process_delay_secs`).
ALTER TABLE products
    ADD COLUMN auto_process       boolean,
    ADD COLUMN process_delay_secs integer CHECK (process_delay_secs BETWEEN 0 AND 2592000);
