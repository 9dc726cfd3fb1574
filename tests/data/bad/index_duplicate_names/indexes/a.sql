CREATE INDEX idx_bc_active ON business_calendars (is_active);
