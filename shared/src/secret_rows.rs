//! The rows that hold sealed secrets, as a whole: sealing plain-text rows at start-up, checking
//! that the ring opens every one, re-wrapping them under a new main key, and erasing
//! previous webhook secrets whose overlap ended.
//!
//! The catalog writes single secrets as it creates and rotates them, and the dispatcher
//! reads them; the sweeps over every sealed column are here, their SQL in
//! [`crate::store::secrets`].

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool};

use crate::{
    secrets::{Column, KeyRing, MainKeyId, Sealed, SecretError, Slot},
    store::secrets as store,
};

/// Rows re-wrapped per transaction: small, so that rotation never holds many row locks.
const REWRAP_BATCH: i64 = 50;

/// Why the stored secrets cannot be used with this ring.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    /// PostgreSQL failed.
    #[error("database")]
    Db(#[from] sqlx::Error),
    /// A plain-text row could not be sealed.
    #[error("cannot seal {slot}")]
    Seal {
        /// Which value (table.column of row id).
        slot: String,
        /// Why.
        #[source]
        source: SecretError,
    },
    /// Stored secrets are sealed under main keys the ring does not hold.
    #[error("{}", missing_message(.0))]
    MissingKeys(Vec<(MainKeyId, u64)>),
}

fn missing_message(missing: &[(MainKeyId, u64)]) -> String {
    let list = missing
        .iter()
        .map(|(id, n)| format!("`{id}` ({n} value{})", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "stored secrets are sealed under main key(s) {list} that ANIKA_SECRET_KEYS does not hold; \
         add them to the ring (after the current key) and start again"
    )
}

/// The main keys that stored values need and `ring` lacks, with how many values need each.
pub fn missing_keys(in_use: &BTreeMap<MainKeyId, u64>, ring: &KeyRing) -> Vec<(MainKeyId, u64)> {
    in_use
        .iter()
        .filter(|(id, _)| !ring.holds(id))
        .map(|(id, n)| (id.clone(), *n))
        .collect()
}

/// Seals every plain-text secret (rows from before secrets were sealed), then refuses if
/// any stored value is under a main key the ring lacks. Run at every start-up; idempotent.
pub async fn prepare(pool: &PgPool, ring: &KeyRing) -> Result<(), RowsError> {
    let sealed = seal_plain_rows(pool, ring).await?;
    if sealed > 0 {
        tracing::info!(
            values = sealed,
            main_key = %ring.current(),
            "sealed plain-text secrets left by an earlier version"
        );
    }
    let missing = missing_keys(&key_ids_in_use(pool).await?, ring);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(RowsError::MissingKeys(missing))
    }
}

/// Seals plain-text signing keys and webhook secrets in one transaction; returns how many values.
///
/// The advisory lock makes a second process starting at the same time wait and then find
/// nothing left to do; the row locks keep a concurrent rotation from being overwritten.
pub async fn seal_plain_rows(pool: &PgPool, ring: &KeyRing) -> Result<u64, RowsError> {
    // Cheap when there is nothing to do, which is every start-up but the first after the upgrade.
    let any = store::any_plain_secrets(pool).await?;
    if !any {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    // Serialises the sweeps across processes (start-up sealing of two processes at once).
    store::lock_secret_rows(&mut *tx).await?;
    let mut count = seal_plain_signing_keys(&mut tx, ring).await?;
    count += seal_plain_webhook_secrets(&mut tx, ring).await?;
    tx.commit().await?;
    Ok(count)
}

async fn seal_plain_signing_keys(
    conn: &mut PgConnection,
    ring: &KeyRing,
) -> Result<u64, RowsError> {
    let rows = store::list_plain_signing_keys_for_update(&mut *conn).await?;
    let count = rows.len() as u64;
    for store::PlainSigningKey {
        kid,
        private_key: plain,
    } in rows
    {
        let plain = zeroize::Zeroizing::new(plain);
        let slot = Slot::new(Column::SigningKeyPrivateKey, &kid);
        let sealed = ring.seal(&plain, slot).map_err(|source| RowsError::Seal {
            slot: slot.to_string(),
            source,
        })?;
        store::seal_signing_key(&mut *conn, &kid, &sealed.to_text()).await?;
    }
    Ok(count)
}

async fn seal_plain_webhook_secrets(
    conn: &mut PgConnection,
    ring: &KeyRing,
) -> Result<u64, RowsError> {
    let rows = store::list_plain_webhook_secrets_for_update(&mut *conn).await?;
    let mut count = 0;
    for store::WebhookSecrets {
        id,
        secret,
        previous_secret: previous,
    } in rows
    {
        let row = id.to_string();
        let (secret, previous) = (
            zeroize::Zeroizing::new(secret),
            previous.map(zeroize::Zeroizing::new),
        );
        let seal = |text: &str, column: Column| -> Result<String, RowsError> {
            if Sealed::looks_sealed(text) {
                return Ok(text.to_owned());
            }
            let slot = Slot::new(column, &row);
            ring.seal(text.as_bytes(), slot)
                .map(|s| s.to_text())
                .map_err(|source| RowsError::Seal {
                    slot: slot.to_string(),
                    source,
                })
        };
        let new_secret = seal(&secret, Column::SubscriptionSecret)?;
        let new_previous = previous
            .as_deref()
            .map(|p| seal(p, Column::SubscriptionPreviousSecret))
            .transpose()?;
        count += u64::from(new_secret != *secret)
            + u64::from(new_previous.as_deref() != previous.as_deref().map(String::as_str));
        store::set_webhook_secrets(&mut *conn, id, &new_secret, new_previous.as_deref()).await?;
    }
    Ok(count)
}

/// Every sealed value's main key id, with how many values use it (read from the clear-text
/// label, without opening anything). Labels that are not a valid id count under no key.
pub async fn key_ids_in_use(pool: &PgPool) -> Result<BTreeMap<MainKeyId, u64>, sqlx::Error> {
    let rows = store::count_sealed_by_key_id(pool).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, n)| Some((MainKeyId::parse(&id).ok()?, n as u64)))
        .collect())
}

