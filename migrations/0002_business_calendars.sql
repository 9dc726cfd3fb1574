-- Each business has one or more calendars appointments can be booked into.
CREATE TABLE business_calendars (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    business_id  bigint  NOT NULL REFERENCES businesses (id) ON DELETE CASCADE,
    name         text    NOT NULL,
    is_active    boolean NOT NULL DEFAULT true,
    priority     integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);
