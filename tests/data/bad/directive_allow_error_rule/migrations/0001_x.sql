-- schemad:allow=index-in-migration we know
-- schemad:allow=E105 really
CREATE INDEX i ON t (c);
