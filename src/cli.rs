//! The non-server subcommands: migrate, reproject and tenant management.

use std::time::Instant;

use crate::{
    config::{DatabaseArgs, TenantCommand},
    store,
};

async fn migrated_pool(database: &DatabaseArgs) -> anyhow::Result<sqlx::PgPool> {
    let pool = store::lazy_pool(&database.database_url, 2).map_err(|e| anyhow::anyhow!("{e}"))?;
    store::migrate(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("cannot migrate: {e}"))?;
    Ok(pool)
}

/// `chatkpi migrate`.
pub async fn migrate(database: &DatabaseArgs) -> anyhow::Result<()> {
    migrated_pool(database).await?;
    println!("migrations applied");
    Ok(())
}

/// `chatkpi reproject`.
pub async fn reproject(database: &DatabaseArgs, tenant: Option<i64>) -> anyhow::Result<()> {
    let pool = migrated_pool(database).await?;
    let tenants = match tenant {
        Some(t) => vec![t],
        None => store::events::tenants(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    for t in tenants {
        let started = Instant::now();
        let n = store::events::reproject(&pool, t, 2000)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "tenant {t}: {n} conversations recomputed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `chatkpi tenant ...`: prints `tenant_id=<id>` and `api_key=<key>` lines (easy to parse).
pub async fn tenant(command: &TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create { database, name } => {
            let pool = migrated_pool(database).await?;
            let (tenant, key) = store::tenants::create_tenant(&pool, name)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("tenant_id={tenant}");
            println!("api_key={}", key.plaintext);
        }
        TenantCommand::AddKey { database, tenant } => {
            let pool = migrated_pool(database).await?;
            let key = store::tenants::create_key(&pool, *tenant)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("tenant_id={tenant}");
            println!("api_key={}", key.plaintext);
        }
    }
    Ok(())
}
