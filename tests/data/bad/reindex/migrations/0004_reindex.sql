REINDEX INDEX idx_bc_active;
REINDEX TABLE CONCURRENTLY business_calendars;
