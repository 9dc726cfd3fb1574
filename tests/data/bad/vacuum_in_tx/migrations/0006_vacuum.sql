ALTER TABLE businesses ADD COLUMN note text;
VACUUM ANALYZE businesses;
