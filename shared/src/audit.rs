//! The audit log: who changed what in the catalog, and who replayed or purged what.
//!
//! Every audited handler calls [`record`] inside the transaction of its change, so
//! an entry exists exactly when the change committed. Replays and purges are not
//! one transaction (they move messages in RabbitMQ): their entry records the
//! result, with the counts, in a transaction of its own after the operation.
//! An entry names the changed fields with their old and new values, never a
//! secret: [`Changes`] drops any field whose name is a secret's.
//!
//! The reading side ([`list`]) is here too: `GET /v1/audit-log` (catalog) and
//! `anika audit` (CLI) both use it. The table's SQL is in [`crate::store::audit`].

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    auth::Principal,
    domain::{ApiKeyId, PartnerId, Role, SubscriptionId, TopicId},
    problem::Problem,
    store::audit as store,
};

/// What was done: `<resource>.<verb>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum Action {
    /// An operator created a partner.
    #[serde(rename = "partner.created")]
    PartnerCreated,
    /// An operator changed a partner's name, description or quotas.
    #[serde(rename = "partner.updated")]
    PartnerUpdated,
    /// An API key was created (never the key itself).
    #[serde(rename = "api_key.created")]
    ApiKeyCreated,
    /// An API key was revoked.
    #[serde(rename = "api_key.revoked")]
    ApiKeyRevoked,
    /// The token signing key was rotated (`anika signing-keys rotate`).
    #[serde(rename = "signing_key.rotated")]
    SigningKeyRotated,
    /// A topic was created.
    #[serde(rename = "topic.created")]
    TopicCreated,
    /// A topic's name, description or schema changed.
    #[serde(rename = "topic.updated")]
    TopicUpdated,
    /// A topic was deleted, with its subscriptions and grants.
    #[serde(rename = "topic.deleted")]
    TopicDeleted,
    /// A partner was granted a topic.
    #[serde(rename = "grant.created")]
    GrantCreated,
    /// A grant was taken away.
    #[serde(rename = "grant.deleted")]
    GrantDeleted,
    /// A subscription was created.
    #[serde(rename = "subscription.created")]
    SubscriptionCreated,
    /// A subscription changed (including its status).
    #[serde(rename = "subscription.updated")]
    SubscriptionUpdated,
    /// A subscription was deleted with its queues.
    #[serde(rename = "subscription.deleted")]
    SubscriptionDeleted,
    /// A subscription's signing secret was rotated (never the secret itself).
    #[serde(rename = "subscription.secret_rotated")]
    SubscriptionSecretRotated,
    /// Dead letters were moved back to delivery.
    #[serde(rename = "dead_letters.replayed")]
    DeadLettersReplayed,
    /// Dead letters were dropped.
    #[serde(rename = "dead_letters.purged")]
    DeadLettersPurged,
    /// A window of the event log was re-delivered.
    #[serde(rename = "events.replayed")]
    EventsReplayed,
}

impl Action {
    /// Every action, in the order of the list above.
    pub const ALL: [Self; 17] = [
        Self::PartnerCreated,
        Self::PartnerUpdated,
        Self::ApiKeyCreated,
        Self::ApiKeyRevoked,
        Self::SigningKeyRotated,
        Self::TopicCreated,
        Self::TopicUpdated,
        Self::TopicDeleted,
        Self::GrantCreated,
        Self::GrantDeleted,
        Self::SubscriptionCreated,
        Self::SubscriptionUpdated,
        Self::SubscriptionDeleted,
        Self::SubscriptionSecretRotated,
        Self::DeadLettersReplayed,
        Self::DeadLettersPurged,
        Self::EventsReplayed,
    ];

