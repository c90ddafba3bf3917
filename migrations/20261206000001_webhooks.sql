-- Outbound webhooks: the store's other systems hear about orders.
--
-- An admin registers endpoints (URL, the events it wants). Each event an
-- endpoint wants becomes one delivery of kind `webhook` (purpose `notify`,
-- no item) with an outbox row, written by the triggers below in the very
-- transaction of the change that causes the event — whichever code path
-- made it (API, worker, CLI, payment webhook) — and then retried, dead-
-- lettered and retried by admins like every other delivery. A delivery's
-- payload holds the whole message (`body`), rendered when the event
-- happened, and its `message_id` (the `webhook-id` header), kept on every
-- retry and on a resend.
--
-- The triggers are statement-level where the table is on the hot path
-- (orders, deliveries): one call per statement, which returns at once while
-- no endpoint is enabled. They do not NOTIFY the relays (a NOTIFY makes
-- commits queue behind each other); the relay's sweep publishes the rows
-- within `relay.sweep_interval_ms`.

CREATE TABLE webhook_endpoints (
    id                     uuid PRIMARY KEY,
    url                    text NOT NULL,
    description            text NOT NULL DEFAULT '',
    -- Event names, `order.created` (the old name of `order.received`), or `*`.
    events                 text[] NOT NULL,
    enabled                boolean NOT NULL DEFAULT true,
    -- `whsec_<base64>`: the worker signs with it, so it is stored as is;
    -- the API shows it only when it is made.
    secret                 text NOT NULL,
    -- The secret before the last rotation, still signed with until then.
    previous_secret        text,
    previous_secret_until  timestamptz,
    -- Why it was disabled (`410 Gone`, failing for days, an admin).
    disabled_reason        text,
    -- The first failure since the last success; too old and it is disabled.
    failing_since          timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE deliveries DROP CONSTRAINT deliveries_kind_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_kind_check
    CHECK (kind IN ('rcon', 'discord_role', 'supplier_key', 'gateway_refund', 'webhook'));
ALTER TABLE deliveries DROP CONSTRAINT deliveries_purpose_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_purpose_check
    CHECK (purpose IN ('deliver', 'revoke', 'refund', 'notify'));
-- An endpoint's delivery log.
CREATE INDEX deliveries_webhook_idx ON deliveries (target, created_at) WHERE kind = 'webhook';

-- The HTTP status an attempt got (webhooks), for the delivery log.
ALTER TABLE delivery_attempts ADD COLUMN status_code integer;

-- Every event carries the next number of this sequence: for one order, a
-- larger `sequence` is a later state (retries can reorder arrivals).
CREATE SEQUENCE webhook_event_seq;

-- The order as an event shows it.
CREATE FUNCTION courier_webhook_order(p_order uuid) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', o.id,
        'order_number', o.order_number,
        'status', o.status,
        'payment_status', o.payment_status,
        'customer_email', o.customer_email,
        'customer_name', o.customer_name,
        'customer_ref', o.customer_ref,
        'game_username', o.game_username,
        'subtotal', o.subtotal::text,
        'tax', o.tax::text,
        'total', o.total::text,
        'currency', o.currency,
        'gateway', o.gateway,
        'transaction_id', o.transaction_id,
        'created_at', o.created_at,
        'paid_at', o.paid_at,
        'completed_at', o.completed_at,
        'refunded_total', (SELECT coalesce(sum(r.amount), 0)::text FROM refunds r
                           WHERE r.order_id = o.id AND r.status IN ('succeeded', 'recorded')),
        'items', coalesce((SELECT jsonb_agg(jsonb_build_object(
                     'id', i.id, 'sku', i.sku, 'product_name', i.product_name,
                     'quantity', i.quantity, 'price', i.unit_price::text, 'total', i.total::text,
                     'delivery_status', i.delivery_status) ORDER BY i.position)
                   FROM order_items i WHERE i.order_id = o.id), '[]'::jsonb))
    FROM orders o WHERE o.id = p_order
$$;

-- Writes one webhook delivery (and its outbox row) per event and endpoint
-- that wants it. Events are parallel arrays: order, event name, extra data
-- merged into `data`. Set-based: one INSERT of deliveries, one of outbox rows.
CREATE FUNCTION courier_webhook_emit(p_orders uuid[], p_events text[], p_extra jsonb[])
RETURNS void LANGUAGE sql AS $$
    WITH ev AS (
        SELECT * FROM unnest(p_orders, p_events, p_extra) AS e(order_id, event, extra)
    ), wanted AS (
        SELECT ev.order_id, ev.extra, w.id AS endpoint_id,
               CASE WHEN ev.event = ANY(w.events) OR '*' = ANY(w.events) THEN ev.event
                    ELSE 'order.created' END AS name
        FROM ev JOIN webhook_endpoints w ON w.enabled
          AND (ev.event = ANY(w.events) OR '*' = ANY(w.events)
               OR (ev.event = 'order.received' AND 'order.created' = ANY(w.events)))
    ), msg AS (
        SELECT wanted.*, gen_random_uuid() AS delivery_id, nextval('webhook_event_seq') AS seq
        FROM wanted
    ), d AS (
        INSERT INTO deliveries (id, order_id, item_id, kind, target, payload, status, purpose, next_attempt_at)
        SELECT m.delivery_id, m.order_id, NULL, 'webhook', m.endpoint_id::text,
               jsonb_build_object(
                   'endpoint_id', m.endpoint_id,
                   'message_id', 'msg_' || replace(m.delivery_id::text, '-', ''),
                   'event', m.name,
                   'body', jsonb_build_object(
                       'event', m.name,
                       'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                       'sequence', m.seq,
                       'data', courier_webhook_order(m.order_id) || m.extra)),
               'queued', 'notify', now()
        FROM msg m
        RETURNING id
    )
    INSERT INTO outbox (queue, payload)
    SELECT 'courier.webhook', jsonb_build_object('delivery_id', d.id, 'kind', 'webhook') FROM d
