-- Events handled per consumer group, for dedup by event id.
-- A row with processed_at NULL is a claim held by lease_owner until lease_until;
-- a row with processed_at set is a done event, kept until the retention clean-up.
CREATE TABLE IF NOT EXISTS processed_events (
    consumer_group TEXT NOT NULL,
    event_id TEXT NOT NULL,
    consumer_name TEXT NOT NULL,
    processed_at TIMESTAMPTZ,
    lease_owner TEXT,
    lease_until TIMESTAMPTZ,
    PRIMARY KEY (consumer_group, event_id)
);
CREATE INDEX IF NOT EXISTS processed_events_processed_at ON processed_events (processed_at);
