CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();  -- a ; in a comment
    RAISE NOTICE 'done; really';
    RETURN NEW;
END;
$$;

CREATE FUNCTION tagged() RETURNS text LANGUAGE sql AS $body$
    SELECT $$inner; quoted$$ || ';' || $x$ $$; $x$;
$body$;

DO $do$ BEGIN PERFORM 1; PERFORM 2; END $do$;
