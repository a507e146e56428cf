//! One form for user identifiers: every stored identifier is rewritten to
//! [`entity::user::normalize_identifier`] (trimmed, lower-cased, NFC), and on MySQL/MariaDB the
//! column compares byte for byte (`utf8mb4_bin`, unique index kept), so no collation folds two
//! distinct identifiers into one or tells two spellings of one apart.
//!
//! Two existing users whose identifiers normalize alike are not merged: the migration fails and
//! names them, and an operator decides which account keeps the identifier.

use entity::user::normalize_identifier;
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};
use std::collections::HashMap;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum User {
    Table,
    Id,
    Identifier,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if manager.get_database_backend() == DatabaseBackend::MySql {
            // MODIFY keeps the column's unique index; it is rebuilt under the new collation.
            db.execute_unprepared(
                "ALTER TABLE `user` MODIFY `identifier` VARCHAR(255) \
                 CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL",
            )
            .await?;
        }
        let rows = db
            .query_all(
                &Query::select()
                    .columns([User::Id, User::Identifier])
                    .from(User::Table)
                    .order_by(User::Id, Order::Asc)
                    .to_owned(),
            )
            .await?;
        let mut by_normal: HashMap<String, (i64, String)> = HashMap::with_capacity(rows.len());
        let mut changes = vec![];
        for row in rows {
            let id: i64 = row.try_get("", "id")?;
            let stored: String = row.try_get("", "identifier")?;
            let normal = normalize_identifier(&stored);
            if let Some((other_id, other)) = by_normal.get(&normal) {
                return Err(DbErr::Migration(format!(
                    "users {other_id} ('{other}') and {id} ('{stored}') both have the identifier \
                     '{normal}' once identifiers are trimmed, lower-cased and NFC-normalized; \
                     rename or delete one of them, then migrate again"
                )));
            }
            if normal != stored {
                changes.push((id, normal.clone()));
            }
            by_normal.insert(normal, (id, stored));
        }
        // No update can collide with another row: the normal form is idempotent, so a row
        // already holding some other row's normal form would have been reported above.
        for (id, normal) in changes {
            db.execute(
                &Query::update()
                    .table(User::Table)
                    .value(User::Identifier, normal)
                    .and_where(Expr::col(User::Id).eq(id))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    /// Restores the table's default collation on MySQL/MariaDB; identifiers stay normalized
    /// (their original spelling is not kept).
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::MySql {
            manager
                .get_connection()
                .execute_unprepared("ALTER TABLE `user` MODIFY `identifier` VARCHAR(255) NOT NULL")
                .await?;
        }
        Ok(())
    }
}
