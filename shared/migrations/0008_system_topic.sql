-- Every partner's `anika.system` topic (API.md, "System topic"): anika itself publishes
-- events about the partner's own subscriptions into it; the partner subscribes to it
-- like to any topic.
--
-- A trigger, not application code: partners are created by the API, the CLI and the
-- bootstrap, and each must get the topic in the same transaction. Topic names starting
-- with `anika.` are refused to partners, so the name cannot clash with one of theirs.

INSERT INTO topics (id, owner_partner_id, name, description)
SELECT gen_random_uuid(), p.id, 'anika.system',
       'Operational events about this partner''s subscriptions, published by anika'
FROM partners p
ON CONFLICT (owner_partner_id, name) DO NOTHING;

CREATE FUNCTION anika_create_system_topic() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO topics (id, owner_partner_id, name, description)
    VALUES (gen_random_uuid(), NEW.id, 'anika.system',
            'Operational events about this partner''s subscriptions, published by anika')
    ON CONFLICT (owner_partner_id, name) DO NOTHING;
    RETURN NEW;
END $$;

CREATE TRIGGER partners_system_topic AFTER INSERT ON partners
    FOR EACH ROW EXECUTE FUNCTION anika_create_system_topic();

-- The coalescing of `dead_letter.added`: dead letters not yet announced, and when the
-- last announcement went out (at most one per subscription per ANIKA_SYSTEM_NOTICE_INTERVAL).
CREATE TABLE system_notices (
    subscription_id      uuid PRIMARY KEY REFERENCES subscriptions (id) ON DELETE CASCADE,
    pending_dead_letters integer NOT NULL DEFAULT 0,
    last_sent_at         timestamptz
);
CREATE INDEX system_notices_pending ON system_notices (last_sent_at) WHERE pending_dead_letters > 0;
