-- Active calendars
CREATE INDEX ON business_calendars (business_id, is_active);
