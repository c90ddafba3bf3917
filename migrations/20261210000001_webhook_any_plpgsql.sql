-- `courier_webhook_any()` is called by the statement triggers on `orders`
-- and `deliveries`, so by every claim and every completer batch. As a SQL
-- function with a table in its body it cannot be inlined, and Postgres 15
-- parses and plans a SQL function's body again in each statement that calls
-- it (perf over a scale run showed `fmgr_sql` → `base_yyparse` under the
-- triggers). A PL/pgSQL function keeps its query's plan for the session.
-- Same answer, same volatility.
CREATE OR REPLACE FUNCTION courier_webhook_any() RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled);
END
$$;
