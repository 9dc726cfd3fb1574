-- Outbound call campaigns: one job per (run, lead). The seed's migration 113
-- checked this constraint with a helper of the wrong arity; here it is plain DDL.
CREATE TABLE outbound_call_jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    business_id  bigint      NOT NULL REFERENCES businesses (id) ON DELETE CASCADE,
    run_id       bigint      NOT NULL,
    lead_id      bigint      NOT NULL,
    status       text        NOT NULL DEFAULT 'queued',
    attempts     integer     NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT unique_run_lead UNIQUE (run_id, lead_id),
    CONSTRAINT outbound_call_jobs_status_ck
        CHECK (status IN ('queued', 'dialing', 'done', 'failed'))
);
