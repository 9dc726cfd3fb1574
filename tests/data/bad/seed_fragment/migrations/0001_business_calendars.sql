CREATE TABLE business_calendars (
    id bigint PRIMARY KEY,
    business_id bigint NOT NULL,
    is_active boolean NOT NULL DEFAULT true
);

-- the lost CREATE INDEX line left this behind
    ON business_calendars(business_id, is_active);