    /// The name stored and shown, e.g. `grant.created`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PartnerCreated => "partner.created",
            Self::PartnerUpdated => "partner.updated",
            Self::ApiKeyCreated => "api_key.created",
            Self::ApiKeyRevoked => "api_key.revoked",
            Self::SigningKeyRotated => "signing_key.rotated",
            Self::TopicCreated => "topic.created",
            Self::TopicUpdated => "topic.updated",
            Self::TopicDeleted => "topic.deleted",
            Self::GrantCreated => "grant.created",
            Self::GrantDeleted => "grant.deleted",
            Self::SubscriptionCreated => "subscription.created",
            Self::SubscriptionUpdated => "subscription.updated",
            Self::SubscriptionDeleted => "subscription.deleted",
            Self::SubscriptionSecretRotated => "subscription.secret_rotated",
            Self::DeadLettersReplayed => "dead_letters.replayed",
            Self::DeadLettersPurged => "dead_letters.purged",
            Self::EventsReplayed => "events.replayed",
        }
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|a| a.as_str()).collect();
                format!("`{s}` is not an audited action ({})", known.join(", "))
            })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of thing an entry is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetType {
    /// A partner; its id.
    Partner,
    /// An API key; its id.
    ApiKey,
    /// A token signing key; its `kid`.
    SigningKey,
    /// A topic; its id.
    Topic,
    /// A grant; the id is the topic's, the grantee is in `changes.partner_id`.
    Grant,
    /// A subscription; its id (also for its dead letters and replays).
    Subscription,
}

impl TargetType {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Partner => "partner",
            Self::ApiKey => "api_key",
            Self::SigningKey => "signing_key",
            Self::Topic => "topic",
            Self::Grant => "grant",
            Self::Subscription => "subscription",
        }
    }
}

/// A target id as a filter: 1–128 characters of `[A-Za-z0-9_-]` (UUIDs and `kid`s).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(try_from = "String")]
#[schema(value_type = String)]
pub struct TargetId(String);

impl TargetId {
    /// Parses a target id given by a client.
    pub fn parse(text: &str) -> Result<Self, String> {
        let ok = (1..=128).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err("a target id is a UUID or a signing key's kid (1–128 characters of A-Z, a-z, 0-9, - and _)".into())
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TargetId {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

crate::domain::stored_enum! {
    /// The role an actor acted in (`audit_log.actor_role`): a principal's, or `system` for
    /// anika itself.
    ActorRole, "actor role", {
        /// An operator (also the command line).
        Operator => "operator",
        /// A partner's admin.
        Admin => "admin",
        /// A partner's publisher.
        Publisher => "publisher",
        /// anika on its own, e.g. the dispatcher disabling an endpoint that keeps failing.
        System => "system",
    }
}

impl From<Role> for ActorRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Operator => Self::Operator,
            Role::Admin => Self::Admin,
            Role::Publisher => Self::Publisher,
        }
    }
}

/// Who acted: the principal of a verified token, the operator's command line, or anika itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Actor {
    /// The API key of the token; `null` for the command line (`anika …` on the
    /// operator's machine) and for anika itself.
    api_key_id: Option<ApiKeyId>,
    /// The principal's partner; `null` for operators and anika itself.
    partner_id: Option<PartnerId>,
    /// `operator`, `admin`, `publisher`, or `system` for anika itself.
    role: ActorRole,
}

impl Actor {
    /// The command line: it reads PostgreSQL directly with the operator's own
    /// credentials, so it acts as an operator without an API key.
    pub fn cli() -> Self {
        Self {
            api_key_id: None,
            partner_id: None,
            role: ActorRole::Operator,
        }
    }

    /// anika itself, acting on no one's request (the dispatcher disabling a failing endpoint).
    pub fn system() -> Self {
        Self {
            api_key_id: None,
            partner_id: None,
            role: ActorRole::System,
        }
    }

    /// The API key behind the action, if any.
    pub fn api_key_id(&self) -> Option<ApiKeyId> {
        self.api_key_id
    }

    /// The actor's partner, if any.
    pub fn partner_id(&self) -> Option<PartnerId> {
        self.partner_id
    }

    /// The actor's role.
    pub fn role(&self) -> ActorRole {
        self.role
    }
}

impl From<&Principal> for Actor {
    fn from(principal: &Principal) -> Self {
        Self {
            api_key_id: Some(principal.key_id()),
            partner_id: principal.partner(),
            role: principal.role().into(),
        }
    }
}

