-- Appointments booked by callers.
CREATE TABLE appointments (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    business_id  bigint      NOT NULL REFERENCES businesses (id) ON DELETE CASCADE,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    customer     text        NOT NULL,
    CONSTRAINT appointments_time_ck CHECK (ends_at > starts_at)
);
