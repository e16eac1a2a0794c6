//! Partners and their ingest quotas.
