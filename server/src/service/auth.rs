//! The Auth RPCs and the caller resolution of every face (etcd's `v3_server.go` auth methods
//! and `AuthInfoFromCtx`). Changes go through raft; passwords are bcrypt-hashed or checked
//! here, on the serving member and off the async workers, never on the raft thread. The
//! user and role reads answer from this member's store once a ReadIndex confirmed it is
//! current (etcd sends them through the log; the answer is the same).

use super::{expect_applied, EtcdServer};
use crate::auth::store::AuthApplied;
use crate::auth::{token, AuthOp, AuthRequest, Caller, InternalAuthenticate};
use crate::error::{Error, Result};
use crate::request::Op;
use etcd_proto::etcdserverpb::*;
use std::sync::LazyLock;
use tokio::sync::Semaphore;

/// bcrypt runs at most this many at once: each takes tens of milliseconds of CPU at the
/// default cost, and a burst of logins must not take every blocking thread.
static BCRYPT_SLOTS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(4));

/// Passwords longer than this are refused, as Go's bcrypt refuses them.
const MAX_PASSWORD: usize = 72;

/// Times an Authenticate is retried when the auth store changed while it ran.
const AUTHENTICATE_TRIES: usize = 3;

async fn bcrypt_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let _slot = BCRYPT_SLOTS.acquire().await.map_err(|_| Error::Stopped)?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("pgraft: bcrypt task failed: {e}")))
}

/// Signs a JWT on a blocking thread (RSA signing takes milliseconds).
async fn sign_jwt(
    auth: &std::sync::Arc<crate::auth::AuthStore>,
    user: String,
    revision: u64,
) -> Result<String> {
    let auth = auth.clone();
    tokio::task::spawn_blocking(move || auth.sign(&user, revision))
        .await
        .map_err(|e| Error::Internal(format!("pgraft: jwt task failed: {e}")))?
}

fn auth_op(r: AuthRequest) -> Op {
    Op::Auth(AuthOp { request: Some(r) })
}

impl EtcdServer {
    /// The caller a request's token names (etcd's `AuthInfoFromCtx`): no token is
    /// [`Caller::Anonymous`]; a token this member does not know is `invalid auth token`, after
    /// waiting (bounded) for the entry that created it, should it not be applied here yet.
    pub async fn caller(&self, token: Option<&str>) -> Result<Caller> {
        let Some(token) = token else {
            return Ok(Caller::Anonymous);
        };
        match self.auth.caller(Some(token)) {
            Err(Error::InvalidAuthToken) => {}
            other => return other,
        }
        let Some(index) = token::token_index(token) else {
            return Err(Error::InvalidAuthToken);
        };
        if index <= self.raft.status.applied_index() || index > self.raft.status.commit_index() {
            return Err(Error::InvalidAuthToken);
        }
        let _ = tokio::time::timeout(
            self.cfg.request_timeout(),
            self.raft.status.wait_applied(index),
        )
        .await;
        self.auth.caller(Some(token))
    }

    /// The caller a verified client certificate's common name names: that user, at the
    /// current auth revision.
    pub fn caller_from_certificate(&self, common_name: &str) -> Caller {
        Caller::User {
            name: common_name.to_string(),
            revision: self.auth.revision(),
        }
    }

    /// Root only, while auth is on (cluster and maintenance changes, etcd's
    /// `IsAdminPermitted`).
    pub fn check_admin(&self, who: &Caller) -> Result<()> {
        self.auth.check_admin(who)
    }

    /// Proposes an auth change as `who` and waits for it to apply.
    async fn propose_auth(&self, who: &Caller, r: AuthRequest) -> Result<AuthApplied> {
        self.check_not_learner()?;
        expect_applied!(self.propose_as(who, auth_op(r)).await?, Auth)
    }

    fn auth_header(&self) -> Option<ResponseHeader> {
        Some(self.header(self.store.current_rev()))
    }

