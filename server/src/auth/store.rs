//! The auth store (etcd's `authStore`): the enabled flag, the auth revision, users and roles,
//! held in memory for the checks and persisted in the `auth` keyspace, in the applier's batch.
//! Only [`AuthStore::apply`] changes it, on every member alike; the checks read it.
//!
//! | key          | value                               |
//! |--------------|-------------------------------------|
//! | `enabled`    | 1 byte, 1 when auth is on           |
//! | `revision`   | auth revision, u64 BE               |
//! | `u/<name>`   | `authpb.User` (bcrypt hash, roles)  |
//! | `r/<name>`   | `authpb.Role` (key permissions)     |
//!
//! The revision starts at 1 and moves with every change of users, roles or permissions, and
//! with AuthDisable (not AuthEnable: etcd's rule); a request checked at an older revision is
//! refused at apply with `revision of auth store is old`.

use super::perms::{self, Need};
use super::{AuthRequest, Caller, Tokens, ROOT};
use crate::backend::Backend;
use crate::error::{Error, Result};
use etcd_proto::authpb::{Permission, Role, User, UserAddOptions};
use fjall::{Keyspace, OwnedWriteBatch};
use parking_lot::RwLock;
use prost::Message;
use std::collections::BTreeMap;

const ENABLED: &str = "enabled";
const REVISION: &str = "revision";

fn user_key(name: &str) -> Vec<u8> {
    [b"u/", name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [b"r/", name.as_bytes()].concat()
}

#[derive(Default)]
struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

impl State {
    fn has_root_role(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// etcd's `isOpPermitted`.
    fn check(&self, caller: &Caller, need: Need, key: &[u8], range_end: &[u8]) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let (name, revision) = match caller {
            Caller::Internal => return Ok(()),
            Caller::Anonymous => return Err(Error::UserEmpty),
            Caller::User { name, revision } => (name, *revision),
        };
        if revision == 0 {
            return Err(Error::UserEmpty);
        }
        if revision < self.revision {
            return Err(Error::AuthOldRevision);
        }
        let user = self.users.get(name).ok_or(Error::PermissionDenied)?;
        if user.roles.iter().any(|r| r == ROOT) {
            return Ok(());
        }
        let granted = user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.key_permission.iter());
        if perms::permitted(granted, need, key, range_end) {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// etcd's `IsAdminPermitted`.
    fn check_admin(&self, caller: &Caller) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let name = match caller {
            Caller::Internal => return Ok(()),
            Caller::Anonymous => return Err(Error::UserEmpty),
            Caller::User { name, .. } if name.is_empty() => return Err(Error::UserEmpty),
            Caller::User { name, .. } => name,
        };
        if !self.users.contains_key(name) {
            return Err(Error::UserNotFound);
        }
        if !self.has_root_role(name) {
            return Err(Error::PermissionDenied);
        }
        Ok(())
    }
}

/// What an applied auth change answers besides success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthApplied {
    Done,
    /// A simple token, registered on every member.
    Token(String),
    /// An Authenticate under JWT: the proposer signs the token for this user and auth
    /// revision itself, off the raft thread ([`AuthStore::sign`]).
    Sign {
        user: String,
        revision: u64,
    },
}

pub struct AuthStore {
    ks: Keyspace,
    state: RwLock<State>,
    tokens: Tokens,
}

impl AuthStore {
    /// Loads the stored auth state.
    pub fn open(backend: &Backend, tokens: Tokens) -> Result<Self> {
        let s = AuthStore {
            ks: backend.auth.clone(),
            state: RwLock::new(State::default()),
            tokens,
        };
        s.reload()?;
        Ok(s)
    }

