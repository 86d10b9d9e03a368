//! EC2 error codes and their HTTP statuses, and how the store's and the instance module's
//! errors become them. Codes and meanings are those of the EC2 API Reference, "Error codes for
//! the Amazon EC2 API"; the statuses are the ones EC2 sends (client errors 400, authentication
//! 401, authorisation 403, DryRun 412, server errors 500/503).

use crate::instance::InstanceError;
use crate::store::StoreError;

/// An error answered to the client as EC2's error document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
}

pub const AUTH_FAILURE: &str = "AuthFailure";
pub const REQUEST_EXPIRED: &str = "RequestExpired";
pub const UNAUTHORIZED_OPERATION: &str = "UnauthorizedOperation";
pub const INVALID_ACTION: &str = "InvalidAction";
pub const MISSING_ACTION: &str = "MissingAction";
pub const MISSING_PARAMETER: &str = "MissingParameter";
pub const UNKNOWN_PARAMETER: &str = "UnknownParameter";
pub const INVALID_PARAMETER_VALUE: &str = "InvalidParameterValue";
pub const INVALID_PARAMETER_COMBINATION: &str = "InvalidParameterCombination";
pub const MALFORMED_QUERY_STRING: &str = "MalformedQueryString";
pub const NO_SUCH_VERSION: &str = "NoSuchVersion";
pub const INVALID_PAGINATION_TOKEN: &str = "InvalidPaginationToken";
pub const DRY_RUN_OPERATION: &str = "DryRunOperation";
pub const INVALID_AMI_ID_NOT_FOUND: &str = "InvalidAMIID.NotFound";
pub const INVALID_AMI_ID_MALFORMED: &str = "InvalidAMIID.Malformed";
pub const INVALID_AMI_NAME_DUPLICATE: &str = "InvalidAMIName.Duplicate";
pub const INVALID_AMI_NAME_MALFORMED: &str = "InvalidAMIName.Malformed";
pub const INVALID_SNAPSHOT_NOT_FOUND: &str = "InvalidSnapshot.NotFound";
pub const INVALID_SNAPSHOT_ID_MALFORMED: &str = "InvalidSnapshotID.Malformed";
pub const INVALID_SNAPSHOT_IN_USE: &str = "InvalidSnapshot.InUse";
pub const INVALID_INSTANCE_ID_NOT_FOUND: &str = "InvalidInstanceID.NotFound";
pub const INVALID_INSTANCE_ID_MALFORMED: &str = "InvalidInstanceID.Malformed";
pub const INCORRECT_INSTANCE_STATE: &str = "IncorrectInstanceState";
pub const INVALID_KEY_PAIR_NOT_FOUND: &str = "InvalidKeyPair.NotFound";
pub const INVALID_KEY_PAIR_DUPLICATE: &str = "InvalidKeyPair.Duplicate";
pub const INVALID_KEY_PAIR_FORMAT: &str = "InvalidKeyPair.Format";
pub const INVALID_KEY_PAIR_ID_MALFORMED: &str = "InvalidKeyPairId.Malformed";
pub const RESOURCE_LIMIT_EXCEEDED: &str = "ResourceLimitExceeded";
pub const INVALID_ID: &str = "InvalidID";
pub const INVALID_USER_ID_MALFORMED: &str = "InvalidUserID.Malformed";
pub const INVALID_FILTER: &str = "InvalidFilter";
pub const INVALID_REGION_NOT_FOUND: &str = "InvalidRegion.NotFound";
pub const INVALID_ZONE_NOT_FOUND: &str = "InvalidZone.NotFound";
pub const UNSUPPORTED: &str = "Unsupported";
pub const REQUEST_ENTITY_TOO_LARGE: &str = "RequestEntityTooLarge";
pub const REQUEST_TIMEOUT: &str = "RequestTimeout";
pub const INTERNAL_ERROR: &str = "InternalError";
pub const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";
pub const REQUEST_LIMIT_EXCEEDED: &str = "RequestLimitExceeded";

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status EC2 answers this code with.
    pub fn status(&self) -> u16 {
        match self.code {
            AUTH_FAILURE => 401,
            UNAUTHORIZED_OPERATION => 403,
            DRY_RUN_OPERATION => 412,
            REQUEST_TIMEOUT => 408,
            REQUEST_ENTITY_TOO_LARGE => 413,
            INTERNAL_ERROR => 500,
            SERVICE_UNAVAILABLE => 503,
            _ => 400,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMETER_VALUE, message)
    }

    pub fn missing(param: &str) -> Self {
        Self::new(
            MISSING_PARAMETER,
            format!("The request must contain the parameter {param}"),
        )
    }
}

