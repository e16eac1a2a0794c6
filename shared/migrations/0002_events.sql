-- The event log, its outbox, and the delivery records.
--
-- The log and the attempt records are partitioned by day so that retention is
-- a partition drop, not a DELETE that bloats the table. There is deliberately
-- no foreign key from events to topics: deleting a topic keeps its log.

CREATE TABLE events (
    id                   uuid NOT NULL,
    topic_id             uuid NOT NULL,
    publisher_partner_id uuid NOT NULL,
    key                  text,
    data                 jsonb NOT NULL,
    -- Equal to the millisecond timestamp inside the UUIDv7 id, so a lookup by id
    -- alone can be pruned to one partition.
    received_at          timestamptz NOT NULL,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX events_topic_time ON events (topic_id, received_at DESC, id DESC);
CREATE INDEX events_topic_key ON events (topic_id, key, received_at DESC) WHERE key IS NOT NULL;
CREATE INDEX events_data ON events USING gin (data jsonb_path_ops);
-- Never refuse an insert because the maintenance job is late: rows land here
-- and the job makes partitions ahead so this stays empty.
CREATE TABLE events_default PARTITION OF events DEFAULT;

-- Rows written in the same transaction as their event; deleted once RabbitMQ
-- confirmed the publish. What is left behind is republished by the relay.
CREATE TABLE outbox (
    event_id    uuid PRIMARY KEY,
    received_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_created ON outbox (created_at);

-- One row per (topic, Idempotency-Key): the unique key makes concurrent
-- duplicates resolve to one event without a read-then-write race.
CREATE TABLE idempotency_keys (
    topic_id     uuid NOT NULL,
    key          text NOT NULL,
    event_id     uuid NOT NULL,
    received_at  timestamptz NOT NULL,
    request_hash bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE attempts (
    id               uuid NOT NULL,
    subscription_id  uuid NOT NULL,
    event_id         uuid NOT NULL,
    attempt          integer NOT NULL,
    status           text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    http_status      integer,
    error            text,
    duration_ms      integer NOT NULL,
    response_excerpt text,
    at               timestamptz NOT NULL,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE INDEX attempts_subscription ON attempts (subscription_id, at DESC, id DESC);
CREATE INDEX attempts_event ON attempts (event_id, subscription_id);
CREATE TABLE attempts_default PARTITION OF attempts DEFAULT;

-- Messages the dispatcher acknowledged without sending, and why (filter did not
-- match, grant revoked, subscription gone).
CREATE TABLE skips (
    subscription_id uuid NOT NULL,
    event_id        uuid NOT NULL,
    reason          text NOT NULL,
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX skips_event ON skips (event_id, subscription_id);
CREATE INDEX skips_at ON skips (at);

-- Mirrors the messages in anika.dlq.<subscription>; written before the original
-- message is acknowledged, removed when a replay's publish is confirmed.
CREATE TABLE dead_letters (
    subscription_id uuid NOT NULL,
    event_id        uuid NOT NULL,
    attempts        integer NOT NULL,
    last_error      text NOT NULL,
    dead_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, event_id)
);
CREATE INDEX dead_letters_time ON dead_letters (subscription_id, dead_at DESC, event_id);

-- Creates the daily partitions of `parent` from `from_day` for `days` days;
-- idempotent, and safe to run from several processes at once.
CREATE FUNCTION anika_ensure_partitions(parent text, from_day date, days integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    d date;
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('anika_partitions:' || parent));
    FOR i IN 0 .. days - 1 LOOP
        d := from_day + i;
        part := format('%s_%s', parent, to_char(d, 'YYYYMMDD'));
        IF to_regclass(part) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                    part, parent,
                    d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            EXCEPTION WHEN check_violation THEN
                -- Rows of that day already sit in the default partition (the job
                -- was down): leave them there; retention deletes them in place.
                RAISE NOTICE 'partition % skipped: the default partition holds its rows', part;
            END;
        END IF;
    END LOOP;
END $$;

-- Drops the daily partitions of `parent` that end before `before`; returns how
-- many were dropped.
CREATE FUNCTION anika_drop_partitions_before(parent text, before timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('anika_partitions:' || parent));
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = parent AND c.relname ~ ('^' || parent || '_[0-9]{8}$')
          AND to_date(right(c.relname, 8), 'YYYYMMDD') + 1 <= (before AT TIME ZONE 'UTC')::date
    LOOP
        EXECUTE format('DROP TABLE %I', r.relname);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

SELECT anika_ensure_partitions('events', (now() AT TIME ZONE 'UTC')::date - 1, 8);
SELECT anika_ensure_partitions('attempts', (now() AT TIME ZONE 'UTC')::date - 1, 8);