/// What an entry is about, and whose it is (for partner admins' visibility).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    kind: TargetType,
    id: String,
    partner: Option<PartnerId>,
}

impl Target {
    /// A partner (its own admins see the entry).
    pub fn partner(id: PartnerId) -> Self {
        Self::new(TargetType::Partner, id.to_string(), Some(id))
    }

    /// An API key of `partner` (`None`: an operator key, seen by operators only).
    pub fn api_key(id: ApiKeyId, partner: Option<PartnerId>) -> Self {
        Self::new(TargetType::ApiKey, id.to_string(), partner)
    }

    /// A token signing key, platform-wide.
    pub fn signing_key(kid: &str) -> Self {
        Self::new(TargetType::SigningKey, kid.to_owned(), None)
    }

    /// A topic of `owner`.
    pub fn topic(id: TopicId, owner: PartnerId) -> Self {
        Self::new(TargetType::Topic, id.to_string(), Some(owner))
    }

    /// The grants of `owner`'s topic `id` (the grantee goes into the changes).
    pub fn grant(topic: TopicId, owner: PartnerId) -> Self {
        Self::new(TargetType::Grant, topic.to_string(), Some(owner))
    }

    /// A subscription of `partner`.
    pub fn subscription(id: SubscriptionId, partner: PartnerId) -> Self {
        Self::new(TargetType::Subscription, id.to_string(), Some(partner))
    }

    fn new(kind: TargetType, id: String, partner: Option<PartnerId>) -> Self {
        Self { kind, id, partner }
    }
}

/// Field names whose values are secrets: never recorded, whoever asks.
const SECRET_FIELDS: [&str; 7] = [
    "secret",
    "previous_secret",
    "api_key",
    "key_hash",
    "private_key",
    "refresh_token",
    "token",
];

/// The changed fields of an entry: `{"field": {"old": …, "new": …}}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes(Map<String, Value>);

impl Changes {
    /// No changes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `field` if `old` and `new` differ (as JSON).
    pub fn diff<T: Serialize + ?Sized>(mut self, field: &str, old: &T, new: &T) -> Self {
        let (old, new) = (to_json(old), to_json(new));
        if old != new {
            self.put(field, old, new);
        }
        self
    }

    /// Records a field of something created: old `null`; nothing if `new` is `null` too.
    pub fn created<T: Serialize + ?Sized>(self, field: &str, new: &T) -> Self {
        self.diff(field, &Value::Null, &to_json(new))
    }

    /// Records a field of something removed: new `null`; nothing if `old` is `null` too.
    pub fn removed<T: Serialize + ?Sized>(self, field: &str, old: &T) -> Self {
        self.diff(field, &to_json(old), &Value::Null)
    }

