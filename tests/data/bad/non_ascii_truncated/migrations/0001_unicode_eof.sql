CREATE TABLE été (
    ö int,
    ü text DEFAULT '日本'
