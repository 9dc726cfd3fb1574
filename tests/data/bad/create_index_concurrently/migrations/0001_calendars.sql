CREATE INDEX CONCURRENTLY idx_bc_active
    ON business_calendars (business_id, is_active);