    /// Records every top-level field of two snapshots (structs serialising to objects)
    /// that differs; `old: None` for something just created.
    pub fn between<T: Serialize>(mut self, old: Option<&T>, new: &T) -> Self {
        let old = old.map(to_json).unwrap_or(Value::Null);
        if let Value::Object(new) = to_json(new) {
            for (field, value) in &new {
                let before = old.get(field).unwrap_or(&Value::Null);
                self = self.diff(field, before, value);
            }
        }
        self
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The JSON stored.
    pub fn into_json(self) -> Value {
        Value::Object(self.0)
    }

    fn put(&mut self, field: &str, old: Value, new: Value) {
        if SECRET_FIELDS.contains(&field) {
            // A caller's mistake must not put a secret into a table many people read.
            tracing::error!(
                field,
                "refused to record a secret field in the audit log; fix the caller"
            );
            return;
        }
        let mut change = Map::new();
        change.insert("old".into(), old);
        change.insert("new".into(), new);
        self.0.insert(field.to_owned(), Value::Object(change));
    }
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A URL as recorded: `user:password@` becomes `***@`; webhook URLs may carry credentials.
pub fn url_without_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let hidden = parsed.set_password(None).is_ok() && parsed.set_username("***").is_ok();
            if hidden {
                parsed.to_string()
            } else {
                "<url with credentials>".to_owned()
            }
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// Writes one entry inside the caller's transaction (`conn`), so it commits or
/// rolls back with the change it records.
pub async fn record(
    conn: &mut PgConnection,
    actor: &Actor,
    action: Action,
    target: &Target,
    changes: Changes,
) -> Result<(), sqlx::Error> {
    let id = Uuid::now_v7();
    // `at` is the id's own millisecond, as for events: the two orders agree.
    let at = id
        .get_timestamp()
        .map(|ts| ts.to_unix())
        .and_then(|(secs, nanos)| DateTime::from_timestamp(secs as i64, nanos))
        .unwrap_or_else(Utc::now);
    store::insert_audit_entry(
        conn,
        store::NewAuditEntry {
            id,
            at,
            actor_api_key_id: actor.api_key_id.map(ApiKeyId::uuid),
            actor_partner_id: actor.partner_id.map(PartnerId::uuid),
            actor_role: actor.role.as_str(),
            action: action.as_str(),
            target_type: target.kind.as_str(),
            target_id: &target.id,
            target_partner_id: target.partner.map(PartnerId::uuid),
            changes: changes.into_json(),
        },
    )
    .await
}

/// [`record`] in a transaction of its own: for replays and purges, whose entry is
/// the record of a result that is already in RabbitMQ.
pub async fn record_result(
    pool: &PgPool,
    actor: &Actor,
    action: Action,
    target: &Target,
    changes: Changes,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    record(&mut tx, actor, action, target, changes).await?;
    tx.commit().await
}

/// Which entries a reader may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Operators: every entry.
    Everything,
    /// A partner's admins: entries about that partner's resources.
    Partner(PartnerId),
}

impl Visibility {
    /// Decides what a principal of `role` (of `partner`) may read; publishers nothing.
    pub fn decide(role: Role, partner: Option<PartnerId>) -> Result<Self, Problem> {
        match (role, partner) {
            (Role::Operator, _) => Ok(Self::Everything),
            (Role::Admin, Some(partner)) => Ok(Self::Partner(partner)),
            (Role::Admin, None) | (Role::Publisher, _) => Err(Problem::forbidden(
                "the audit log is for admins (their partner's entries) and operators",
            )),
        }
    }

    fn partner(self) -> Option<PartnerId> {
        match self {
            Self::Everything => None,
            Self::Partner(p) => Some(p),
        }
    }
}

/// What to list, besides who may see it.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this action.
    pub action: Option<Action>,
    /// Only targets of this type.
    pub target_type: Option<TargetType>,
    /// Only this target.
    pub target_id: Option<TargetId>,
    /// At or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Before this time.
    pub until: Option<DateTime<Utc>>,
}

/// The target of an entry as shown.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TargetOut {
    /// `partner`, `api_key`, `signing_key`, `topic`, `grant` or `subscription`.
    #[serde(rename = "type")]
    #[schema(value_type = TargetType)]
    pub kind: String,
    /// Its id (a grant's is its topic's; a signing key's its `kid`).
    pub id: String,
}

/// One audit-log entry.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Entry {
    /// UUIDv7.
    pub id: Uuid,
    /// When the change committed (to the millisecond).
    pub at: DateTime<Utc>,
    /// Who did it.
    pub actor: Actor,
    /// `<resource>.<verb>`.
    #[schema(value_type = Action)]
    pub action: String,
    /// What it was done to.
    pub target: TargetOut,
    /// `{"field": {"old": …, "new": …}}`; never a secret.
    #[schema(value_type = Object)]
    pub changes: Value,
}

impl From<store::AuditRow> for Entry {
    fn from(row: store::AuditRow) -> Self {
        Entry {
            id: row.id,
            at: row.at,
            actor: Actor {
                api_key_id: row.actor_api_key_id.map(ApiKeyId::from),
                partner_id: row.actor_partner_id.map(PartnerId::from),
                role: row.actor_role,
            },
            action: row.action,
            target: TargetOut {
                kind: row.target_type,
                id: row.target_id,
            },
            changes: row.changes.0,
        }
    }
}

