-- Status reads that wait: every change of an order's status or payment
-- status is announced on `courier_orders` (payload: the order id). One
-- LISTEN per API process fans it out to the requests waiting on that order
-- (`GET /v1/orders/{id}?wait_for=…`).
--
-- A NOTIFY in a transaction takes a cluster-wide lock at commit and holds it
-- through the commit's WAL flush, so transactions that notify commit one at a
-- time. The worker's batched claims and completions therefore mark their
-- transaction (`courier.announce = after_commit`, set by the statement that
-- locks the orders) and announce the orders themselves right after commit,
-- in a statement of its own that writes nothing and flushes nothing. Every
-- other writer of an order's status is announced by this trigger.
CREATE FUNCTION courier_notify_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('courier.announce', true) IS DISTINCT FROM 'after_commit' THEN
        PERFORM pg_notify('courier_orders', NEW.id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_status_notify
    AFTER UPDATE OF status, payment_status ON orders
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.payment_status IS DISTINCT FROM NEW.payment_status)
    EXECUTE FUNCTION courier_notify_order();
