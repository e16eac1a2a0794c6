//! Envelope encryption of the secrets anika keeps at rest: token-signing private keys and webhook secrets.
//!
//! Each secret is encrypted (AES-256-GCM) under a data key of its own; the data
//! key is wrapped (AES-256-GCM too) under a main key of the [`KeyRing`]
//! configured in `ANIKA_SECRET_KEYS`. Both encryptions take the secret's place
//! (table, column, row id: a [`Slot`]) as associated data, so a ciphertext
//! copied to another row or column does not open. Rotating the main key
//! re-wraps the data keys only ([`KeyRing::rewrap`]); the encrypted secrets stay.
//!
//! The stored form ([`Sealed`]) is text that names its version and main key id:
//!
//! ```text
//! anika-sealed:v1:<main key id>:<base64url(nonce | wrapped data key | tag)>:<base64url(nonce | ciphertext | tag)>
//! ```
//!
//! The main key id is in clear so that `anika secrets check` and start-up can
//! tell which keys the stored rows need without opening them.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use zeroize::Zeroizing;

/// The prefix of every sealed value, with the format's version.
const PREFIX_V1: &str = "anika-sealed:v1:";
/// What every sealed value starts with, whatever its version.
const PREFIX_ANY: &str = "anika-sealed:";
/// Bytes of a main key and of a data key (AES-256).
const KEY_LEN: usize = 32;
/// Bytes of an AES-GCM tag.
const TAG_LEN: usize = 16;
/// The longest main key id: ids are printed in errors and stored in every row.
const MAX_ID_LEN: usize = 32;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The name of a main key in the ring: 1–32 of `A-Z a-z 0-9 _ -` (it is stored in clear in every row).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MainKeyId(String);

impl MainKeyId {
    /// Parses an id as configured or stored.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > MAX_ID_LEN {
            return Err(format!(
                "a main key id has 1 to {MAX_ID_LEN} characters, not {}",
                text.len()
            ));
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("a main key id holds only letters, digits, `_` and `-`".into());
        }
        Ok(Self(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MainKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 256 bits of main key material, wiped from memory when dropped and never printed.
#[derive(Clone)]
struct MainKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for MainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MainKey(***)")
    }
}

/// The main keys of `ANIKA_SECRET_KEYS`: the first seals, every one opens.
///
/// `Debug` shows the ids only.
#[derive(Clone)]
pub struct KeyRing {
    /// Never empty; ids are distinct.
    keys: Vec<(MainKeyId, MainKey)>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "ids",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PartialEq for KeyRing {
    fn eq(&self, other: &Self) -> bool {
        self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(&other.keys)
                .all(|((a, ka), (b, kb))| a == b && *ka.0 == *kb.0)
    }
}

impl Eq for KeyRing {}

/// Where a secret is stored: its table and column, and the row's id. The associated data of both encryptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot<'a> {
    column: Column,
    row: &'a str,
}

/// The columns that hold sealed secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Column {
    /// `signing_keys.private_key_sealed` (row id: the kid).
    SigningKeyPrivateKey,
    /// `subscriptions.secret` (row id: the subscription id).
    SubscriptionSecret,
    /// `subscriptions.previous_secret` (row id: the subscription id).
    SubscriptionPreviousSecret,
}

impl Column {
    /// `table.column`, as bound into the associated data and shown in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::SigningKeyPrivateKey => "signing_keys.private_key",
            Self::SubscriptionSecret => "subscriptions.secret",
            Self::SubscriptionPreviousSecret => "subscriptions.previous_secret",
        }
    }
}

impl<'a> Slot<'a> {
    /// The secret in `column` of the row with id `row`.
    pub fn new(column: Column, row: &'a str) -> Self {
        Self { column, row }
    }

    /// The column.
    pub fn column(&self) -> Column {
        self.column
    }

    fn associated_data(&self) -> String {
        format!("anika-secret/v1/{}/{}", self.column.name(), self.row)
    }
}

impl fmt::Display for Slot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {}", self.column.name(), self.row)
    }
}