/// What kind of resource a failing request was about: it picks the `*.NotFound` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Image,
    Snapshot,
    Instance,
    KeyPair,
    Other,
}

impl Resource {
    fn not_found(self) -> &'static str {
        match self {
            Resource::Image => INVALID_AMI_ID_NOT_FOUND,
            Resource::Snapshot => INVALID_SNAPSHOT_NOT_FOUND,
            Resource::Instance => INVALID_INSTANCE_ID_NOT_FOUND,
            Resource::KeyPair => INVALID_KEY_PAIR_NOT_FOUND,
            Resource::Other => INVALID_PARAMETER_VALUE,
        }
    }
}

/// A store error as EC2 would answer it, for a request about `about`.
pub fn from_store(e: StoreError, about: Resource) -> ApiError {
    let msg = e.to_string();
    let code = match e {
        StoreError::NotFound(_) => about.not_found(),
        StoreError::Invalid(_) | StoreError::Ambiguous { .. } => INVALID_PARAMETER_VALUE,
        // EC2: "Not authorized for image:ami-…" is an AuthFailure; elsewhere the caller is
        // known but may not act.
        StoreError::PermissionDenied(_) if about == Resource::Image => AUTH_FAILURE,
        StoreError::PermissionDenied(_) => UNAUTHORIZED_OPERATION,
        StoreError::NameTaken { .. } => INVALID_AMI_NAME_DUPLICATE,
        StoreError::InUse(_) => match about {
            Resource::Snapshot => INVALID_SNAPSHOT_IN_USE,
            _ => INVALID_PARAMETER_VALUE,
        },
        StoreError::KeyNameTaken { .. } => INVALID_KEY_PAIR_DUPLICATE,
        StoreError::BadKey(_) => INVALID_KEY_PAIR_FORMAT,
        StoreError::LimitExceeded(_) => RESOURCE_LIMIT_EXCEEDED,
        StoreError::Source { .. }
        | StoreError::Bundle { .. }
        | StoreError::Conflict(_)
        | StoreError::Disk { .. } => INVALID_PARAMETER_VALUE,
        StoreError::Io { .. }
        | StoreError::NotWritable { .. }
        | StoreError::Corrupt { .. }
        | StoreError::Tool { .. }
        | StoreError::Volume(_) => INTERNAL_ERROR,
    };
    ApiError::new(code, msg)
}

/// An instance-module error as EC2 would answer it.
pub fn from_instance(e: InstanceError, about: Resource) -> ApiError {
    match e {
        InstanceError::Store(s) => from_store(s, about),
        InstanceError::NotFound(id) => ApiError::new(
            INVALID_INSTANCE_ID_NOT_FOUND,
            format!("The instance ID '{id}' does not exist"),
        ),
        e @ InstanceError::UnknownType { .. } => ApiError::invalid(e.to_string()),
        e @ (InstanceError::WrongState { .. } | InstanceError::NotStarted { .. }) => {
            ApiError::new(INCORRECT_INSTANCE_STATE, e.to_string())
        }
        e @ (InstanceError::Invalid(_) | InstanceError::Net(_)) => ApiError::invalid(e.to_string()),
        e @ (InstanceError::Volume(_)
        | InstanceError::Vmm(_)
        | InstanceError::Io { .. }
        | InstanceError::Outside(_)
        | InstanceError::NotOurProcess(_)) => ApiError::new(INTERNAL_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let nf = from_store(StoreError::NotFound("x".into()), Resource::Image);
        assert_eq!((nf.code, nf.status()), (INVALID_AMI_ID_NOT_FOUND, 400));
        let nf = from_store(StoreError::NotFound("x".into()), Resource::Snapshot);
        assert_eq!(nf.code, INVALID_SNAPSHOT_NOT_FOUND);
        let busy = from_store(StoreError::InUse("x".into()), Resource::Snapshot);
        assert_eq!(busy.code, INVALID_SNAPSHOT_IN_USE);
        let denied = from_store(StoreError::PermissionDenied("x".into()), Resource::Image);
        assert_eq!((denied.code, denied.status()), (AUTH_FAILURE, 401));
        let st = from_instance(
            InstanceError::WrongState {
                id: "i-1".into(),
                state: crate::instance::InstanceState::Terminated,
                why: "no".into(),
            },
            Resource::Instance,
        );
        assert_eq!(st.code, INCORRECT_INSTANCE_STATE);
        assert_eq!(ApiError::new(INTERNAL_ERROR, "").status(), 500);
        assert_eq!(ApiError::new(DRY_RUN_OPERATION, "").status(), 412);
    }
}