/// Up to `fetch` entries visible under `visibility` that pass `filter`, newest
/// first, strictly older than `before` (a cursor's `(at, id)`).
pub async fn list(
    pool: &PgPool,
    visibility: Visibility,
    filter: &Filter,
    before: Option<(DateTime<Utc>, Uuid)>,
    fetch: i64,
) -> Result<Vec<Entry>, sqlx::Error> {
    let rows = store::list_audit_entries(
        pool,
        store::AuditQuery {
            target_partner_id: visibility.partner().map(PartnerId::uuid),
            action: filter.action.map(Action::as_str),
            target_type: filter.target_type.map(TargetType::as_str),
            target_id: filter.target_id.as_ref().map(TargetId::as_str),
            since: filter.since,
            until: filter.until,
            before,
            limit: fetch,
        },
    )
    .await?;
    Ok(rows.into_iter().map(Entry::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_reads_back_from_its_name_and_serialises_as_it() {
        for action in Action::ALL {
            assert_eq!(action.as_str().parse::<Action>().unwrap(), action);
            assert_eq!(
                serde_json::to_value(action).unwrap(),
                Value::String(action.as_str().into())
            );
        }
        let err = "grant.given".parse::<Action>().unwrap_err();
        assert!(err.contains("grant.created"), "{err}");
    }

    #[test]
    fn changes_name_only_what_differs() {
        let changes = Changes::new()
            .diff("name", "a", "b")
            .diff("description", &None::<String>, &None)
            .diff("rate", &Some(5), &None)
            .created("url", "https://x.example/")
            .created("filter", &None::<Value>)
            .into_json();
        assert_eq!(
            changes,
            serde_json::json!({
                "name": {"old": "a", "new": "b"},
                "rate": {"old": 5, "new": null},
                "url": {"old": null, "new": "https://x.example/"},
            })
        );
    }

    #[test]
    fn snapshots_are_compared_field_by_field() {
        #[derive(Serialize)]
        struct Snap {
            url: &'static str,
            max: Option<u32>,
        }
        let old = Snap {
            url: "a",
            max: None,
        };
        let new = Snap {
            url: "a",
            max: Some(3),
        };
        assert_eq!(
            Changes::new().between(Some(&old), &new).into_json(),
            serde_json::json!({"max": {"old": null, "new": 3}})
        );
        assert_eq!(
            Changes::new().between(None, &new).into_json(),
            serde_json::json!({"url": {"old": null, "new": "a"}, "max": {"old": null, "new": 3}})
        );
    }

    #[test]
    fn a_secret_field_is_never_recorded() {
        let changes = Changes::new()
            .diff("secret", "whsec_old", "whsec_new")
            .created("api_key", "anika_x")
            .removed("private_key", "pk");
        assert!(changes.is_empty());
    }

    #[test]
    fn credentials_in_a_url_are_hidden() {
        assert_eq!(
            url_without_credentials("https://bank:hunter2@hooks.example/in?x=1"),
            "https://***@hooks.example/in?x=1"
        );
        assert_eq!(
            url_without_credentials("https://hooks.example/in"),
            "https://hooks.example/in"
        );
    }

    #[test]
    fn operators_see_everything_admins_their_partner_publishers_nothing() {
        let partner = PartnerId::new();
        assert_eq!(
            Visibility::decide(Role::Operator, None).unwrap(),
            Visibility::Everything
        );
        assert_eq!(
            Visibility::decide(Role::Admin, Some(partner)).unwrap(),
            Visibility::Partner(partner)
        );
        assert_eq!(
            Visibility::decide(Role::Publisher, Some(partner))
                .unwrap_err()
                .status,
            403
        );
    }

    #[test]
    fn target_ids_are_uuids_or_kids() {
        assert!(TargetId::parse(&Uuid::now_v7().to_string()).is_ok());
        assert!(TargetId::parse("Abc_-9").is_ok());
        for bad in ["", "a b", "x'; --", &"a".repeat(129)] {
            assert!(TargetId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
