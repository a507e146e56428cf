//! Channel codes and tokens and role codes compare byte for byte on MySQL/MariaDB too
//! (`utf8mb4_bin`, unique indexes kept), as they do on SQLite and PostgreSQL. With the default
//! collation MariaDB refused a channel `Shop-B` next to `shop-b`, and a lookup of `shop-b` found
//! `Shop-B`, which the other backends do not. (Order codes are left alone: the server makes them
//! in upper case and never looks one up; changing them would rewrite the largest table.)
//!
//! No row stored by the server can conflict: a case-insensitive unique index already kept every
//! value distinct, and byte-wise equality is stricter except for trailing spaces, which
//! `utf8mb4_bin` ignores (as MariaDB's default collations do, so nothing changes there). On
//! MySQL 8, whose default `utf8mb4_0900_ai_ci` does not ignore them, two values differing only
//! in trailing spaces would stop the migration with a duplicate-key error rather than be merged;
//! the server never stores such values (codes and tokens are trimmed on the way in), so only rows
//! written by hand can.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Table, column and length of every column changed here.
const COLUMNS: [(&str, &str, u32); 3] = [
    ("channel", "code", 255),
    ("channel", "token", 255),
    ("role", "code", 255),
];

async fn set_collation(manager: &SchemaManager<'_>, collation: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() != DatabaseBackend::MySql {
        return Ok(());
    }
    for (table, column, len) in COLUMNS {
        // MODIFY keeps the column's unique index; it is rebuilt under the new collation.
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "ALTER TABLE `{table}` MODIFY `{column}` VARCHAR({len}) {collation} NOT NULL"
            ))
            .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        set_collation(manager, "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin").await
    }

    /// Back to the tables' default character set and collation (which fails if two values now
    /// differ only in case, as it should: the old index cannot hold them; and on a table whose
    /// default character set is not utf8mb4, characters it cannot hold fail in strict mode).
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        set_collation(manager, "").await
    }
}
