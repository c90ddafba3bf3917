-- Customer e-mail: a delivery kind `email` (purpose `notify`, no item;
-- `target` is the recipient). The order confirmation and the refund
-- confirmation are written by the triggers of 20261206000001 in the
-- transaction of the change, like webhooks, when the connection that made
-- the change says e-mail is on: each Courier process starts its Postgres
-- sessions with `courier.email_confirmation` / `courier.email_refund` = `on`
-- from its own `email.*` settings (`Settings::session`). The message itself
-- is rendered by the worker when it sends, from the order as it is then.

ALTER TABLE deliveries DROP CONSTRAINT deliveries_kind_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_kind_check
    CHECK (kind IN ('rcon', 'discord_role', 'supplier_key', 'gateway_refund', 'webhook', 'email'));

-- One e-mail per order that has a customer address.
CREATE FUNCTION courier_email_emit(p_orders uuid[], p_template text, p_extra jsonb[])
RETURNS void LANGUAGE sql AS $$
    WITH ev AS (
        SELECT e.order_id, e.extra, gen_random_uuid() AS delivery_id, o.customer_email
        FROM unnest(p_orders, p_extra) AS e(order_id, extra)
        JOIN orders o ON o.id = e.order_id
        WHERE o.customer_email IS NOT NULL AND o.customer_email <> ''
    ), d AS (
        INSERT INTO deliveries (id, order_id, item_id, kind, target, payload, status, purpose, next_attempt_at)
        SELECT ev.delivery_id, ev.order_id, NULL, 'email', ev.customer_email,
               jsonb_build_object('template', p_template, 'to', ev.customer_email, 'extra', ev.extra),
               'queued', 'notify', now()
        FROM ev
        RETURNING id
    )
    INSERT INTO outbox (queue, payload)
    SELECT 'courier.email', jsonb_build_object('delivery_id', d.id, 'kind', 'email') FROM d
$$;

CREATE FUNCTION courier_email_on(p_what text) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT current_setting('courier.email_' || p_what, true) IS NOT DISTINCT FROM 'on'
$$;

CREATE OR REPLACE FUNCTION courier_webhook_orders_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_hooks boolean := courier_webhook_any();
    v_mail boolean := courier_email_on('confirmation');
BEGIN
    IF NOT v_hooks AND NOT v_mail THEN RETURN NULL; END IF;
    IF v_hooks THEN
        PERFORM courier_webhook_emit(array_agg(n.id), array_agg('order.received'::text), array_agg('{}'::jsonb))
        FROM new_orders n WHERE n.payment_status = 'paid'
        HAVING count(*) > 0;
    END IF;
    IF v_mail THEN
        PERFORM courier_email_emit(array_agg(n.id), 'order_confirmation', array_agg('{}'::jsonb))
        FROM new_orders n WHERE n.payment_status = 'paid'
        HAVING count(*) > 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION courier_webhook_orders_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_hooks boolean := courier_webhook_any();
    v_mail boolean := courier_email_on('confirmation');
BEGIN
    IF NOT v_hooks AND NOT v_mail THEN RETURN NULL; END IF;
    IF v_hooks THEN
        PERFORM courier_webhook_emit(array_agg(e.id), array_agg(e.event), array_agg(e.extra))
        FROM (
            SELECT n.id, 'order.received'::text AS event,
                   jsonb_build_object('previous_status', o.status) AS extra
            FROM new_orders n JOIN old_orders o ON o.id = n.id
            WHERE n.payment_status = 'paid' AND o.payment_status <> 'paid'
            UNION ALL
            SELECT n.id,
                   CASE n.status WHEN 'completed' THEN 'order.completed'
                                 WHEN 'failed' THEN 'order.failed'
                                 ELSE 'order.updated' END,
                   jsonb_build_object('previous_status', o.status)
            FROM new_orders n JOIN old_orders o ON o.id = n.id
            WHERE (n.status <> o.status AND n.status NOT IN ('refunded', 'partially_refunded'))
               OR (n.status = o.status AND n.payment_status <> o.payment_status
                   AND n.payment_status NOT IN ('paid', 'refunded', 'partially_refunded'))
        ) e
        HAVING count(*) > 0;
    END IF;
    IF v_mail THEN
        PERFORM courier_email_emit(array_agg(n.id), 'order_confirmation', array_agg('{}'::jsonb))
        FROM new_orders n JOIN old_orders o ON o.id = n.id
        WHERE n.payment_status = 'paid' AND o.payment_status NOT IN ('paid', 'refunded', 'partially_refunded')
        HAVING count(*) > 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION courier_webhook_refund() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_hooks boolean := courier_webhook_any();
    v_mail boolean := courier_email_on('refund');
    v_total numeric;
    v_refunded numeric;
    v_refund jsonb;
BEGIN
    IF NOT v_hooks AND NOT v_mail THEN RETURN NULL; END IF;
    IF TG_OP = 'UPDATE' AND OLD.status IN ('succeeded', 'recorded') THEN RETURN NULL; END IF;
    SELECT o.total INTO v_total FROM orders o WHERE o.id = NEW.order_id;
    SELECT coalesce(sum(r.amount), 0) INTO v_refunded FROM refunds r
        WHERE r.order_id = NEW.order_id AND r.status IN ('succeeded', 'recorded');
    v_refund := jsonb_build_object(
        'id', NEW.id, 'amount', NEW.amount::text, 'currency', NEW.currency,
        'reason', NEW.reason, 'source', NEW.source, 'revoke', NEW.revoke,
        'full', v_refunded >= v_total);
    IF v_hooks THEN
        PERFORM courier_webhook_emit(ARRAY[NEW.order_id], ARRAY['order.refunded'],
            ARRAY[jsonb_build_object('refund', v_refund)]);
    END IF;
    IF v_mail THEN
        PERFORM courier_email_emit(ARRAY[NEW.order_id], 'refund',
            ARRAY[jsonb_build_object('refund', v_refund)]);
    END IF;
    RETURN NULL;
END
$$;