/// A secret as stored: version, main key id, wrapped data key, ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    key_id: MainKeyId,
    /// Nonce, wrapped data key and tag.
    wrapped: Vec<u8>,
    /// Nonce, ciphertext and tag.
    payload: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ciphertext is not secret, but it is long and of no use in a log line.
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Sealed {
    /// Whether stored text is in a sealed form (of any version) rather than plain text.
    pub fn looks_sealed(text: &str) -> bool {
        text.starts_with(PREFIX_ANY)
    }

    /// Parses the stored text form.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let rest = text.strip_prefix(PREFIX_V1).ok_or_else(|| {
            if Self::looks_sealed(text) {
                SecretError::Malformed("an unknown version of the sealed format".into())
            } else {
                SecretError::Malformed("not sealed (plain text or garbage)".into())
            }
        })?;
        let mut parts = rest.split(':');
        let (Some(id), Some(wrapped), Some(payload), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SecretError::Malformed(
                "a sealed value has a key id, a wrapped key and a ciphertext".into(),
            ));
        };
        let key_id = MainKeyId::parse(id).map_err(SecretError::Malformed)?;
        let decode = |part: &str, what: &str| {
            B64.decode(part)
                .map_err(|_| SecretError::Malformed(format!("the {what} is not base64url")))
        };
        let wrapped = decode(wrapped, "wrapped key")?;
        let payload = decode(payload, "ciphertext")?;
        if wrapped.len() != NONCE_LEN + KEY_LEN + TAG_LEN || payload.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretError::Malformed("a part has the wrong length".into()));
        }
        Ok(Self {
            key_id,
            wrapped,
            payload,
        })
    }

    /// The main key that wraps its data key.
    pub fn key_id(&self) -> &MainKeyId {
        &self.key_id
    }

    /// The stored text form.
    pub fn to_text(&self) -> String {
        format!(
            "{PREFIX_V1}{}:{}:{}",
            self.key_id,
            B64.encode(&self.wrapped),
            B64.encode(&self.payload)
        )
    }
}

/// Why a secret could not be sealed or opened. Never carries key material or plain text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The ring does not hold the main key the value was sealed under.
    #[error("sealed under main key `{0}`, which ANIKA_SECRET_KEYS does not hold")]
    UnknownKey(MainKeyId),
    /// The value does not open under its key: moved from another row or column, or altered.
    #[error("does not open under main key `{0}`: moved from another row or column, or altered")]
    Refused(MainKeyId),
    /// The stored text is not a sealed value this version reads.
    #[error("not a sealed value: {0}")]
    Malformed(String),
    /// The system's random source or cipher failed.
    #[error("the cipher failed")]
    Cipher,
}

/// Why `ANIKA_SECRET_KEYS` could not be read; names the entry, never its key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("ANIKA_SECRET_KEYS: {0}")]
pub struct KeyRingError(String);

