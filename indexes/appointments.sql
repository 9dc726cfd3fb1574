-- Look up the appointments of a calendar
-- schemad:critical
CREATE INDEX idx_appointments_calendar_id ON appointments (calendar_id);