$$;

CREATE FUNCTION courier_webhook_any() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled)
$$;

-- Orders placed already paid: `order.received`.
CREATE FUNCTION courier_webhook_orders_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT courier_webhook_any() THEN RETURN NULL; END IF;
    PERFORM courier_webhook_emit(array_agg(n.id), array_agg('order.received'::text), array_agg('{}'::jsonb))
    FROM new_orders n WHERE n.payment_status = 'paid'
    HAVING count(*) > 0;
    RETURN NULL;
END
$$;
CREATE TRIGGER orders_webhook_insert AFTER INSERT ON orders
    REFERENCING NEW TABLE AS new_orders
    FOR EACH STATEMENT EXECUTE FUNCTION courier_webhook_orders_inserted();

-- Order changes: paid (`order.received`), completed, failed, and any other
-- change of status or payment status (`order.updated`) except the refunds'
-- own (`order.refunded` comes from the refund).
CREATE FUNCTION courier_webhook_orders_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT courier_webhook_any() THEN RETURN NULL; END IF;
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
    RETURN NULL;
END
$$;
CREATE TRIGGER orders_webhook_update AFTER UPDATE ON orders
    REFERENCING OLD TABLE AS old_orders NEW TABLE AS new_orders
    FOR EACH STATEMENT EXECUTE FUNCTION courier_webhook_orders_updated();

-- A refund whose money has moved (or was recorded as moved): `order.refunded`.
CREATE FUNCTION courier_webhook_refund() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_total numeric;
    v_refunded numeric;
BEGIN
    IF NOT courier_webhook_any() THEN RETURN NULL; END IF;
    IF TG_OP = 'UPDATE' AND OLD.status IN ('succeeded', 'recorded') THEN RETURN NULL; END IF;
    SELECT o.total INTO v_total FROM orders o WHERE o.id = NEW.order_id;
    SELECT coalesce(sum(r.amount), 0) INTO v_refunded FROM refunds r
        WHERE r.order_id = NEW.order_id AND r.status IN ('succeeded', 'recorded');
    PERFORM courier_webhook_emit(ARRAY[NEW.order_id], ARRAY['order.refunded'],
        ARRAY[jsonb_build_object('refund', jsonb_build_object(
            'id', NEW.id, 'amount', NEW.amount::text, 'currency', NEW.currency,
            'reason', NEW.reason, 'source', NEW.source, 'revoke', NEW.revoke,
            'full', v_refunded >= v_total))]);
    RETURN NULL;
END
$$;
CREATE TRIGGER refunds_webhook AFTER INSERT OR UPDATE OF status ON refunds
    FOR EACH ROW WHEN (NEW.status IN ('succeeded', 'recorded'))
    EXECUTE FUNCTION courier_webhook_refund();

-- `dispute.created` and `dispute.closed`.
CREATE FUNCTION courier_webhook_dispute() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT courier_webhook_any() THEN RETURN NULL; END IF;
    IF TG_OP = 'UPDATE' AND NOT (OLD.closed_at IS NULL AND NEW.closed_at IS NOT NULL) THEN
        RETURN NULL;
    END IF;
    PERFORM courier_webhook_emit(ARRAY[NEW.order_id],
        ARRAY[CASE TG_OP WHEN 'INSERT' THEN 'dispute.created' ELSE 'dispute.closed' END],
        ARRAY[jsonb_build_object('dispute', jsonb_build_object(
            'id', NEW.id, 'amount', NEW.amount::text, 'currency', NEW.currency,
            'reason', NEW.reason, 'gateway_status', NEW.gateway_status,
            'evidence_due_by', NEW.evidence_due_by, 'outcome', NEW.outcome))]);
    RETURN NULL;
END
$$;
CREATE TRIGGER disputes_webhook AFTER INSERT OR UPDATE OF closed_at ON disputes
    FOR EACH ROW EXECUTE FUNCTION courier_webhook_dispute();

-- A delivery (not a webhook's own) that became dead: `delivery.dead`.
CREATE FUNCTION courier_webhook_deliveries_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT courier_webhook_any() THEN RETURN NULL; END IF;
    PERFORM courier_webhook_emit(array_agg(n.order_id), array_agg('delivery.dead'::text),
        array_agg(jsonb_build_object('delivery', jsonb_build_object(
            'id', n.id, 'kind', n.kind, 'purpose', n.purpose, 'item_id', n.item_id,
            'target', n.target, 'attempts', n.attempts, 'reason', n.last_error))))
    FROM new_deliveries n JOIN old_deliveries o ON o.id = n.id
    WHERE n.status = 'dead' AND o.status <> 'dead' AND n.kind <> 'webhook'
    HAVING count(*) > 0;
    RETURN NULL;
END
$$;
CREATE TRIGGER deliveries_webhook_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_deliveries NEW TABLE AS new_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION courier_webhook_deliveries_updated();
