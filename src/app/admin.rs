//! The administration use case: erasing a customer (README, Erasure).

use sqlx::PgPool;

use crate::{
    domain::{Error, event::check_id, tenant::TenantId},
    store::{self, tenants::Erased},
};

/// Tenant administration.
pub struct AdminService {
    pool: PgPool,
}

impl AdminService {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Deletes every stored trace of `customer` in `tenant` (see `store::tenants::erase_customer`);
    /// the query caches of every replica rebuild the tenant on their next refresh.
    pub async fn erase_customer(&self, tenant: TenantId, customer: &str) -> Result<Erased, Error> {
        check_id("customer_id", customer).map_err(Error::from)?;
        let erased = store::tenants::erase_customer(&self.pool, tenant, customer).await?;
        tracing::info!(
            tenant = tenant.0,
            conversations = erased.conversations,
            events = erased.events,
            conversions = erased.conversions,
            "customer erased"
        );
        Ok(erased)
    }
}
