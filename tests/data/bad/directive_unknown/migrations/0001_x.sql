-- schemad:no-transactions
CREATE TABLE t (id int);
