//! `chatkpi.v1.AdminService`: decode, call the administration use case, encode.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    auth,
    convert::{alerts as conv, chrono_to_timestamp},
    pb,
};
use crate::{
    app::{App, whatsapp::SourceRequest},
    domain::tenant::{Scope, TenantId},
};

/// Where a source's webhooks go on this port.
fn webhook_path(tenant: TenantId, source_id: &str) -> String {
    format!("/v1/whatsapp/{tenant}/{source_id}")
}

/// The AdminService implementation.
#[derive(Clone)]
pub struct AdminApi {
    app: Arc<App>,
}

impl AdminApi {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn erase_customer(
        &self,
        request: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<pb::EraseCustomerResponse>, Status> {
        let tenant = auth::authorize(&self.app, &request, Scope::Admin).await?;
        let erased = self
            .app
            .admin
            .erase_customer(tenant, &request.get_ref().customer_id)
            .await?;
        Ok(Response::new(pb::EraseCustomerResponse {
            conversations: erased.conversations,
            events: erased.events,
            conversions: erased.conversions,
        }))
    }

    async fn create_whats_app_source(
        &self,
        request: Request<pb::CreateWhatsAppSourceRequest>,
    ) -> Result<Response<pb::CreateWhatsAppSourceResponse>, Status> {
        let tenant = auth::authorize(&self.app, &request, Scope::Admin).await?;
        let r = request.into_inner();
        let created = self
            .app
            .whatsapp
            .create_source(
                tenant,
                &SourceRequest {
                    name: r.name,
                    inbox: r.inbox.unwrap_or_default(),
                    app_secret: r.app_secret,
                    verify_token: r.verify_token.unwrap_or_default(),
                    inactivity_seconds: r.inactivity_seconds,
                },
            )
            .await?;
        Ok(Response::new(pb::CreateWhatsAppSourceResponse {
            path: webhook_path(tenant, &created.source_id),
            source_id: created.source_id,
            verify_token: created.verify_token,
        }))
    }

    async fn list_whats_app_sources(
        &self,
        request: Request<pb::ListWhatsAppSourcesRequest>,
    ) -> Result<Response<pb::ListWhatsAppSourcesResponse>, Status> {
        let tenant = auth::authorize(&self.app, &request, Scope::Admin).await?;
        let sources = self.app.whatsapp.list_sources(tenant).await?;
        Ok(Response::new(pb::ListWhatsAppSourcesResponse {
            sources: sources
                .into_iter()
                .map(|s| pb::WhatsAppSource {
                    path: webhook_path(tenant, &s.source_id),
                    source_id: s.source_id,
                    name: s.name,
                    inbox: s.inbox,
                    inactivity_seconds: s.inactivity_seconds as u32,
                    created_at: Some(chrono_to_timestamp(s.created_at)),
                })
                .collect(),
        }))
    }

    async fn delete_whats_app_source(
        &self,
        request: Request<pb::DeleteWhatsAppSourceRequest>,
    ) -> Result<Response<pb::DeleteWhatsAppSourceResponse>, Status> {
        let tenant = auth::authorize(&self.app, &request, Scope::Admin).await?;
        self.app
            .whatsapp
            .delete_source(tenant, &request.get_ref().source_id)
            .await?;
        Ok(Response::new(pb::DeleteWhatsAppSourceResponse {}))
    }

    async fn create_alert_rule(
        &self,
        request: Request<pb::CreateAlertRuleRequest>,
    ) -> Result<Response<pb::CreateAlertRuleResponse>, Status> {
        let tenant = auth::authorize(&self.app, &request, Scope::Admin).await?;
        let r = request.get_ref();
        let spec = conv::rule_from_proto(r.rule.as_ref())?;
        let secret = r.signing_secret.as_deref().unwrap_or_default();
        let (rule_id, signing_secret) = self
            .app
            .alerts
            .create_rule(tenant, &spec, secret)
            .await
            .map_err(conv::in_rule)?;
        Ok(Response::new(pb::CreateAlertRuleResponse {
            rule_id: rule_id as u64,
            signing_secret,
        }))
    }

    async fn update_alert_rule(
        &self,
        request: Request<pb::UpdateAlertRuleRequest>,
    ) -> Result<Response<pb::UpdateAlertRuleResponse>, Status> {
        let tenant = auth::authorize(&self.app, &request, Scope::Admin).await?;
        let r = request.get_ref();
        let spec = conv::rule_from_proto(r.rule.as_ref())?;
        self.app
            .alerts
            .update_rule(tenant, rule_id(r.rule_id)?, &spec)
            .await
            .map_err(conv::in_rule)?;
        Ok(Response::new(pb::UpdateAlertRuleResponse {}))
    }

    async fn delete_alert_rule(
        &self,
        request: Request<pb::DeleteAlertRuleRequest>,
    ) -> Result<Response<pb::DeleteAlertRuleResponse>, Status> {
        let tenant = auth::authorize(&self.app, &request, Scope::Admin).await?;
        self.app
            .alerts
            .delete_rule(tenant, rule_id(request.get_ref().rule_id)?)
            .await?;
        Ok(Response::new(pb::DeleteAlertRuleResponse {}))
    }

    async fn list_alert_rules(
        &self,
        request: Request<pb::ListAlertRulesRequest>,
    ) -> Result<Response<pb::ListAlertRulesResponse>, Status> {
        let tenant = auth::authorize(&self.app, &request, Scope::Admin).await?;
        let rules = self.app.alerts.rules(tenant).await?;
        Ok(Response::new(pb::ListAlertRulesResponse {
            rules: rules.iter().map(conv::rule_to_proto).collect(),
        }))
    }

    async fn list_alert_deliveries(
        &self,
        request: Request<pb::ListAlertDeliveriesRequest>,
    ) -> Result<Response<pb::ListAlertDeliveriesResponse>, Status> {
        let tenant = auth::authorize(&self.app, &request, Scope::Admin).await?;
        let r = request.get_ref();
        let rule = r.rule_id.map(rule_id).transpose()?;
        if r.limit > 1_000 {
            return Err(crate::domain::Error::invalid("limit", "must be at most 1000").into());
        }
        let deliveries = self.app.alerts.deliveries(tenant, rule, r.limit).await?;
        Ok(Response::new(pb::ListAlertDeliveriesResponse {
            deliveries: deliveries.iter().map(conv::delivery_to_proto).collect(),
        }))
    }
}

/// A rule id as the store keys it.
fn rule_id(id: u64) -> Result<i64, crate::domain::Error> {
    i64::try_from(id)
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| crate::domain::Error::invalid("rule_id", "must be a rule id (1 or more)"))
}