/// What `anika secrets check` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Values that opened, by the main key they are under.
    pub opened: BTreeMap<MainKeyId, u64>,
    /// Values under main keys the ring lacks, by key.
    pub unknown: BTreeMap<MainKeyId, u64>,
    /// Values that do not open under a key the ring holds, or do not parse: where, and why.
    pub refused: Vec<(String, String)>,
    /// Values still in plain text (sealed at the next start-up).
    pub plain: u64,
}

impl CheckReport {
    /// Whether every stored value opens with the ring.
    pub fn healthy(&self) -> bool {
        self.unknown.is_empty() && self.refused.is_empty() && self.plain == 0
    }

    /// How many values were looked at.
    pub fn total(&self) -> u64 {
        self.opened.values().sum::<u64>()
            + self.unknown.values().sum::<u64>()
            + self.refused.len() as u64
            + self.plain
    }

    fn record(&mut self, text: &str, slot: Slot<'_>, ring: &KeyRing) {
        if !Sealed::looks_sealed(text) {
            self.plain += 1;
            return;
        }
        match Sealed::parse(text).and_then(|sealed| {
            ring.open(&sealed, slot)?;
            Ok(sealed)
        }) {
            Ok(sealed) => *self.opened.entry(sealed.key_id().clone()).or_default() += 1,
            Err(SecretError::UnknownKey(id)) => *self.unknown.entry(id).or_default() += 1,
            Err(e) => self.refused.push((slot.to_string(), e.to_string())),
        }
    }
}

/// Opens every stored secret with `ring` (and forgets the plain text at once).
pub async fn check(pool: &PgPool, ring: &KeyRing) -> Result<CheckReport, sqlx::Error> {
    let mut report = CheckReport::default();
    let keys = store::list_signing_key_secrets(pool).await?;
    for store::SigningKeySecret {
        kid,
        private_key_sealed: sealed,
        plain,
    } in keys
    {
        match sealed {
            Some(text) if !plain => {
                report.record(&text, Slot::new(Column::SigningKeyPrivateKey, &kid), ring)
            }
            _ => report.plain += 1,
        }
    }
    let mut after = uuid::Uuid::nil();
    loop {
        let rows = store::list_webhook_secrets_after(pool, after, 1000).await?;
        let Some(last) = rows.last().map(|r| r.id) else {
            break;
        };
        for store::WebhookSecrets {
            id,
            secret,
            previous_secret: previous,
        } in rows
        {
            let row = id.to_string();
            report.record(&secret, Slot::new(Column::SubscriptionSecret, &row), ring);
            if let Some(previous) = previous {
                report.record(
                    &previous,
                    Slot::new(Column::SubscriptionPreviousSecret, &row),
                    ring,
                );
            }
        }
        after = last;
    }
    Ok(report)
}

