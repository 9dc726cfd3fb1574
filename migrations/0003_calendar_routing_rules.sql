-- Routing rules decide which calendar takes a call.
CREATE TYPE routing_match AS ENUM ('always', 'keyword', 'schedule');

CREATE TABLE calendar_routing_rules (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    business_id  bigint  NOT NULL REFERENCES businesses (id) ON DELETE CASCADE,
    calendar_id  bigint  NOT NULL REFERENCES business_calendars (id) ON DELETE CASCADE,
    match_kind   routing_match NOT NULL DEFAULT 'always',
    pattern      text,
    is_active    boolean NOT NULL DEFAULT true,
    CONSTRAINT calendar_routing_rules_pattern_ck
        CHECK (match_kind = 'always' OR pattern IS NOT NULL)
);
