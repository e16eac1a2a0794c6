//! Setting an example up from an operator key: partners with their own keys, topics,
//! grants and subscriptions, through the public API only.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    Error, Target,
    client::Client,
    receiver::{Handler, Receiver},
};

/// The operator, who creates the partners and their API keys.
pub struct Operator {
    http: reqwest::Client,
    target: Target,
    client: Client,
}

impl Operator {
    /// Signs in to `target` as its operator.
    pub fn new(target: &Target) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| crate::ApiError::Transport {
                method: reqwest::Method::GET,
                path: "/".into(),
                source,
            })?;
        let client = Client::new(http.clone(), &target.url, &target.operator_key);
        Ok(Self {
            http,
            target: target.clone(),
            client,
        })
    }

    /// Creates partner `name` with an admin key and a publisher key of its own.
    pub async fn partner(&self, name: &str) -> Result<Partner, Error> {
        let partner = self
            .client
            .post("/v1/partners", json!({ "name": name }))
            .await?;
        let id = partner["id"].as_str().unwrap_or_default().to_owned();
        let mut keys = Vec::new();
        for role in ["admin", "publisher"] {
            let key = self
                .client
                .post(
                    "/v1/api-keys",
                    json!({"role": role, "name": format!("{name} {role}"), "partner_id": id}),
                )
                .await?;
            keys.push(Client::new(
                self.http.clone(),
                &self.target.url,
                key["api_key"].as_str().unwrap_or_default(),
            ));
        }
        let publisher = keys.pop().expect("two keys");
        let admin = keys.pop().expect("two keys");
        Ok(Partner {
            id,
            name: name.to_owned(),
            admin,
            publisher,
        })
    }
}

/// A topic a partner owns.
#[derive(Clone, Debug)]
pub struct Topic {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
}

/// A subscription a partner made, with the id its replays name.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// Its id.
    pub id: String,
    /// The receiver path it delivers to.
    pub hook: String,
    /// Its signing secret, which the subscriber keeps with its configuration (not in the
    /// storage a crash may wipe).
    pub secret: String,
}

/// One partner: its id and a client for each of its two keys.
#[derive(Debug)]
pub struct Partner {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Signed in with its admin key: topics, grants, subscriptions.
    pub admin: Client,
    /// Signed in with its publisher key: events.
    pub publisher: Client,
}

impl Partner {
    /// Creates its topic `name`.
    pub async fn topic(&self, name: &str, description: &str) -> Result<Topic, Error> {
        let topic = self
            .admin
            .post(
                "/v1/topics",
                json!({"name": name, "description": description}),
            )
            .await?;
        Ok(Topic {
            id: topic["id"].as_str().unwrap_or_default().to_owned(),
            name: name.to_owned(),
        })
    }

    /// Grants `reader` read access to its `topic`.
    pub async fn grant(&self, topic: &Topic, reader: &Partner) -> Result<(), Error> {
        self.admin
            .put(&format!("/v1/topics/{}/grants/{}", topic.id, reader.id))
            .await?;
        Ok(())
    }

    /// Subscribes `receiver`'s path `hook` to `topic` and tells the receiver the secret.
    pub async fn subscribe<H: Handler>(
        &self,
        topic: &Topic,
        receiver: &Receiver<H>,
        hook: &str,
    ) -> Result<Subscription, Error> {
        let subscription = self
            .create_subscription(&topic.id, &receiver.url(hook))
            .await?;
        let secret = subscription["secret"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        receiver.register(hook, &secret)?;
        Ok(Subscription {
            id: subscription["id"].as_str().unwrap_or_default().to_owned(),
            hook: hook.to_owned(),
            secret,
        })
    }

    /// `POST /v1/subscriptions`, with a hint when anika refuses loopback targets.
    pub async fn create_subscription(&self, topic_id: &str, url: &str) -> Result<Value, Error> {
        match self
            .admin
            .post(
                "/v1/subscriptions",
                json!({"topic_id": topic_id, "url": url}),
            )
            .await
        {
            Err(error) if error.status() == Some(reqwest::StatusCode::UNPROCESSABLE_ENTITY) => {
                Err(Error::Usage(format!(
                    "{error}\nThe example's receivers listen on 127.0.0.1: start anika with \
                     ANIKA_ALLOWED_TARGET_NETS=127.0.0.0/8 (scripts/up sets it)."
                )))
            }
            other => Ok(other?),
        }
    }

    /// Points `subscription` at `receiver` (which came back on a new port) and registers
    /// its secret there.
    pub async fn move_subscription<H: Handler>(
        &self,
        subscription: &Subscription,
        receiver: &Receiver<H>,
    ) -> Result<(), Error> {
        self.admin
            .patch(
                &format!("/v1/subscriptions/{}", subscription.id),
                json!({ "url": receiver.url(&subscription.hook) }),
            )
            .await?;
        receiver.register(&subscription.hook, &subscription.secret)
    }

    /// Asks anika to deliver `subscription` every event of its topic since `since`
    /// (RFC 3339) again, from the log; returns how many were enqueued.
    pub async fn replay(&self, subscription: &Subscription, since: &str) -> Result<u64, Error> {
        let answer = self
            .admin
            .post(
                &format!("/v1/subscriptions/{}/replay", subscription.id),
                json!({ "since": since }),
            )
            .await?;
        Ok(answer["enqueued"].as_u64().unwrap_or_default())
    }

    /// How many delivery attempts to `subscription` failed (the first 1000 at most).
    pub async fn failed_attempts(&self, subscription: &Subscription) -> Result<usize, Error> {
        let attempts = self
            .admin
            .get(&format!(
                "/v1/subscriptions/{}/attempts?status=failed&limit=1000",
                subscription.id
            ))
            .await?;
        Ok(attempts["items"].as_array().map_or(0, Vec::len))
    }

    /// The names of the topics other partners let it read (its own are left out).
    pub async fn granted_topic_names(&self) -> Result<Vec<String>, Error> {
        let topics = self.admin.get("/v1/topics?limit=1000").await?;
        let mut names: Vec<String> = topics["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|topic| topic["owner_partner_id"].as_str() != Some(self.id.as_str()))
            .filter_map(|topic| topic["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }
}