/// What a main-key rotation did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RewrapReport {
    /// Values whose data key is now wrapped by the ring's first key.
    pub rewrapped: u64,
    /// Values already under it.
    pub current: u64,
    /// Values left as they were because they do not open: where, and why.
    pub failed: Vec<(String, String)>,
}

/// The outcome for one value: its new text, or why it stays.
fn rewrap_value(
    ring: &KeyRing,
    text: &str,
    slot: Slot<'_>,
    report: &mut RewrapReport,
) -> Option<String> {
    match Sealed::parse(text).and_then(|s| ring.rewrap(&s, slot)) {
        Ok(Some(new)) => {
            report.rewrapped += 1;
            Some(new.to_text())
        }
        Ok(None) => {
            report.current += 1;
            None
        }
        Err(e) => {
            report.failed.push((slot.to_string(), e.to_string()));
            None
        }
    }
}

/// Re-wraps every stored data key under the ring's first key, a few rows per transaction.
///
/// Online: the secrets themselves do not change, so deliveries and token signing go on
/// (readers open values under any key of the ring) and nothing needs announcing. Values
/// written meanwhile are sealed under the first key already.
pub async fn rewrap_all(pool: &PgPool, ring: &KeyRing) -> Result<RewrapReport, sqlx::Error> {
    let mut report = RewrapReport::default();
    let current = ring.current().as_str().to_owned();
    let mut after = String::new();
    loop {
        let mut tx = pool.begin().await?;
        let rows = store::list_sealed_signing_keys_after_for_update(&mut *tx, &after, REWRAP_BATCH)
            .await?;
        let Some(last) = rows.last().map(|r| r.kid.clone()) else {
            break;
        };
        for store::SealedSigningKey {
            kid,
            private_key_sealed: text,
        } in rows
        {
            let slot = Slot::new(Column::SigningKeyPrivateKey, &kid);
            if let Some(new) = rewrap_value(ring, &text, slot, &mut report) {
                store::set_signing_key_sealed(&mut *tx, &kid, &new).await?;
            }
        }
        tx.commit().await?;
        after = last;
    }
    let mut after = uuid::Uuid::nil();
    loop {
        let mut tx = pool.begin().await?;
        let rows =
            store::list_webhook_secrets_after_for_update(&mut *tx, after, REWRAP_BATCH).await?;
        let Some(last) = rows.last().map(|r| r.id) else {
            break;
        };
        for store::WebhookSecrets {
            id,
            secret,
            previous_secret: previous,
        } in rows
        {
            let row = id.to_string();
            let new_secret = rewrap_value(
                ring,
                &secret,
                Slot::new(Column::SubscriptionSecret, &row),
                &mut report,
            );
            let new_previous = previous.as_deref().and_then(|p| {
                rewrap_value(
                    ring,
                    p,
                    Slot::new(Column::SubscriptionPreviousSecret, &row),
                    &mut report,
                )
            });
            if new_secret.is_some() || new_previous.is_some() {
                store::replace_webhook_secrets(
                    &mut *tx,
                    id,
                    new_secret.as_deref(),
                    new_previous.as_deref(),
                )
                .await?;
            }
        }
        tx.commit().await?;
        after = last;
    }
    tracing::info!(
        main_key = %current,
        rewrapped = report.rewrapped,
        failed = report.failed.len(),
        "re-wrapped stored data keys under the current main key"
    );
    Ok(report)
}

/// Erases previous webhook secrets (and their expiry) whose 24 h overlap has ended; returns how many.
pub async fn erase_expired_previous_secrets(pool: &PgPool) -> Result<u64, sqlx::Error> {
    store::erase_expired_previous_secrets(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_a_ring_lacks_are_named_with_their_counts() {
        let a = MainKeyId::parse("a").unwrap();
        let b = MainKeyId::parse("b").unwrap();
        let ring = KeyRing::parse(&KeyRing::generate_entry(&a)).expect("a ring of key a");
        let in_use = BTreeMap::from([(a.clone(), 3), (b.clone(), 2)]);
        let missing = missing_keys(&in_use, &ring);
        assert_eq!(missing, vec![(b, 2)]);
        let message = RowsError::MissingKeys(missing).to_string();
        assert!(message.contains("`b` (2 values)"), "{message}");
        assert!(missing_keys(&BTreeMap::from([(a, 1)]), &ring).is_empty());
    }
}
