-- Per-partner ingest quotas: events per second all of a partner's principals may
-- post together, and the token bucket's size. NULL means no limit (the default);
-- a NULL burst with a rate means one second's worth.

ALTER TABLE partners
    ADD COLUMN ingest_rate_per_s integer CHECK (ingest_rate_per_s BETWEEN 1 AND 1000000),
    ADD COLUMN ingest_burst      integer CHECK (ingest_burst BETWEEN 1 AND 1000000);
