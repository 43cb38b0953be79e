//! etcd's client-visible errors, with the exact message strings and gRPC codes clients match on.
//!
//! Codes follow etcd 3.5 (`api/v3rpc/rpctypes/error.go`): transient errors are `Unavailable` so that
//! Go clients retry them. Every server layer returns [`Error`]; only the API faces turn it into a
//! wire status.

use tonic::{Code, Status};

/// An error that reaches a client, named after etcd's `rpctypes.ErrGRPC*` values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// The store is being replaced by a snapshot install; internal: readers wait it out.
    #[error("etcdserver: snapshot install in progress")]
    SnapshotInstalling,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: cluster ID mismatch")]
    ClusterIdMismatch,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// etcd's `lease.ErrNotPrimary`: a keepalive reached a leader that could not confirm it
    /// still leads. etcd has no gRPC mapping for it, so it leaves as `Unknown` with this text.
    #[error("not a primary lessor")]
    NotPrimary,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: watch canceled")]
    WatchCanceled,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// etcd's `concurrency.ErrElectionNotLeader` (Proclaim by a key that no longer leads).
    #[error("election: not leader")]
    ElectionNotLeader,
    /// etcd's `concurrency.ErrElectionNoLeader` (Leader of an election nobody entered).
    #[error("election: no leader")]
    ElectionNoLeader,
    /// etcd's `v3election.ErrMissingLeaderKey` (Proclaim or Resign without a leader key).
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// etcd's `concurrency.ErrSessionExpired` (a Lock whose lease ended while it waited).
    #[error("mutex: session is expired")]
    SessionExpired,
    /// The backend passed `--quota-backend-bytes`, or a NOSPACE alarm is raised.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    // Auth (etcd's `auth.Err*`, as their `ErrGRPC*` messages).
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// etcd's `auth.ErrNoPasswordUser`, which has no gRPC mapping (sent as `Unknown`).
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// Go's bcrypt refuses passwords over 72 bytes; etcd passes the error on (`Unknown`).
    #[error("bcrypt: password length exceeds 72 bytes")]
    PasswordTooLong,
    /// A feature pgraft does not offer yet: answered as gRPC `Unimplemented`, never faked.
    #[error("{0}")]
    Unimplemented(String),
    /// An error another member answered with (a forwarded request), passed on unchanged.
    #[error("{1}")]
    Remote(Code, String),
    /// A local failure (storage I/O): the node stops serving writes; reported as `Unknown`.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The gRPC status code etcd 3.5 sends for this error.
    pub fn code(&self) -> Code {
        use Error::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge | InvalidSortOption => Code::InvalidArgument,
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            MemberBadUrls => Code::InvalidArgument,
            LeaseExist
            | NotLeader
            | MemberExist
            | PeerUrlExist
            | MemberNotLearner
            | LearnerNotReady
            | TooManyLearners
            | BadLeaderTransferee
            | ClusterIdMismatch
            | NotEnoughStartedMembers => Code::FailedPrecondition,
            NotSupportedForLearner => Code::Unavailable,
            LeaderTransferTimeout | NotPrimary => Code::Unknown,
            // Plain Go errors in etcd's lock and election servers: grpc-go sends Unknown.
            ElectionNotLeader | ElectionNoLeader | MissingLeaderKey | SessionExpired => {
                Code::Unknown
            }
            Remote(code, _) => *code,
            // etcd maps this one to a client-side error type, so grpc-go sends Unknown.
            TooManyRequests => Code::Unknown,
            NoLeader | LeaderChanged | Stopped | Timeout | Unhealthy | SnapshotInstalling => {
                Code::Unavailable
            }
            WatchCanceled => Code::Cancelled,
            Corrupt => Code::DataLoss,
            NoSpace => Code::ResourceExhausted,
            Unimplemented(_) => Code::Unimplemented,
            UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt
            | AuthOldRevision => Code::InvalidArgument,
            RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound
            | RoleAlreadyExist | RoleNotFound | RoleNotGranted | PermissionNotGranted
            | AuthNotEnabled => Code::FailedPrecondition,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            NoPasswordUser | PasswordTooLong => Code::Unknown,
            Internal(_) => Code::Unknown,
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(format!("pgraft: storage error: {e}"))
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        Error::Remote(s.code(), s.message().to_string())
    }
}

impl From<fjall::Error> for Error {
    fn from(e: fjall::Error) -> Self {
        Error::internal(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
