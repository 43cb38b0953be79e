//! The answer to an RPC pgraft does not offer yet: gRPC `Unimplemented`, never a fake success.

use tonic::{Code, Status};

pub fn unimplemented(what: &str) -> Status {
    Status::new(
        Code::Unimplemented,
        format!("pgraft: {what} is not implemented yet"),
    )
}
