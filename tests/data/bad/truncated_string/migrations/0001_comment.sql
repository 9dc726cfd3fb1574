COMMENT ON TABLE t IS 'never closed;
CREATE TABLE u (id int);
