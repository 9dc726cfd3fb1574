-- Appointments now belong to a calendar. The column is nullable, so adding it is
-- instant; the foreign key is added NOT VALID and validated in the next migration.
ALTER TABLE appointments ADD COLUMN calendar_id bigint;

ALTER TABLE appointments
    ADD CONSTRAINT appointments_calendar_fk
    FOREIGN KEY (calendar_id) REFERENCES business_calendars (id) NOT VALID;
