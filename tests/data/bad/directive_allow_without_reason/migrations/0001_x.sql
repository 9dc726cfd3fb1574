-- schemad:allow=set-not-null
ALTER TABLE t ALTER COLUMN c SET NOT NULL;