impl KeyRing {
    /// Parses `id:base64key[,id:base64key…]` (standard or URL-safe base64 of 32 bytes).
    pub fn parse(text: &str) -> Result<Self, KeyRingError> {
        let mut keys: Vec<(MainKeyId, MainKey)> = Vec::new();
        for (n, entry) in text
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let place = n + 1;
            let (id, key) = entry
                .split_once(':')
                .ok_or_else(|| KeyRingError(format!("entry {place} is not `id:base64key`")))?;
            let id = MainKeyId::parse(id.trim())
                .map_err(|e| KeyRingError(format!("entry {place}: {e}")))?;
            let key = key.trim();
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(key)
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(key))
                    .or_else(|_| B64.decode(key))
                    .map_err(|_| {
                        KeyRingError(format!("key `{id}` (entry {place}) is not base64"))
                    })?,
            );
            let material: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
                KeyRingError(format!(
                    "key `{id}` (entry {place}) has {} bytes; a main key has {KEY_LEN}",
                    bytes.len()
                ))
            })?;
            if keys.iter().any(|(known, _)| *known == id) {
                return Err(KeyRingError(format!("key id `{id}` appears twice")));
            }
            keys.push((id, MainKey(Zeroizing::new(material))));
        }
        if keys.is_empty() {
            return Err(KeyRingError(
                "no key: give at least one `id:base64key`".into(),
            ));
        }
        Ok(Self { keys })
    }

    /// A ring entry `id:base64key` with a fresh random key (what `scripts/up` writes, for tools and tests).
    pub fn generate_entry(id: &MainKeyId) -> String {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rand::fill(&mut key[..]);
        format!(
            "{id}:{}",
            base64::engine::general_purpose::STANDARD.encode(&key[..])
        )
    }

    /// The key new values are sealed under.
    pub fn current(&self) -> &MainKeyId {
        &self.keys[0].0
    }

    /// Every id, the current one first.
    pub fn ids(&self) -> impl Iterator<Item = &MainKeyId> {
        self.keys.iter().map(|(id, _)| id)
    }

    /// Whether the ring holds `id`.
    pub fn holds(&self, id: &MainKeyId) -> bool {
        self.key(id).is_some()
    }

    fn key(&self, id: &MainKeyId) -> Option<&MainKey> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, key)| key)
    }

    /// Encrypts `plain` for `slot` under a fresh data key wrapped by the current main key.
    pub fn seal(&self, plain: &[u8], slot: Slot<'_>) -> Result<Sealed, SecretError> {
        let mut data_key = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(&mut data_key[..]).map_err(|_| SecretError::Cipher)?;
        let payload = encrypt(&data_key[..], plain, slot.associated_data().as_bytes())?;
        let (id, main) = &self.keys[0];
        let wrapped = encrypt(&main.0[..], &data_key[..], wrap_ad(id, slot).as_bytes())?;
        Ok(Sealed {
            key_id: id.clone(),
            wrapped,
            payload,
        })
    }

    /// Decrypts a value sealed for `slot` under any key of the ring.
    pub fn open(&self, sealed: &Sealed, slot: Slot<'_>) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let data_key = self.unwrap_data_key(sealed, slot)?;
        decrypt(
            &data_key,
            &sealed.payload,
            slot.associated_data().as_bytes(),
        )
        .ok_or_else(|| SecretError::Refused(sealed.key_id.clone()))
    }

    /// The same value with its data key wrapped by the current main key; `None` when it already is.
    ///
    /// The ciphertext is kept as it is, and checked: a value that does not open is refused.
    pub fn rewrap(&self, sealed: &Sealed, slot: Slot<'_>) -> Result<Option<Sealed>, SecretError> {
        let data_key = self.unwrap_data_key(sealed, slot)?;
        decrypt(
            &data_key,
            &sealed.payload,
            slot.associated_data().as_bytes(),
        )
        .ok_or_else(|| SecretError::Refused(sealed.key_id.clone()))?;
        if sealed.key_id == *self.current() {
            return Ok(None);
        }
        let (id, main) = &self.keys[0];
        let wrapped = encrypt(&main.0[..], &data_key[..], wrap_ad(id, slot).as_bytes())?;
        Ok(Some(Sealed {
            key_id: id.clone(),
            wrapped,
            payload: sealed.payload.clone(),
        }))
    }

    fn unwrap_data_key(
        &self,
        sealed: &Sealed,
        slot: Slot<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let main = self
            .key(&sealed.key_id)
            .ok_or_else(|| SecretError::UnknownKey(sealed.key_id.clone()))?;
        decrypt(
            &main.0[..],
            &sealed.wrapped,
            wrap_ad(&sealed.key_id, slot).as_bytes(),
        )
        .filter(|key| key.len() == KEY_LEN)
        .ok_or_else(|| SecretError::Refused(sealed.key_id.clone()))
    }
}

/// The associated data of a wrapped data key: its main key and its slot.
fn wrap_ad(id: &MainKeyId, slot: Slot<'_>) -> String {
    format!("anika-data-key/v1/{id}/{}", slot.associated_data())
}

/// `nonce | ciphertext | tag` of `plain` under `key` with associated data `ad`.
fn encrypt(key: &[u8], plain: &[u8], ad: &[u8]) -> Result<Vec<u8>, SecretError> {
    let key = RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| SecretError::Cipher)?;
    let mut in_out = plain.to_vec();
    let nonce = key
        .seal_in_place_append_tag(Aad::from(ad), &mut in_out)
        .map_err(|_| SecretError::Cipher)?;
    let mut out = Vec::with_capacity(NONCE_LEN + in_out.len());
    out.extend_from_slice(nonce.as_ref());
    out.extend_from_slice(&in_out);
    Ok(out)
}