    pub async fn auth_enable(&self, who: &Caller) -> Result<AuthEnableResponse> {
        self.propose_auth(who, AuthRequest::Enable(AuthEnableRequest {}))
            .await?;
        Ok(AuthEnableResponse {
            header: self.auth_header(),
        })
    }

    pub async fn auth_disable(&self, who: &Caller) -> Result<AuthDisableResponse> {
        self.propose_auth(who, AuthRequest::Disable(AuthDisableRequest {}))
            .await?;
        Ok(AuthDisableResponse {
            header: self.auth_header(),
        })
    }

    pub async fn auth_status(&self, who: &Caller) -> Result<AuthStatusResponse> {
        self.linearizable_barrier().await?;
        let (enabled, auth_revision) = self.auth.status(who)?;
        Ok(AuthStatusResponse {
            header: self.auth_header(),
            enabled,
            auth_revision,
        })
    }

    /// Authenticate: the password is checked here against the stored hash, then an entry
    /// registers the token on every member. Retried should the auth store change meanwhile
    /// (the password checked may be stale), as etcd does.
    pub async fn authenticate(&self, r: AuthenticateRequest) -> Result<AuthenticateResponse> {
        self.check_not_learner()?;
        let prefix = token::gen_prefix();
        for _ in 0..AUTHENTICATE_TRIES {
            let (hash, checked_rev) = self.auth.password_hash(&r.name)?;
            let password = r.password.clone();
            let ok = bcrypt_blocking(move || {
                std::str::from_utf8(&hash)
                    .ok()
                    .and_then(|h| bcrypt::verify(password.as_bytes(), h).ok())
                    .unwrap_or(false)
            })
            .await?;
            if !ok {
                return Err(Error::AuthFailed);
            }
            let req = AuthRequest::Authenticate(InternalAuthenticate {
                name: r.name.clone(),
                simple_token: prefix.clone(),
            });
            let applied = self.propose_auth(&Caller::Anonymous, req).await?;
            if checked_rev == self.auth.revision() {
                let token = match applied {
                    AuthApplied::Token(token) => token,
                    AuthApplied::Sign { user, revision } => {
                        sign_jwt(&self.auth, user, revision).await?
                    }
                    AuthApplied::Done => {
                        return Err(Error::Internal("pgraft: no token applied".into()))
                    }
                };
                return Ok(AuthenticateResponse {
                    header: self.auth_header(),
                    token,
                });
            }
        }
        Err(Error::AuthOldRevision)
    }

    /// A bcrypt hash of `password` at `--bcrypt-cost`.
    async fn hash_password(&self, password: String) -> Result<String> {
        if password.len() > MAX_PASSWORD {
            return Err(Error::PasswordTooLong);
        }
        let cost = self.cfg.bcrypt_cost;
        bcrypt_blocking(move || bcrypt::hash(password.as_bytes(), cost))
            .await?
            .map_err(|e| Error::Internal(format!("pgraft: bcrypt: {e}")))
    }

    pub async fn user_add(
        &self,
        who: &Caller,
        mut r: AuthUserAddRequest,
    ) -> Result<AuthUserAddResponse> {
        // Refused before the costly hash, as the applier would refuse it.
        self.check_admin(who)?;
        if r.name.is_empty() {
            return Err(Error::UserEmpty);
        }
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        r.hashed_password = if no_password {
            String::new()
        } else {
            self.hash_password(std::mem::take(&mut r.password)).await?
        };
        r.password.clear();
        self.propose_auth(who, AuthRequest::UserAdd(r)).await?;
        Ok(AuthUserAddResponse {
            header: self.auth_header(),
        })
    }

    pub async fn user_change_password(
        &self,
        who: &Caller,
        mut r: AuthUserChangePasswordRequest,
    ) -> Result<AuthUserChangePasswordResponse> {
        self.check_admin(who)?;
        r.hashed_password = self.hash_password(std::mem::take(&mut r.password)).await?;
        self.propose_auth(who, AuthRequest::UserChangePassword(r))
            .await?;
        Ok(AuthUserChangePasswordResponse {
            header: self.auth_header(),
        })
    }

