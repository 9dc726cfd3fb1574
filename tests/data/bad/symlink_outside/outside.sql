CREATE TABLE secrets (id int);
