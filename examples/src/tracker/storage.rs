//! Each tracker service's own storage: one PostgreSQL schema per service.
//!
//! A service's connections have `search_path` set to its schema, so its SQL names
//! only its own tables and cannot reach another service's: the schemas share a
//! database server, not data. Every consumer keeps the ids of the events it applied in
//! its `processed` table, in the same transaction as the effect, which is what makes a
//! redelivered or replayed event harmless.

use std::str::FromStr;

use sqlx::{
    Connection, PgConnection, PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::Error;

/// The table every consumer's idempotency rests on.
const PROCESSED: &str =
    "CREATE TABLE processed (event_id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())";

/// One service's schema.
#[derive(Clone, Debug)]
pub struct Storage {
    pool: PgPool,
    schema: &'static str,
    tables: &'static [&'static str],
}

impl Storage {
    /// Connects to `database_url` (creating the database if it is missing) with
    /// `schema` as the only schema in sight; `tables` is the schema's DDL.
    pub async fn connect(
        database_url: &str,
        schema: &'static str,
        tables: &'static [&'static str],
    ) -> Result<Self, Error> {
        let options = PgConnectOptions::from_str(database_url)?;
        create_database_if_missing(&options).await?;
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .connect_with(options.options([("search_path", schema)]))
            .await?;
        Ok(Self {
            pool,
            schema,
            tables,
        })
    }

    /// Drops everything the service stored and creates its empty tables: a fresh start,
    /// or the disk loss of the recovery demonstration.
    pub async fn wipe(&self) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        let create = format!("CREATE SCHEMA \"{}\"", self.schema);
        // The schema names are constants of this crate, never input.
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut *tx)
            .await?;
        sqlx::query(PROCESSED).execute(&mut *tx).await?;
        for table in self.tables {
            sqlx::query(*table).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The pool, for reads.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a transaction.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, Error> {
        Ok(self.pool.begin().await?)
    }

    /// Closes the connections (the service stops).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Records `event_id` as processed in `tx`; `false` if it was processed before, in which
/// case the caller applies nothing.
pub async fn first_time(
    tx: &mut Transaction<'static, Postgres>,
    event_id: &str,
) -> Result<bool, Error> {
    let inserted =
        sqlx::query("INSERT INTO processed (event_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(event_id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    Ok(inserted == 1)
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), Error> {
    match PgConnection::connect_with(options).await {
        Ok(connection) => {
            connection.close().await?;
            Ok(())
        }
        // 3D000: invalid_catalog_name, the database does not exist yet.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
            let name = options
                .get_database()
                .unwrap_or("anika_popug")
                .replace('"', "\"\"");
            let mut admin =
                PgConnection::connect_with(&options.clone().database("postgres")).await?;
            let create = format!("CREATE DATABASE \"{name}\"");
            match sqlx::query(sqlx::AssertSqlSafe(create))
                .execute(&mut admin)
                .await
            {
                Ok(_) => {}
                // 42P04: duplicate_database, another run created it meanwhile.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(e.into()),
            }
            admin.close().await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
