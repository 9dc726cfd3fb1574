-- Filter active calendars by business
-- schemad:critical
CREATE INDEX idx_business_calendars_business_active ON business_calendars (business_id, is_active);

-- Order a business's calendars by priority
CREATE INDEX idx_business_calendars_priority ON business_calendars (business_id, priority);

-- Active routing rules of a business
CREATE INDEX idx_calendar_routing_business_active ON calendar_routing_rules (business_id, is_active);

-- Look up the routing rules of a calendar
CREATE INDEX idx_calendar_routing_calendar ON calendar_routing_rules (calendar_id);
