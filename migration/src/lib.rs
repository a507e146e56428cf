//! Database migrations of the session server, one file per migration, applied in order by
//! `session-server migrate` and on every `serve` start.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_tables;
mod m20261124_000002_session_refresh_token;
mod m20261201_000001_normalize_identifiers;
mod m20261202_000001_session_data;
mod m20261205_000001_jwt_key;
mod m20261210_000001_session_event;
mod m20261211_000001_webhook_outbox;
mod m20261212_000001_exact_codes;
mod m20261213_000001_session_revision;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_tables::Migration),
            Box::new(m20261124_000002_session_refresh_token::Migration),
            Box::new(m20261201_000001_normalize_identifiers::Migration),
            Box::new(m20261202_000001_session_data::Migration),
            Box::new(m20261205_000001_jwt_key::Migration),
            Box::new(m20261210_000001_session_event::Migration),
            Box::new(m20261211_000001_webhook_outbox::Migration),
            Box::new(m20261212_000001_exact_codes::Migration),
            Box::new(m20261213_000001_session_revision::Migration),
        ]
    }
}
