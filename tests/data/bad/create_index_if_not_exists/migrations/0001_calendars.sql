CREATE INDEX IF NOT EXISTS idx_bc_active ON business_calendars (business_id, is_active);