/// The plain text of `nonce | ciphertext | tag`, or `None` if it does not authenticate.
fn decrypt(key: &[u8], sealed: &[u8], ad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let key = RandomizedNonceKey::new(&AES_256_GCM, key).ok()?;
    let (nonce, body) = sealed.split_at_checked(NONCE_LEN)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut in_out = Zeroizing::new(body.to_vec());
    let plain_len = key
        .open_in_place(nonce, Aad::from(ad), &mut in_out[..])
        .ok()?
        .len();
    in_out.truncate(plain_len);
    Some(in_out)
}

/// A ring of one fixed key for unit tests of other modules.
#[cfg(test)]
pub(crate) fn tests_ring() -> &'static str {
    "unit:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> KeyRing {
        KeyRing::parse(text).expect("a ring")
    }

    fn entry(id: &str) -> String {
        KeyRing::generate_entry(&MainKeyId::parse(id).unwrap())
    }

    const ROW: &str = "0190a4d2-7d3e-7000-8000-000000000001";
    const OTHER_ROW: &str = "0190a4d2-7d3e-7000-8000-000000000002";

    #[test]
    fn a_sealed_secret_round_trips_through_its_text_form() {
        let keys = ring(&entry("k1"));
        let slot = Slot::new(Column::SubscriptionSecret, ROW);
        let sealed = keys.seal(b"whsec_hello", slot).unwrap();
        let text = sealed.to_text();
        assert!(text.starts_with("anika-sealed:v1:k1:"), "{text}");
        assert!(!text.contains("whsec_"));
        let parsed = Sealed::parse(&text).unwrap();
        assert_eq!(parsed, sealed);
        assert_eq!(parsed.key_id().as_str(), "k1");
        assert_eq!(&keys.open(&parsed, slot).unwrap()[..], b"whsec_hello");
    }

    #[test]
    fn each_seal_uses_a_fresh_data_key_and_nonce() {
        let keys = ring(&entry("k1"));
        let slot = Slot::new(Column::SubscriptionSecret, ROW);
        let a = keys.seal(b"same", slot).unwrap();
        let b = keys.seal(b"same", slot).unwrap();
        assert_ne!(a.to_text(), b.to_text());
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_or_column_is_refused() {
        let keys = ring(&entry("k1"));
        let sealed = keys
            .seal(b"secret", Slot::new(Column::SubscriptionSecret, ROW))
            .unwrap();
        assert_eq!(
            keys.open(&sealed, Slot::new(Column::SubscriptionSecret, OTHER_ROW)),
            Err(SecretError::Refused(MainKeyId::parse("k1").unwrap()))
        );
        assert!(matches!(
            keys.open(&sealed, Slot::new(Column::SubscriptionPreviousSecret, ROW)),
            Err(SecretError::Refused(_))
        ));
        assert!(matches!(
            keys.rewrap(&sealed, Slot::new(Column::SubscriptionSecret, OTHER_ROW)),
            Err(SecretError::Refused(_))
        ));
    }

    #[test]
    fn a_value_under_a_key_the_ring_lacks_names_that_key() {
        let old = ring(&entry("old-2025"));
        let slot = Slot::new(Column::SigningKeyPrivateKey, "kid1");
        let sealed = old.seal(b"pkcs8", slot).unwrap();
        let err = ring(&entry("new")).open(&sealed, slot).unwrap_err();
        assert_eq!(
            err,
            SecretError::UnknownKey(MainKeyId::parse("old-2025").unwrap())
        );
        assert!(err.to_string().contains("`old-2025`"), "{err}");
    }

    #[test]
    fn a_key_of_the_same_id_but_other_bytes_refuses() {
        let slot = Slot::new(Column::SigningKeyPrivateKey, "kid1");
        let sealed = ring(&entry("k1")).seal(b"pkcs8", slot).unwrap();
        assert!(matches!(
            ring(&entry("k1")).open(&sealed, slot),
            Err(SecretError::Refused(_))
        ));
    }

    #[test]
    fn any_altered_byte_is_refused() {
        let keys = ring(&entry("k1"));
        let slot = Slot::new(Column::SubscriptionSecret, ROW);
        let sealed = keys.seal(b"whsec_abc", slot).unwrap();
        for part in 0..2 {
            let len = if part == 0 {
                sealed.wrapped.len()
            } else {
                sealed.payload.len()
            };
            for i in 0..len {
                let mut bad = sealed.clone();
                let bytes = if part == 0 {
                    &mut bad.wrapped
                } else {
                    &mut bad.payload
                };
                bytes[i] ^= 0x01;
                assert!(
                    matches!(keys.open(&bad, slot), Err(SecretError::Refused(_))),
                    "part {part} byte {i}"
                );
            }
        }
        // Relabelling the key id does not help either.
        let two = ring(&format!("{},{}", entry("k2"), entry("k1")));
        let mut relabelled = two
            .seal(b"x", slot)
            .unwrap()
            .to_text()
            .replacen(":k2:", ":k1:", 1);
        assert!(matches!(
            two.open(&Sealed::parse(&relabelled).unwrap(), slot),
            Err(SecretError::Refused(_))
        ));
        // Nor does a longer ciphertext.
        relabelled.push('A');
        assert!(
            Sealed::parse(&relabelled)
                .and_then(|s| two.open(&s, slot))
                .is_err()
        );
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let (a, b) = (entry("a"), entry("b"));
        let slot = Slot::new(Column::SubscriptionSecret, ROW);
        let under_b = ring(&b).seal(b"v", slot).unwrap();
        let both = ring(&format!("{a}, {b}"));
        assert_eq!(both.current().as_str(), "a");
        assert_eq!(&both.open(&under_b, slot).unwrap()[..], b"v");
        assert_eq!(both.seal(b"v", slot).unwrap().key_id().as_str(), "a");
    }

    #[test]
    fn rewrapping_moves_the_data_key_to_the_current_key_and_keeps_the_ciphertext() {
        let (old, new) = (entry("old"), entry("new"));
        let slot = Slot::new(Column::SubscriptionPreviousSecret, ROW);
        let sealed = ring(&old).seal(b"whsec_v", slot).unwrap();
        let rotating = ring(&format!("{new},{old}"));
        let rewrapped = rotating.rewrap(&sealed, slot).unwrap().expect("rewrapped");
        assert_eq!(rewrapped.key_id().as_str(), "new");
        assert_eq!(rewrapped.payload, sealed.payload);
        assert_eq!(rotating.rewrap(&rewrapped, slot).unwrap(), None);
        // Once rewrapped, the old key can leave the ring.
        assert_eq!(&ring(&new).open(&rewrapped, slot).unwrap()[..], b"whsec_v");
    }

    #[test]
    fn bad_rings_are_refused_without_showing_key_material() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(KeyRing::parse("").is_err());
        assert!(KeyRing::parse(&key).is_err(), "an id is required");
        assert!(KeyRing::parse(&format!("a:{key},a:{key}")).is_err());
        assert!(KeyRing::parse(&format!("a b:{key}")).is_err());
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let err = KeyRing::parse(&format!("k:{short}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ANIKA_SECRET_KEYS") && err.contains("16 bytes"),
            "{err}"
        );
        assert!(!err.contains(&short));
        let err = KeyRing::parse("k:not base64!").unwrap_err().to_string();
        assert!(!err.contains("not base64!"), "{err}");
        assert!(KeyRing::parse(&format!(" a:{key} , b:{key} ")).is_ok());
    }

    #[test]
    fn debug_output_shows_ids_and_never_key_bytes() {
        let key = base64::engine::general_purpose::STANDARD.encode([0xAB; 32]);
        let keys = ring(&format!("k1:{key}"));
        let shown = format!("{keys:?}");
        assert!(shown.contains("k1"), "{shown}");
        assert!(!shown.contains(&key) && !shown.contains("171"), "{shown}");
        let sealed = keys
            .seal(b"whsec_x", Slot::new(Column::SubscriptionSecret, ROW))
            .unwrap();
        assert!(!format!("{sealed:?}").contains(&sealed.to_text()[20..]));
    }

    #[test]
    fn plain_text_and_unknown_versions_are_not_read_as_sealed() {
        assert!(!Sealed::looks_sealed("whsec_abc"));
        assert!(Sealed::looks_sealed("anika-sealed:v9:k:a:b"));
        assert!(matches!(
            Sealed::parse("anika-sealed:v9:k:a:b"),
            Err(SecretError::Malformed(m)) if m.contains("version")
        ));
        assert!(Sealed::parse("whsec_abc").is_err());
    }
}
