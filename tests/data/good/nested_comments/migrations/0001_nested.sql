/* outer /* inner ; still comment */ ; and still ; */
CREATE TABLE a (id int /* ; */);
/* /* /* deep; */ ; */ ; */ CREATE TABLE b (id int);
-- line comment ; with semicolons ;
CREATE TABLE c (id int); -- trailing ;