    pub async fn user_get(
        &self,
        who: &Caller,
        r: AuthUserGetRequest,
    ) -> Result<AuthUserGetResponse> {
        self.linearizable_barrier().await?;
        Ok(AuthUserGetResponse {
            roles: self.auth.user_get(who, &r.name)?,
            header: self.auth_header(),
        })
    }

    pub async fn user_list(&self, who: &Caller) -> Result<AuthUserListResponse> {
        self.linearizable_barrier().await?;
        Ok(AuthUserListResponse {
            users: self.auth.user_list(who)?,
            header: self.auth_header(),
        })
    }

    pub async fn user_delete(
        &self,
        who: &Caller,
        r: AuthUserDeleteRequest,
    ) -> Result<AuthUserDeleteResponse> {
        self.propose_auth(who, AuthRequest::UserDelete(r)).await?;
        Ok(AuthUserDeleteResponse {
            header: self.auth_header(),
        })
    }

    pub async fn user_grant_role(
        &self,
        who: &Caller,
        r: AuthUserGrantRoleRequest,
    ) -> Result<AuthUserGrantRoleResponse> {
        self.propose_auth(who, AuthRequest::UserGrantRole(r))
            .await?;
        Ok(AuthUserGrantRoleResponse {
            header: self.auth_header(),
        })
    }

    pub async fn user_revoke_role(
        &self,
        who: &Caller,
        r: AuthUserRevokeRoleRequest,
    ) -> Result<AuthUserRevokeRoleResponse> {
        self.propose_auth(who, AuthRequest::UserRevokeRole(r))
            .await?;
        Ok(AuthUserRevokeRoleResponse {
            header: self.auth_header(),
        })
    }

    pub async fn role_add(
        &self,
        who: &Caller,
        r: AuthRoleAddRequest,
    ) -> Result<AuthRoleAddResponse> {
        self.propose_auth(who, AuthRequest::RoleAdd(r)).await?;
        Ok(AuthRoleAddResponse {
            header: self.auth_header(),
        })
    }

    pub async fn role_get(
        &self,
        who: &Caller,
        r: AuthRoleGetRequest,
    ) -> Result<AuthRoleGetResponse> {
        self.linearizable_barrier().await?;
        Ok(AuthRoleGetResponse {
            perm: self.auth.role_get(who, &r.role)?,
            header: self.auth_header(),
        })
    }

    pub async fn role_list(&self, who: &Caller) -> Result<AuthRoleListResponse> {
        self.linearizable_barrier().await?;
        Ok(AuthRoleListResponse {
            roles: self.auth.role_list(who)?,
            header: self.auth_header(),
        })
    }

    pub async fn role_delete(
        &self,
        who: &Caller,
        r: AuthRoleDeleteRequest,
    ) -> Result<AuthRoleDeleteResponse> {
        self.propose_auth(who, AuthRequest::RoleDelete(r)).await?;
        Ok(AuthRoleDeleteResponse {
            header: self.auth_header(),
        })
    }

    pub async fn role_grant_permission(
        &self,
        who: &Caller,
        r: AuthRoleGrantPermissionRequest,
    ) -> Result<AuthRoleGrantPermissionResponse> {
        self.propose_auth(who, AuthRequest::RoleGrantPermission(r))
            .await?;
        Ok(AuthRoleGrantPermissionResponse {
            header: self.auth_header(),
        })
    }

    pub async fn role_revoke_permission(
        &self,
        who: &Caller,
        r: AuthRoleRevokePermissionRequest,
    ) -> Result<AuthRoleRevokePermissionResponse> {
        self.propose_auth(who, AuthRequest::RoleRevokePermission(r))
            .await?;
        Ok(AuthRoleRevokePermissionResponse {
            header: self.auth_header(),
        })
    }
}
