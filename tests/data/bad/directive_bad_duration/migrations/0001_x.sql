-- schemad:lock-timeout=5 seconds
  -- schemad:statement-timeout=0s
CREATE TABLE t (id int);
