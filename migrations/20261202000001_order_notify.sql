-- Status reads that wait: every change of an order's status or payment
-- status is announced on `courier_orders` (payload: the order id) when its
-- transaction commits. One LISTEN per API process fans it out to the
-- requests waiting on that order (`GET /v1/orders/{id}?wait_for=…`).
CREATE FUNCTION courier_notify_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('courier_orders', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_status_notify
    AFTER UPDATE OF status, payment_status ON orders
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.payment_status IS DISTINCT FROM NEW.payment_status)
    EXECUTE FUNCTION courier_notify_order();
