-- Validation takes only a SHARE UPDATE EXCLUSIVE lock: reads and writes go on.
ALTER TABLE appointments VALIDATE CONSTRAINT appointments_calendar_fk;
