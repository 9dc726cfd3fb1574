CREATE TABLE t (id int);
-- schemad:no-transaction
CREATE TABLE u (id int);
