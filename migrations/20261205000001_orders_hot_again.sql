-- Status changes of an order are HOT updates again (see 20261202000002):
-- `orders_status_list_idx (status, id)`, added for keyset pages of the order
-- list sorted by status, put `status` back into an index, so each of an
-- order's two status changes on the hot path wrote a new entry into all of
-- the table's indexes (the trigram index's included). Measured: about 0.3 ms
-- of Postgres CPU per order. A list sorted by status now sorts the filtered
-- orders (about 0.1-0.3 s over a million; filter first); filters by status
-- walk the sort's own index, as they did.
DROP INDEX orders_status_list_idx;
