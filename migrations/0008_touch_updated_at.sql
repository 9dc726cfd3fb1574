-- A trigger function keeps updated_at current; its body holds semicolons that the
-- real parser keeps inside the dollar quotes.
ALTER TABLE appointments ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

CREATE FUNCTION touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.updated_at := now();  -- stable within the statement; fine for an audit column
    RETURN NEW;
END;
$fn$;

CREATE TRIGGER appointments_touch_updated_at
    BEFORE UPDATE ON appointments
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
