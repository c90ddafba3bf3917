-- Sales summaries (`GET /v1/reports/summary`) read the orders paid in a
-- range: by `paid_at`, with what their order-level figures and groupings
-- need included, so a month of orders is read from the index alone (one
-- month of a million orders: about 40,000 entries). Orders never paid are
-- never in a report, so they are left out of the index.
CREATE INDEX orders_paid_idx ON orders (paid_at)
    INCLUDE (id, currency, total, refunded_amount, gateway)
    WHERE paid_at IS NOT NULL;
