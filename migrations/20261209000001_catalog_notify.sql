-- API processes keep the products they accept orders for
-- (`service::orders::ProductCache`) and forget them when this announces a
-- change of the catalog, at the commit that makes it. One notification per
-- statement: a product saved with its actions announces a few times, which
-- costs nothing beside an edit.
CREATE FUNCTION catalog_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('courier_catalog', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER products_catalog_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON products
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_notify();

CREATE TRIGGER product_actions_catalog_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON product_actions
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_notify();
