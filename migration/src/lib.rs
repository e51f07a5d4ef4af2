//! Schema migrations of flashsale: the only way the schema changes.

pub use sea_orm_migration::prelude::*;

mod m20261121_000001_checkout;
mod m20261129_000002_sales;
mod m20261130_000003_letting_go;

/// Every migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_checkout::Migration),
            Box::new(m20261129_000002_sales::Migration),
            Box::new(m20261130_000003_letting_go::Migration),
        ]
    }
}
