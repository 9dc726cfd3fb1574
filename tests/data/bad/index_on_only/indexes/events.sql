CREATE INDEX idx_events_at ON ONLY events (created_at);
