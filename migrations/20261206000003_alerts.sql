-- Admin alerts that reach someone: each new alert is sent to the channels
-- the raising process has configured (e-mail, a Discord or Slack incoming
-- webhook) as deliveries of kind `alert`: retried and dead-lettered like
-- every delivery. An alert belongs to no order, so `deliveries.order_id` may
-- now be empty for that kind alone.
--
-- Once per condition, with a cool-down: an alert is not raised again while
-- one of the same kind and condition (`data.dedupe`) is unacknowledged (as
-- before), and a raised one is not sent again if one of the same condition
-- was sent within `courier.alert_cooldown_secs`.
--
-- The channels and the cool-down travel as session settings of the process
-- that raises the alert (`Settings::session`), as the e-mail switches do.

ALTER TABLE deliveries ALTER COLUMN order_id DROP NOT NULL;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_order_check
    CHECK (order_id IS NOT NULL OR kind = 'alert');
ALTER TABLE deliveries DROP CONSTRAINT deliveries_kind_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_kind_check
    CHECK (kind IN ('rcon', 'discord_role', 'supplier_key', 'gateway_refund', 'webhook', 'email', 'alert'));

ALTER TABLE admin_alerts
    ADD COLUMN acknowledged_by text,
    ADD COLUMN resolved_at timestamptz,
    ADD COLUMN resolved_by text,
    -- When it was handed to the channels (NULL: none configured, or cooled down).
    ADD COLUMN notified_at timestamptz;
CREATE INDEX admin_alerts_dedupe_idx ON admin_alerts (kind, (data->>'dedupe'), id);

-- Raises an alert unless one of the same kind and condition is unacknowledged.
CREATE FUNCTION courier_alert(p_kind text, p_message text, p_dedupe text, p_data jsonb)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO admin_alerts (kind, message, data)
    SELECT p_kind, p_message, p_data || jsonb_build_object('dedupe', p_dedupe)
    WHERE NOT EXISTS (SELECT 1 FROM admin_alerts
                      WHERE kind = p_kind AND data->>'dedupe' = p_dedupe AND acknowledged_at IS NULL)
$$;

-- A new alert goes to every configured channel, unless the same condition
-- was sent within the cool-down.
CREATE FUNCTION courier_alert_send() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_channels text := current_setting('courier.alert_channels', true);
    v_cooldown int := coalesce(nullif(current_setting('courier.alert_cooldown_secs', true), '')::int, 3600);
BEGIN
    IF v_channels IS NULL OR v_channels = '' THEN RETURN NULL; END IF;
    IF EXISTS (SELECT 1 FROM admin_alerts a
               WHERE a.kind = NEW.kind AND a.data->>'dedupe' IS NOT DISTINCT FROM NEW.data->>'dedupe'
                 AND a.id <> NEW.id AND a.notified_at > now() - make_interval(secs => v_cooldown)) THEN
        RETURN NULL;
    END IF;
    WITH d AS (
        INSERT INTO deliveries (id, order_id, item_id, kind, target, payload, status, purpose, next_attempt_at)
        SELECT gen_random_uuid(), NULL, NULL, 'alert', c,
               jsonb_build_object('alert_id', NEW.id, 'channel', c), 'queued', 'notify', now()
        FROM unnest(string_to_array(v_channels, ',')) AS c
        RETURNING id
    )
    INSERT INTO outbox (queue, payload)
    SELECT 'courier.alert', jsonb_build_object('delivery_id', d.id, 'kind', 'alert') FROM d;
    UPDATE admin_alerts SET notified_at = now() WHERE id = NEW.id;
    PERFORM pg_notify('courier_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER admin_alerts_send AFTER INSERT ON admin_alerts
    FOR EACH ROW EXECUTE FUNCTION courier_alert_send();

-- Conditions raised here, whoever made the change: a failed order, a
-- delivery held for a person (manual action required), too many open dead
-- letters, a dispute opened. Row triggers whose WHEN clause Postgres
-- evaluates itself: on the hot path (status changes that are not failures)
-- no function is called at all.
CREATE FUNCTION courier_alert_order_failed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM courier_alert('order_failed',
        format('order %s failed: a delivery is dead; see its dead letters', NEW.order_number),
        NEW.id::text, jsonb_build_object('order_id', NEW.id, 'order_number', NEW.order_number));
    RETURN NULL;
END
$$;
CREATE TRIGGER orders_alert_failed AFTER UPDATE OF status ON orders
    FOR EACH ROW WHEN (NEW.status = 'failed' AND OLD.status <> 'failed')
    EXECUTE FUNCTION courier_alert_order_failed();

CREATE FUNCTION courier_alert_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_threshold int := coalesce(nullif(current_setting('courier.alert_dead_letters', true), '')::int, 0);
    v_open bigint;
BEGIN
    IF NEW.status = 'held' THEN
        PERFORM courier_alert('manual_action_required',
            format('a %s delivery to %s is held: it may already have run; decide whether to retry or discard it', NEW.kind, NEW.target),
            NEW.id::text, jsonb_build_object('delivery_id', NEW.id, 'order_id', NEW.order_id));
    ELSIF v_threshold > 0 THEN
        -- Its own dead letter is written after this change.
        SELECT count(*) INTO v_open FROM dead_letters WHERE resolved_at IS NULL;
        IF v_open + 1 >= v_threshold THEN
            PERFORM courier_alert('dead_letters',
                format('%s or more dead letters are open (threshold %s)', v_threshold, v_threshold),
                'open', jsonb_build_object('threshold', v_threshold));
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER deliveries_alert AFTER UPDATE OF status ON deliveries
    FOR EACH ROW WHEN (NEW.status IN ('held', 'dead') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION courier_alert_delivery();

CREATE FUNCTION courier_alert_dispute() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM courier_alert('dispute_opened',
        format('a dispute of %s %s was opened (%s); evidence due by %s',
               NEW.amount, NEW.currency, NEW.reason, coalesce(NEW.evidence_due_by::text, 'unknown')),
        NEW.id::text, jsonb_build_object('dispute_id', NEW.id, 'order_id', NEW.order_id));
    RETURN NULL;
END
$$;
CREATE TRIGGER disputes_alert AFTER INSERT ON disputes
    FOR EACH ROW EXECUTE FUNCTION courier_alert_dispute();