    /// Reads the state again from the keyspace (after a snapshot replaced it).
    pub fn reload(&self) -> Result<()> {
        let mut st = State {
            revision: 1,
            ..Default::default()
        };
        for item in self.ks.iter() {
            let (k, v) = item.into_inner()?;
            match k.as_ref() {
                b"enabled" => st.enabled = v.first() == Some(&1),
                b"revision" => {
                    st.revision =
                        u64::from_be_bytes(v.as_ref().try_into().map_err(Error::internal)?)
                }
                k if k.starts_with(b"u/") => {
                    let u = User::decode(v.as_ref()).map_err(Error::internal)?;
                    st.users
                        .insert(String::from_utf8_lossy(&k[2..]).into_owned(), u);
                }
                k if k.starts_with(b"r/") => {
                    let r = Role::decode(v.as_ref()).map_err(Error::internal)?;
                    st.roles
                        .insert(String::from_utf8_lossy(&k[2..]).into_owned(), r);
                }
                _ => {}
            }
        }
        let was_enabled = self.state.read().enabled;
        *self.state.write() = st;
        if was_enabled {
            self.forget_tokens(None);
        }
        Ok(())
    }

    /// Forgets the simple tokens of `user`, or all (JWTs cannot be taken back: their
    /// revision goes stale instead).
    fn forget_tokens(&self, user: Option<&str>) {
        if let Tokens::Simple(t) = &self.tokens {
            match user {
                Some(u) => t.invalidate_user(u),
                None => t.clear(),
            }
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.state.read().enabled
    }

    pub fn revision(&self) -> u64 {
        self.state.read().revision
    }

    /// Whether `caller` may do `need` on the key or range (etcd's `IsRangePermitted`,
    /// `IsPutPermitted`, `IsDeleteRangePermitted`).
    pub fn check(&self, caller: &Caller, need: Need, key: &[u8], range_end: &[u8]) -> Result<()> {
        self.state.read().check(caller, need, key, range_end)
    }

    /// Whether `caller` holds the root role (or auth is off).
    pub fn check_admin(&self, caller: &Caller) -> Result<()> {
        self.state.read().check_admin(caller)
    }

    /// The caller a token names: `Anonymous` for no token, `invalid auth token` for one that
    /// is not live (any token while auth is off: none is).
    pub fn caller(&self, token: Option<&str>) -> Result<Caller> {
        let Some(token) = token else {
            return Ok(Caller::Anonymous);
        };
        let (name, revision) = match &self.tokens {
            // A simple token stands for its user at the current revision (etcd's).
            Tokens::Simple(t) => (t.user(token), self.revision()),
            Tokens::Jwt(t) => match t.verify(token) {
                Some((name, revision)) => (Some(name), revision),
                None => (None, 0),
            },
        };
        let name = name.ok_or(Error::InvalidAuthToken)?;
        Ok(Caller::User { name, revision })
    }

    /// A JWT for `user` at auth `revision` (see [`AuthApplied::Sign`]).
    pub fn sign(&self, user: &str, revision: u64) -> Result<String> {
        match &self.tokens {
            Tokens::Jwt(t) => t.sign(user, revision).ok_or_else(|| {
                Error::Internal("pgraft: no jwt priv-key on this member to sign with".into())
            }),
            Tokens::Simple(_) => Err(Error::Internal("pgraft: not a jwt member".into())),
        }
    }

    /// The password hash to check an Authenticate against, and the revision it was read at
    /// (etcd's `CheckPassword`, less the bcrypt comparison, which the caller runs off the
    /// async workers).
    pub fn password_hash(&self, name: &str) -> Result<(Vec<u8>, u64)> {
        let st = self.state.read();
        if !st.enabled {
            return Err(Error::AuthNotEnabled);
        }
        let user = st.users.get(name).ok_or(Error::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(Error::NoPasswordUser);
        }
        Ok((user.password.clone(), st.revision))
    }

    /// UserGet: root, or the user itself.
    pub fn user_get(&self, caller: &Caller, name: &str) -> Result<Vec<String>> {
        let st = self.state.read();
        if let Err(e) = st.check_admin(caller) {
            if !matches!(caller, Caller::User { name: n, .. } if n == name) {
                return Err(e);
            }
        }
        Ok(st.users.get(name).ok_or(Error::UserNotFound)?.roles.clone())
    }

    /// RoleGet: root, or a user holding the role.
    pub fn role_get(&self, caller: &Caller, role: &str) -> Result<Vec<Permission>> {
        let st = self.state.read();
        if let Err(e) = st.check_admin(caller) {
            let holds = match caller {
                Caller::User { name, .. } => st
                    .users
                    .get(name)
                    .is_some_and(|u| u.roles.iter().any(|r| r == role)),
                _ => false,
            };
            if !holds {
                return Err(e);
            }
        }
        Ok(st
            .roles
            .get(role)
            .ok_or(Error::RoleNotFound)?
            .key_permission
            .clone())
    }

    pub fn user_list(&self, caller: &Caller) -> Result<Vec<String>> {
        let st = self.state.read();
        st.check_admin(caller)?;
        Ok(st.users.keys().cloned().collect())
    }

    pub fn role_list(&self, caller: &Caller) -> Result<Vec<String>> {
        let st = self.state.read();
        st.check_admin(caller)?;
        Ok(st.roles.keys().cloned().collect())
    }

    /// AuthStatus (root only while enabled): the flag and the revision.
    pub fn status(&self, caller: &Caller) -> Result<(bool, u64)> {
        let st = self.state.read();
        st.check_admin(caller)?;
        Ok((st.enabled, st.revision))
    }

    /// Applies one auth change from the log entry at `index`, by `caller`, into `batch`.
    /// Refused changes touch nothing.
    pub fn apply(
        &self,
        batch: &mut OwnedWriteBatch,
        caller: &Caller,
        req: AuthRequest,
        index: u64,
    ) -> Result<AuthApplied> {
        let mut st = self.state.write();
        if !matches!(req, AuthRequest::Authenticate(_)) {
            st.check_admin(caller)?;
        }
        let enabled = st.enabled;
        match req {
            AuthRequest::Enable(_) => {
                if enabled {
                    return Ok(AuthApplied::Done);
                }
                if !st.users.contains_key(ROOT) {
                    return Err(Error::RootUserNotExist);
                }
                if !st.has_root_role(ROOT) {
                    return Err(Error::RootRoleNotExist);
                }
                st.enabled = true;
                batch.insert(&self.ks, ENABLED, [1u8]);
                return Ok(AuthApplied::Done);
            }
            AuthRequest::Disable(_) => {
                if !enabled {
                    return Ok(AuthApplied::Done);
                }
                st.enabled = false;
                batch.insert(&self.ks, ENABLED, [0u8]);
                self.forget_tokens(None);
            }
            AuthRequest::Authenticate(a) => {
                if !enabled {
                    return Err(Error::AuthNotEnabled);
                }
                let user = st.users.get(&a.name).ok_or(Error::AuthFailed)?;
                if user.options.as_ref().is_some_and(|o| o.no_password) {
                    return Err(Error::AuthFailed);
                }
                let token = match &self.tokens {
                    Tokens::Simple(t) => {
                        let token = format!("{}.{}", a.simple_token, index);
                        t.assign(token.clone(), &a.name);
                        token
                    }
                    // Signed by each member as it applies; the proposer's is the answer.
                    Tokens::Jwt(t) => t.sign(&a.name, st.revision).ok_or_else(|| {
                        Error::Internal(
                            "pgraft: no jwt priv-key on this member to sign with".into(),
                        )
                    })?,
                };
                return Ok(AuthApplied::Token(token));
            }
            AuthRequest::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(Error::UserEmpty);
                }
                if st.users.contains_key(&r.name) {
                    return Err(Error::UserAlreadyExist);
                }
                let options = r.options.unwrap_or(UserAddOptions { no_password: false });
                let user = User {
                    name: r.name.clone().into_bytes(),
                    password: if options.no_password {
                        Vec::new()
                    } else {
                        r.hashed_password.into_bytes()
                    },
                    roles: Vec::new(),
                    options: Some(options),
                };
                self.put_user(batch, &mut st, user);
            }
            AuthRequest::UserDelete(r) => {
                if enabled && r.name == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                if st.users.remove(&r.name).is_none() {
                    return Err(Error::UserNotFound);
                }
                batch.remove(&self.ks, user_key(&r.name));
                self.forget_tokens(Some(&r.name));
            }
            AuthRequest::UserChangePassword(r) => {
                let mut user = st.users.get(&r.name).ok_or(Error::UserNotFound)?.clone();
                user.password = r.hashed_password.into_bytes();
                self.put_user(batch, &mut st, user);
                self.forget_tokens(Some(&r.name));
            }
            AuthRequest::UserGrantRole(r) => {
                let mut user = st.users.get(&r.user).ok_or(Error::UserNotFound)?.clone();
                if r.role != ROOT && !st.roles.contains_key(&r.role) {
                    return Err(Error::RoleNotFound);
                }
                if user.roles.contains(&r.role) {
                    return Ok(AuthApplied::Done);
                }
                user.roles.push(r.role);
                user.roles.sort();
                self.put_user(batch, &mut st, user);
            }
            AuthRequest::UserRevokeRole(r) => {
                if enabled && r.name == ROOT && r.role == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                let mut user = st.users.get(&r.name).ok_or(Error::UserNotFound)?.clone();
                let before = user.roles.len();
                user.roles.retain(|x| *x != r.role);
                if user.roles.len() == before {
                    return Err(Error::RoleNotGranted);
                }
                self.put_user(batch, &mut st, user);
            }
            AuthRequest::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(Error::RoleEmpty);
                }
                if st.roles.contains_key(&r.name) {
                    return Err(Error::RoleAlreadyExist);
                }
                let role = Role {
                    name: r.name.into_bytes(),
                    key_permission: Vec::new(),
                };
                self.put_role(batch, &mut st, role);
            }
            AuthRequest::RoleDelete(r) => {
                if enabled && r.role == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                if st.roles.remove(&r.role).is_none() {
                    return Err(Error::RoleNotFound);
                }
                batch.remove(&self.ks, role_key(&r.role));
                let holders: Vec<User> = st
                    .users
                    .values()
                    .filter(|u| u.roles.contains(&r.role))
                    .cloned()
                    .collect();
                for mut u in holders {
                    u.roles.retain(|x| *x != r.role);
                    self.put_user(batch, &mut st, u);
                }
            }
            AuthRequest::RoleGrantPermission(r) => {
                let perm = r.perm.ok_or(Error::PermissionNotGiven)?;
                if !perms::valid_range(&perm.key, &perm.range_end) {
                    return Err(Error::InvalidAuthMgmt);
                }
                let mut role = st.roles.get(&r.name).ok_or(Error::RoleNotFound)?.clone();
                match role
                    .key_permission
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => {
                        role.key_permission.push(perm);
                        role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                self.put_role(batch, &mut st, role);
            }
            AuthRequest::RoleRevokePermission(r) => {
                let mut role = st.roles.get(&r.role).ok_or(Error::RoleNotFound)?.clone();
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| !(p.key == r.key && p.range_end == r.range_end));
                if role.key_permission.len() == before {
                    return Err(Error::PermissionNotGranted);
                }
                self.put_role(batch, &mut st, role);
            }
        }
        st.revision += 1;
        batch.insert(&self.ks, REVISION, st.revision.to_be_bytes());
        Ok(AuthApplied::Done)
    }

    fn put_user(&self, batch: &mut OwnedWriteBatch, st: &mut State, user: User) {
        let name = String::from_utf8_lossy(&user.name).into_owned();
        batch.insert(&self.ks, user_key(&name), user.encode_to_vec());
        st.users.insert(name, user);
    }

    fn put_role(&self, batch: &mut OwnedWriteBatch, st: &mut State, role: Role) {
        let name = String::from_utf8_lossy(&role.name).into_owned();
        batch.insert(&self.ks, role_key(&name), role.encode_to_vec());
        st.roles.insert(name, role);
    }
}
