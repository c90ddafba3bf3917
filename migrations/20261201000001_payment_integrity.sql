-- A payment is applied only when it pays the order. What the gateway said it
-- took is kept on the order (`paid_amount`, `paid_currency`); a payment that
-- does not match leaves the order `mismatched` with the reason, delivering
-- nothing until an admin accepts or refunds it.

ALTER TABLE orders DROP CONSTRAINT orders_payment_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_payment_status_check
    CHECK (payment_status IN ('pending', 'paid', 'failed', 'refunded', 'partially_refunded', 'mismatched'));

ALTER TABLE orders
    -- Coupons: total = subtotal - discount + tax.
    ADD COLUMN discount      numeric NOT NULL DEFAULT 0 CHECK (discount >= 0),
    ADD COLUMN paid_amount   numeric CHECK (paid_amount >= 0),
    ADD COLUMN paid_currency text,
    -- Why the last payment was not applied; cleared when an admin accepts it.
    ADD COLUMN payment_issue text;

-- A refund of a payment that was never applied (mismatched, given back
-- whole): its failure puts the payment back to `mismatched` instead of
-- touching the order's refunded amount.
ALTER TABLE refunds ADD COLUMN of_unapplied boolean NOT NULL DEFAULT false;
