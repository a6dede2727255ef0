-- Model-availability incidents, operator commands for them, and per-minute
-- aggregates. Times are integer milliseconds since the Unix epoch (UTC);
-- latencies are integer microseconds. The other backend's migration of the
-- same number must describe the same schema.

-- One row per incident; `body_json` is the whole incident (timeline and
-- postmortem included), the other columns are copies for filtering.
CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    resolved_at BIGINT,
    body_json TEXT NOT NULL
);
CREATE INDEX incidents_started ON incidents (started_at);
CREATE INDEX incidents_model ON incidents (model, started_at);

-- Operator actions on incidents (acknowledge, note, resolve, …) submitted by
-- the CLI or the admin API while a server runs: the server's incident
-- engine, which owns the active incidents, applies them in order and writes
-- the outcome back, so no update is lost to a concurrent evaluation.
CREATE TABLE incident_commands (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at BIGINT NOT NULL,
    incident_id TEXT NOT NULL,
    action TEXT NOT NULL,
    actor_json TEXT NOT NULL,
    args_json TEXT NOT NULL,
    done_at BIGINT,
    ok BIGINT,
    result_json TEXT
);
CREATE INDEX incident_commands_pending ON incident_commands (id) WHERE done_at IS NULL;

-- Requests, errors, latency percentiles and tokens per model per minute.
CREATE TABLE minute_aggregates (
    model TEXT NOT NULL,
    minute BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    successes BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    client_errors BIGINT NOT NULL,
    shed BIGINT NOT NULL,
    p50_us BIGINT,
    p95_us BIGINT,
    p99_us BIGINT,
    max_us BIGINT,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    PRIMARY KEY (model, minute)
);
CREATE INDEX minute_aggregates_minute ON minute_aggregates (minute);
