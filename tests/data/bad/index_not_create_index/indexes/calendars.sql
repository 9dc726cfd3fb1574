CREATE INDEX idx_ok ON business_calendars (business_id);
DROP INDEX idx_old;
CREATE TABLE oops (id int);
