CREATE TABLE notes (body text DEFAULT E'it\'s; fine');
COMMENT ON TABLE notes IS E'semi; colon \\; and a quote \' ;';
COMMENT ON COLUMN notes.body IS 'doubled '' quote; here';
