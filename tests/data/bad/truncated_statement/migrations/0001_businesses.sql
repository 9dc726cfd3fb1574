CREATE TABLE businesses (
    id bigint PRIMARY KEY,
    name text NOT NULL
