-- The audit log: who changed what in the catalog, and who replayed or purged what.
--
-- One row per audited action, written in the transaction of the change it
-- records (so a change that rolls back leaves no row). Partitioned by day like
-- the event log, so retention (ANIKA_AUDIT_RETENTION) is a partition drop.
-- No foreign keys: an entry outlives the partner, key, topic or subscription it
-- is about. A secret value never lands here: the writer drops fields that name
-- one, and callers record only non-secret fields (see shared/src/audit.rs).

CREATE TABLE audit_log (
    -- UUIDv7, made by the writer.
    id                uuid NOT NULL,
    at                timestamptz NOT NULL,
    -- The principal of the verified token; NULL key and partner with role
    -- 'operator' is the command-line interface on the operator's machine, with
    -- role 'system' anika itself (the dispatcher disabling a failing endpoint).
    actor_api_key_id  uuid,
    actor_partner_id  uuid,
    actor_role        text NOT NULL CHECK (actor_role IN ('operator', 'admin', 'publisher', 'system')),
    -- `<resource>.<verb>`, e.g. `grant.created`.
    action            text NOT NULL,
    target_type       text NOT NULL,
    -- Text, not uuid: signing keys are named by their `kid`.
    target_id         text NOT NULL,
    -- The partner the target belongs to: a partner's admins see these entries.
    -- NULL for platform-wide targets (operator keys, signing keys).
    target_partner_id uuid,
    -- {"field": {"old": …, "new": …}}
    changes           jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE INDEX audit_log_time ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_partner ON audit_log (target_partner_id, at DESC, id DESC);
CREATE INDEX audit_log_target ON audit_log (target_type, target_id, at DESC, id DESC);
CREATE INDEX audit_log_action ON audit_log (action, at DESC, id DESC);
-- As for the event log: an entry is never refused because maintenance is late.
CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;

SELECT anika_ensure_partitions('audit_log', (now() AT TIME ZONE 'UTC')::date - 1, 8);
