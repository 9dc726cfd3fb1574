CREATE INDEX idx_bc ON business_calendars (business_id);
