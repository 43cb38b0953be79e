//! `etcdserverpb.Auth`: resolves the caller from the request's token and hands the request to
//! the service layer (see `service/auth.rs`).

use super::{caller, status};
use crate::service::EtcdServer;
use etcd_proto::etcdserverpb::auth_server::Auth;
use etcd_proto::etcdserverpb::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AuthService(pub Arc<EtcdServer>);

/// One RPC: resolve the caller, call the service method with it.
macro_rules! as_caller {
    ($self:ident, $req:ident, $method:ident) => {{
        let who = caller(&$self.0, &$req).await?;
        $self
            .0
            .$method(&who, $req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }};
    ($self:ident, $req:ident, $method:ident, no_body) => {{
        let who = caller(&$self.0, &$req).await?;
        $self
            .0
            .$method(&who)
            .await
            .map(Response::new)
            .map_err(status)
    }};
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        as_caller!(self, req, auth_enable, no_body)
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        as_caller!(self, req, auth_disable, no_body)
    }

    async fn auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        as_caller!(self, req, auth_status, no_body)
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        self.0
            .authenticate(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        as_caller!(self, req, user_add)
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        as_caller!(self, req, user_get)
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        as_caller!(self, req, user_list, no_body)
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        as_caller!(self, req, user_delete)
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        as_caller!(self, req, user_change_password)
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        as_caller!(self, req, user_grant_role)
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        as_caller!(self, req, user_revoke_role)
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        as_caller!(self, req, role_add)
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        as_caller!(self, req, role_get)
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        as_caller!(self, req, role_list, no_body)
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        as_caller!(self, req, role_delete)
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        as_caller!(self, req, role_grant_permission)
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        as_caller!(self, req, role_revoke_permission)
    }
}
