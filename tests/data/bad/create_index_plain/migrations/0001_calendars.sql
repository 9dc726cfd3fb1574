CREATE TABLE business_calendars (
    id bigint PRIMARY KEY,
    business_id bigint NOT NULL,
    is_active boolean NOT NULL DEFAULT true
);

CREATE INDEX idx_bc_business ON business_calendars (business_id);
