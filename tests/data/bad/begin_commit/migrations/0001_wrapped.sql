BEGIN;
CREATE TABLE businesses (id bigint PRIMARY KEY);
COMMIT;
