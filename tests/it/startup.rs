//! Start-up: instances starting at once on one new database all come up, and share one default
//! channel, one `SUPER_ADMIN` role and one superadmin holding it.

use crate::helpers::{Variant, ADMIN};
use crate::throttle::{config_for, OldDatabase};
use entity::{channel, role, role_channel, user, user_role};
use futures_util::future::join_all;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ColumnTrait, Database, EntityTrait, PaginatorTrait, QueryFilter};
use session_server::startup::Application;

/// Instances started together.
const INSTANCES: usize = 4;

async fn instances_starting_at_once_all_bootstrap(v: Variant) {
    let Some(fresh) = OldDatabase::create(v).await else {
        return;
    };
    // Migrated first, so what the instances race is the bootstrap (the migrator has no lock).
    let db = Database::connect(&fresh.url).await.expect("connect");
    Migrator::up(&db, None).await.expect("migrations");

    let started =
        join_all((0..INSTANCES).map(|_| Application::build(config_for(&fresh.url)))).await;
    let apps: Vec<Application> = started
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("instance {i} did not start: {e}")))
        .collect();

    let defaults = channel::Entity::find()
        .filter(channel::Column::Code.eq("default"))
        .all(&db)
        .await
        .unwrap();
    assert_eq!(defaults.len(), 1, "default channels: {defaults:?}");
    let roles = role::Entity::find()
        .filter(role::Column::Code.eq("SUPER_ADMIN"))
        .all(&db)
        .await
        .unwrap();
    assert_eq!(roles.len(), 1, "SUPER_ADMIN roles: {roles:?}");
    let admins = user::Entity::find()
        .filter(user::Column::Identifier.eq(ADMIN))
        .all(&db)
        .await
        .unwrap();
    assert_eq!(admins.len(), 1, "superadmins: {admins:?}");
    let held = user_role::Entity::find()
        .filter(user_role::Column::UserId.eq(admins[0].id))
        .filter(user_role::Column::RoleId.eq(roles[0].id))
        .count(&db)
        .await
        .unwrap();
    assert_eq!(held, 1, "the superadmin holds SUPER_ADMIN once");
    let linked = role_channel::Entity::find()
        .filter(role_channel::Column::RoleId.eq(roles[0].id))
        .filter(role_channel::Column::ChannelId.eq(defaults[0].id))
        .count(&db)
        .await
        .unwrap();
    assert_eq!(linked, 1, "SUPER_ADMIN covers the default channel");

    drop(apps);
    drop(db);
    fresh.drop_database().await;
}

mod instances_starting_at_once_all_bootstrap {
    use crate::helpers::Variant;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::instances_starting_at_once_all_bootstrap(Variant::SqliteMemory).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::instances_starting_at_once_all_bootstrap(Variant::PostgresMemory).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        super::instances_starting_at_once_all_bootstrap(Variant::MysqlMemory).await
    }
}
