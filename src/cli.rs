//! The non-server subcommands: migrate, reproject, tenant and key management, erasure, import. Errors
//! keep their cause chain (printed by `main`).

use std::time::Instant;

use anyhow::Context;

use crate::{
    app::{
        admin::AdminService,
        alerts::{AlertConfig, AlertService},
        whatsapp::{SourceRequest, WhatsAppService},
    },
    config::{DatabaseArgs, ImportArgs, TenantCommand},
    domain::tenant::{Scope, TenantId},
    store,
};

async fn migrated_pool(database: &DatabaseArgs) -> anyhow::Result<sqlx::PgPool> {
    let pool = store::lazy_pool(&database.database_url, 2)?;
    store::migrate(&pool).await.context("cannot migrate")?;
    Ok(pool)
}

/// `chatkpi migrate`.
pub async fn migrate(database: &DatabaseArgs) -> anyhow::Result<()> {
    migrated_pool(database).await?;
    println!("migrations applied");
    Ok(())
}

/// `chatkpi import`: fails (non-zero exit) when the import could not finish; rejected lines are
/// not a failure (they are in the rejects file and the summary).
pub async fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let plan = crate::import::ImportPlan {
        input: args.input.clone(),
        server: args.server.clone(),
        api_key: args.api_key.clone(),
        batch: args.batch as usize,
        streams: args.streams as usize,
        checkpoint: args.checkpoint.clone(),
        rejects: args.rejects.clone(),
        progress: crate::import::Progress::detect(),
    };
    crate::import::run(&plan).await?;
    Ok(())
}

/// `chatkpi reproject`.
pub async fn reproject(database: &DatabaseArgs, tenant: Option<i64>) -> anyhow::Result<()> {
    let pool = migrated_pool(database).await?;
    let tenants = match tenant {
        Some(t) => vec![TenantId(t)],
        None => store::events::tenants(&pool).await?,
    };
    for t in tenants {
        let started = Instant::now();
        let n = store::events::reproject(&pool, t, 2000)
            .await
            .with_context(|| format!("cannot reproject tenant {t}"))?;
        println!(
            "tenant {t}: {n} conversations recomputed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `chatkpi tenant ...`: prints `key=value` lines (easy to parse).
pub async fn tenant(command: &TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create { database, name } => {
            let pool = migrated_pool(database).await?;
            let (tenant, key) = store::tenants::create_tenant(&pool, name).await?;
            println!("tenant_id={tenant}");
            println!("api_key={}", key.plaintext);
        }
        TenantCommand::AddKey {
            database,
            tenant,
            scopes,
            label,
        } => {
            let pool = migrated_pool(database).await?;
            let scopes = if scopes.is_empty() {
                Scope::ALL.to_vec()
            } else {
                scopes.clone()
            };
            let key = store::tenants::create_key(&pool, TenantId(*tenant), &scopes, label).await?;
            println!("tenant_id={tenant}");
            println!("key_id={}", crate::domain::tenant::key_id(&key.hash));
            println!(
                "scopes={}",
                scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
            );
            println!("api_key={}", key.plaintext);
        }
        TenantCommand::ListKeys { database, tenant } => {
            let pool = migrated_pool(database).await?;
            println!("key_id\tscopes\tcreated_at\trevoked_at\tlabel");
            for k in store::tenants::list_keys(&pool, TenantId(*tenant)).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    k.key_id,
                    k.scopes.join(","),
                    k.created_at.to_rfc3339(),
                    k.revoked_at.map_or("-".to_owned(), |t| t.to_rfc3339()),
                    k.label
                );
            }
        }
        TenantCommand::RevokeKey {
            database,
            tenant,
            key_id,
        } => {
            let pool = migrated_pool(database).await?;
            store::tenants::revoke_key(&pool, TenantId(*tenant), key_id).await?;
            println!("revoked key_id={key_id} (servers refuse it within 5 s)");
        }
        TenantCommand::EraseCustomer {
            database,
            tenant,
            customer,
        } => {
            let pool = migrated_pool(database).await?;
            let erased = AdminService::new(pool)
                .erase_customer(TenantId(*tenant), customer)
                .await?;
            println!("conversations={}", erased.conversations);
            println!("events={}", erased.events);
            println!("conversions={}", erased.conversions);
        }
        TenantCommand::AddWhatsapp {
            database,
            tenant,
            name,
            app_secret,
            inbox,
            verify_token,
            inactivity_seconds,
        } => {
            let pool = migrated_pool(database).await?;
            let created = WhatsAppService::new(pool)
                .create_source(
                    TenantId(*tenant),
                    &SourceRequest {
                        name: name.clone(),
                        inbox: inbox.clone(),
                        app_secret: app_secret.clone(),
                        verify_token: verify_token.clone(),
                        inactivity_seconds: *inactivity_seconds,
                    },
                )
                .await?;
            println!("source_id={}", created.source_id);
            println!("path=/v1/whatsapp/{tenant}/{}", created.source_id);
            println!("verify_token={}", created.verify_token);
        }
        TenantCommand::AddAlert {
            database,
            tenant,
            rule,
            alert_allow_local_destinations,
        } => {
            let rule: crate::grpc::pb::AlertRule =
                serde_json::from_str(rule).context("--rule is not a chatkpi.v1.AlertRule in proto3 JSON")?;
            let spec = crate::grpc::convert::alerts::rule_from_proto(Some(&rule))?;
            let pool = migrated_pool(database).await?;
            let config = AlertConfig {
                allow_local: *alert_allow_local_destinations,
                ..AlertConfig::default()
            };
            let (rule_id, secret) = AlertService::new(pool, config)
                .create_rule(TenantId(*tenant), &spec, "")
                .await
                .map_err(crate::grpc::convert::alerts::in_rule)?;
            println!("rule_id={rule_id}");
            println!("signing_secret={secret}");
        }
        TenantCommand::ListAlerts { database, tenant } => {
            let pool = migrated_pool(database).await?;
            for r in AlertService::new(pool, AlertConfig::default())
                .rules(TenantId(*tenant))
                .await?
            {
                println!(
                    "{}",
                    serde_json::to_string(&crate::grpc::convert::alerts::rule_to_proto(&r))?
                );
            }
        }
        TenantCommand::RemoveAlert {
            database,
            tenant,
            rule_id,
        } => {
            let pool = migrated_pool(database).await?;
            AlertService::new(pool, AlertConfig::default())
                .delete_rule(TenantId(*tenant), *rule_id)
                .await?;
            println!("removed rule_id={rule_id}");
        }
        TenantCommand::ListWhatsapp { database, tenant } => {
            let pool = migrated_pool(database).await?;
            println!("source_id\tname\tinbox\tinactivity_seconds\tcreated_at");
            for s in WhatsAppService::new(pool).list_sources(TenantId(*tenant)).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    s.source_id,
                    s.name,
                    s.inbox,
                    s.inactivity_seconds,
                    s.created_at.to_rfc3339()
                );
            }
        }
        TenantCommand::RemoveWhatsapp {
            database,
            tenant,
            source_id,
        } => {
            let pool = migrated_pool(database).await?;
            WhatsAppService::new(pool)
                .delete_source(TenantId(*tenant), source_id)
                .await?;
            println!("removed source_id={source_id}");
        }
    }
    Ok(())
}
