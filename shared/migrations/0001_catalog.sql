-- The catalog: who exists, who may do what, and where events go.

CREATE TABLE partners (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys are stored only as a SHA-256 of the key: the key is 256 random bits,
-- so a fast hash cannot be brute-forced and lets a lookup use an index.
CREATE TABLE api_keys (
    id         uuid PRIMARY KEY,
    partner_id uuid REFERENCES partners (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('operator', 'admin', 'publisher')),
    name       text NOT NULL,
    key_hash   bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CHECK ((role = 'operator') = (partner_id IS NULL))
);
CREATE INDEX api_keys_partner ON api_keys (partner_id, created_at);

-- Token signing keys (Ed25519). The private half never leaves this table except
-- into the signer's memory; the public half is served as a JWK.
CREATE TABLE signing_keys (
    kid         text PRIMARY KEY,
    algorithm   text NOT NULL CHECK (algorithm = 'EdDSA'),
    private_key bytea NOT NULL,
    public_key  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- After retirement a key no longer signs but still verifies until every
    -- token it signed has expired.
    retired_at  timestamptz
);

-- Opaque refresh tokens, hashed. A family is one login; reusing a rotated
-- token revokes the whole family (RFC 6819 5.2.2.3, OAuth 2.0 BCP).
CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,
    family_id  uuid NOT NULL,
    api_key_id uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);

CREATE TABLE topics (
    id               uuid PRIMARY KEY,
    owner_partner_id uuid NOT NULL REFERENCES partners (id) ON DELETE CASCADE,
    name             text NOT NULL,
    description      text,
    schema           jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner_partner_id, name)
);

CREATE TABLE grants (
    topic_id   uuid NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    partner_id uuid NOT NULL REFERENCES partners (id) ON DELETE CASCADE,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic_id, partner_id)
);
CREATE INDEX grants_partner ON grants (partner_id);

CREATE TABLE subscriptions (
    id                        uuid PRIMARY KEY,
    topic_id                  uuid NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    partner_id                uuid NOT NULL REFERENCES partners (id) ON DELETE CASCADE,
    url                       text NOT NULL,
    description               text,
    filter                    jsonb,
    status                    text NOT NULL DEFAULT 'active'
                              CHECK (status IN ('active', 'paused', 'disabled')),
    disabled_reason           text,
    max_attempts              integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
    rate_limit_per_s          integer CHECK (rate_limit_per_s > 0),
    ordered                   boolean NOT NULL DEFAULT false,
    secret                    text NOT NULL,
    previous_secret           text,
    previous_secret_expires_at timestamptz,
    -- Set when an attempt fails after a success (or the first attempt fails);
    -- cleared by a success. Drives automatic disabling of dead endpoints.
    failing_since             timestamptz,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_partner ON subscriptions (partner_id, created_at, id);
CREATE INDEX subscriptions_topic ON subscriptions (topic_id);
