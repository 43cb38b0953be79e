//! etcd's authentication and authorization (`server/auth`): users with bcrypt password hashes
//! and roles, roles with key permissions, the enabled flag and the auth revision, all changed
//! only by applying the raft log ([`store`]); the permission check ([`perms`]); and the simple
//! tokens clients authenticate with ([`token`], [`jwt`]). The service layer resolves every request's
//! token into a [`Caller`] and checks it before serving; the applier checks again, as etcd
//! does, so a permission revoked between the two still refuses the write.

pub mod check;
pub mod jwt;
pub mod perms;
pub mod store;
pub mod token;

pub use perms::Need;
pub use store::AuthStore;
pub use token::SimpleTokens;

use std::time::Duration;

/// The token provider of `--auth-token`.
pub enum Tokens {
    /// `simple`: random tokens held in memory, refreshed on use (`--auth-token-ttl`).
    Simple(SimpleTokens),
    /// `jwt,<options>`: signed, stateless tokens.
    Jwt(jwt::JwtTokens),
}

impl Tokens {
    /// The provider `--auth-token` names (`simple`, or `jwt,` and etcd's options).
    pub fn from_flag(flag: &str, simple_ttl: Duration) -> Result<Self, String> {
        let (kind, options) = flag.split_once(',').unwrap_or((flag, ""));
        match kind {
            "simple" => Ok(Tokens::Simple(SimpleTokens::new(simple_ttl))),
            "jwt" => Ok(Tokens::Jwt(jwt::JwtTokens::from_options(options)?)),
            other => Err(format!("--auth-token: unknown token type {other:?}")),
        }
    }
}

use etcd_proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest,
};

/// The user named `root` and the role named `root`: enabling auth needs the one holding the
/// other, and whoever holds the role may do everything.
pub const ROOT: &str = "root";

/// Who a request comes from (etcd's `AuthInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No token: refused with `user name is empty` wherever auth is checked while enabled.
    Anonymous,
    /// A user a token named, with the auth revision current when the token was resolved.
    User { name: String, revision: u64 },
    /// The member itself (health checks, lease expiry): etcd's `WithRoot`.
    Internal,
}

impl Caller {
    /// The user name and revision stamped on a proposal (empty and 0 for no user), and
    /// whether the member itself proposes it.
    pub fn stamp(&self) -> (String, u64, bool) {
        match self {
            Caller::User { name, revision } => (name.clone(), *revision, false),
            Caller::Anonymous => (String::new(), 0, false),
            Caller::Internal => (String::new(), 0, true),
        }
    }
}

/// An auth change as the raft log carries it (etcd's auth members of `InternalRaftRequest`).
/// Passwords never travel: the serving member hashes them first.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthOp {
    #[prost(oneof = "AuthRequest", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12")]
    pub request: Option<AuthRequest>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AuthRequest {
    #[prost(message, tag = "1")]
    Enable(AuthEnableRequest),
    #[prost(message, tag = "2")]
    Disable(AuthDisableRequest),
    #[prost(message, tag = "3")]
    Authenticate(InternalAuthenticate),
    #[prost(message, tag = "4")]
    UserAdd(AuthUserAddRequest),
    #[prost(message, tag = "5")]
    UserDelete(AuthUserDeleteRequest),
    #[prost(message, tag = "6")]
    UserChangePassword(AuthUserChangePasswordRequest),
    #[prost(message, tag = "7")]
    UserGrantRole(AuthUserGrantRoleRequest),
    #[prost(message, tag = "8")]
    UserRevokeRole(AuthUserRevokeRoleRequest),
    #[prost(message, tag = "9")]
    RoleAdd(AuthRoleAddRequest),
    #[prost(message, tag = "10")]
    RoleDelete(AuthRoleDeleteRequest),
    #[prost(message, tag = "11")]
    RoleGrantPermission(AuthRoleGrantPermissionRequest),
    #[prost(message, tag = "12")]
    RoleRevokePermission(AuthRoleRevokePermissionRequest),
}

/// etcd's `InternalAuthenticateRequest`: the password was checked by the serving member; every
/// member registers the token `<simple_token>.<entry index>` when it applies this.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InternalAuthenticate {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub simple_token: String,
}
