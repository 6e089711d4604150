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
    use TenantCommand as C;
    if let C::AddAlert { rule, .. } = command {
        // A malformed rule is refused before the database is touched.
        rule_spec(rule)?;
    }
    let pool = migrated_pool(command.database()).await?;
    match command {
        C::Create { name, .. } => {
            let (tenant, key) = store::tenants::create_tenant(&pool, name).await?;
            println!("tenant_id={tenant}");
            println!("api_key={}", key.plaintext);
        }
        C::AddKey {
            tenant,
            scopes,
            label,
            ..
        } => add_key(&pool, TenantId(*tenant), scopes, label).await?,
        C::ListKeys { tenant, .. } => list_keys(&pool, TenantId(*tenant)).await?,
        C::RevokeKey { tenant, key_id, .. } => {
            store::tenants::revoke_key(&pool, TenantId(*tenant), key_id).await?;
            println!("revoked key_id={key_id} (servers refuse it within 5 s)");
        }
        C::EraseCustomer { tenant, customer, .. } => {
            erase_customer(pool, TenantId(*tenant), customer).await?
        }
        C::AddWhatsapp {
            tenant,
            name,
            app_secret,
            inbox,
            verify_token,
            inactivity_seconds,
            ..
        } => {
            let request = SourceRequest {
                name: name.clone(),
                inbox: inbox.clone(),
                app_secret: app_secret.clone(),
                verify_token: verify_token.clone(),
                inactivity_seconds: *inactivity_seconds,
            };
            add_whatsapp(pool, TenantId(*tenant), &request).await?;
        }
        C::ListWhatsapp { tenant, .. } => list_whatsapp(pool, TenantId(*tenant)).await?,
        C::RemoveWhatsapp {
            tenant, source_id, ..
        } => {
            WhatsAppService::new(pool)
                .delete_source(TenantId(*tenant), source_id)
                .await?;
            println!("removed source_id={source_id}");
        }
        C::AddAlert {
            tenant,
            rule,
            alert_allow_local_destinations,
            ..
        } => {
            add_alert(
                pool,
                TenantId(*tenant),
                &rule_spec(rule)?,
                *alert_allow_local_destinations,
            )
            .await?
        }
        C::ListAlerts { tenant, .. } => list_alerts(pool, TenantId(*tenant)).await?,
        C::RemoveAlert { tenant, rule_id, .. } => {
            AlertService::new(pool, AlertConfig::default())
                .delete_rule(TenantId(*tenant), *rule_id)
                .await?;
            println!("removed rule_id={rule_id}");
        }
    }
    Ok(())
}

async fn erase_customer(pool: sqlx::PgPool, tenant: TenantId, customer: &str) -> anyhow::Result<()> {
    let erased = AdminService::new(pool).erase_customer(tenant, customer).await?;
    println!("conversations={}", erased.conversations);
    println!("events={}", erased.events);
    println!("conversions={}", erased.conversions);
    Ok(())
}

async fn add_key(pool: &sqlx::PgPool, tenant: TenantId, scopes: &[Scope], label: &str) -> anyhow::Result<()> {
    let scopes = if scopes.is_empty() {
        Scope::ALL.to_vec()
    } else {
        scopes.to_vec()
    };
    let key = store::tenants::create_key(pool, tenant, &scopes, label).await?;
    println!("tenant_id={tenant}");
    println!("key_id={}", crate::domain::tenant::key_id(&key.hash));
    println!(
        "scopes={}",
        scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
    );
    println!("api_key={}", key.plaintext);
    Ok(())
}

async fn list_keys(pool: &sqlx::PgPool, tenant: TenantId) -> anyhow::Result<()> {
    println!("key_id\tscopes\tcreated_at\trevoked_at\tlabel");
    for k in store::tenants::list_keys(pool, tenant).await? {
        println!(
            "{}\t{}\t{}\t{}\t{}",
            k.key_id,
            k.scopes.join(","),
            k.created_at.to_rfc3339(),
            k.revoked_at.map_or("-".to_owned(), |t| t.to_rfc3339()),
            k.label
        );
    }
    Ok(())
}

async fn add_whatsapp(pool: sqlx::PgPool, tenant: TenantId, request: &SourceRequest) -> anyhow::Result<()> {
    let created = WhatsAppService::new(pool).create_source(tenant, request).await?;
    println!("source_id={}", created.source_id);
    println!("path=/v1/whatsapp/{tenant}/{}", created.source_id);
    println!("verify_token={}", created.verify_token);
    Ok(())
}

async fn list_whatsapp(pool: sqlx::PgPool, tenant: TenantId) -> anyhow::Result<()> {
    println!("source_id\tname\tinbox\tinactivity_seconds\tcreated_at");
    for s in WhatsAppService::new(pool).list_sources(tenant).await? {
        println!(
            "{}\t{}\t{}\t{}\t{}",
            s.source_id,
            s.name,
            s.inbox,
            s.inactivity_seconds,
            s.created_at.to_rfc3339()
        );
    }
    Ok(())
}

/// `--rule`: a `chatkpi.v1.AlertRule` in proto3 JSON, checked as AdminService checks it.
fn rule_spec(rule: &str) -> anyhow::Result<crate::domain::alert::RuleSpec> {
    let rule: crate::grpc::pb::AlertRule =
        serde_json::from_str(rule).context("--rule is not a chatkpi.v1.AlertRule in proto3 JSON")?;
    Ok(crate::grpc::convert::alerts::rule_from_proto(Some(&rule))?)
}

async fn add_alert(
    pool: sqlx::PgPool,
    tenant: TenantId,
    spec: &crate::domain::alert::RuleSpec,
    allow_local: bool,
) -> anyhow::Result<()> {
    let config = AlertConfig {
        allow_local,
        ..AlertConfig::default()
    };
    let (rule_id, secret) = AlertService::new(pool, config)
        .create_rule(tenant, spec, "")
        .await
        .map_err(crate::grpc::convert::alerts::in_rule)?;
    println!("rule_id={rule_id}");
    println!("signing_secret={secret}");
    Ok(())
}

async fn list_alerts(pool: sqlx::PgPool, tenant: TenantId) -> anyhow::Result<()> {
    for r in AlertService::new(pool, AlertConfig::default())
        .rules(tenant)
        .await?
    {
        println!(
            "{}",
            serde_json::to_string(&crate::grpc::convert::alerts::rule_to_proto(&r))?
        );
    }
    Ok(())
}
