//! Session data: the application's own JSON object per session (`data`, NULL when empty) and
//! its version (`data_version`), which every update increments and compares, so concurrent
//! updates never overwrite each other.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Session {
    Table,
    Data,
    DataVersion,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut data = ColumnDef::new(Session::Data);
        // MySQL's TEXT stops at 64 KiB; the limit is a setting, so leave room.
        if manager.get_database_backend() == DatabaseBackend::MySql {
            data.custom(Alias::new("MEDIUMTEXT"));
        } else {
            data.text();
        }
        data.null();
        manager
            .alter_table(
                Table::alter()
                    .table(Session::Table)
                    .add_column(data)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Session::Table)
                    .add_column(
                        ColumnDef::new(Session::DataVersion)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Session::Data, Session::DataVersion] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Session::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
