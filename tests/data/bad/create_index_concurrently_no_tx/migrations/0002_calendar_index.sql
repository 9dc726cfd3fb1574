-- schemad:no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_bc_active ON business_calendars (is_active);
