//! `chatkpi.v1.AdminService`: decode, call the administration use case, encode.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{auth, pb};
use crate::{app::App, domain::tenant::Scope};

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
}
