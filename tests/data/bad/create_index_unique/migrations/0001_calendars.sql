CREATE TABLE business_calendars (
    id bigint PRIMARY KEY,
    business_id bigint NOT NULL,
    is_active boolean NOT NULL DEFAULT true
);
CREATE UNIQUE INDEX idx_bc_business_id ON business_calendars (business_id, id);
