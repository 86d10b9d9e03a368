//! One request, from its bytes to its answer: authenticate (SigV4), parse the parameters,
//! find the action, refuse parameters it does not take, honour DryRun, run the handler.

use super::errors::{self, ApiError};
use super::form::parse_form;
use super::params::Params;
use super::sigv4::{self, SigError};
use super::xml::{error_document, Xml};
use super::{images, instances, key_pairs, meta, presign, snapshots, Api};
use crate::store::AccountId;

/// A received HTTP request, as the dispatcher needs it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Header names and values in order (values that are not text are left out).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The answer: an HTTP status and an XML body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// What a handler gets.
pub struct Ctx<'a> {
    pub api: &'a Api,
    pub caller: AccountId,
    pub params: &'a Params,
}

type Handler = fn(&Ctx, &mut Xml) -> Result<(), ApiError>;

/// One action: its name, its handler and the parameters it takes (a name `X` also allows
/// `X.anything`).
struct Action {
    name: &'static str,
    handler: Handler,
    params: &'static [&'static str],
}

/// Parameters every action takes.
const COMMON_PARAMS: &[&str] = &["Action", "Version", "DryRun"];

const ACTIONS: &[Action] = &[
    Action {
        name: "DescribeImages",
        handler: images::describe_images,
        params: &[
            "ImageId",
            "Owner",
            "ExecutableBy",
            "Filter",
            "MaxResults",
            "NextToken",
            "IncludeDeprecated",
            "IncludeDisabled",
        ],
    },
    Action {
        name: "CreateImage",
        handler: images::create_image,
        params: &[
            "InstanceId",
            "Name",
            "Description",
            "NoReboot",
            "TagSpecification",
        ],
    },
    Action {
        name: "CopyImage",
        handler: images::copy_image,
        params: &[
            "SourceImageId",
            "SourceRegion",
            "Name",
            "Description",
            "ClientToken",
            "CopyImageTags",
            "TagSpecification",
        ],
    },
    Action {
        name: "DeregisterImage",
        handler: images::deregister_image,
        params: &["ImageId", "DeleteAssociatedSnapshots"],
    },
    Action {
        name: "DescribeImageAttribute",
        handler: images::describe_image_attribute,
        params: &["ImageId", "Attribute"],
    },
    Action {
        name: "ModifyImageAttribute",
        handler: images::modify_image_attribute,
        params: &[
            "ImageId",
            "Attribute",
            "OperationType",
            "UserId",
            "UserGroup",
            "Value",
            "Description",
            "LaunchPermission",
        ],
    },
    Action {
        name: "ResetImageAttribute",
        handler: images::reset_image_attribute,
        params: &["ImageId", "Attribute"],
    },
    Action {
        name: "DescribeSnapshots",
        handler: snapshots::describe_snapshots,
        params: &[
            "SnapshotId",
            "Owner",
            "RestorableBy",
            "Filter",
            "MaxResults",
            "NextToken",
        ],
    },
    Action {
        name: "DeleteSnapshot",
        handler: snapshots::delete_snapshot,
        params: &["SnapshotId"],
    },
    Action {
        name: "RunInstances",
        handler: instances::run_instances,
        params: &[
            "ImageId",
            "InstanceType",
            "MinCount",
            "MaxCount",
            "UserData",
            "KeyName",
            "TagSpecification",
            "InstanceInitiatedShutdownBehavior",
            "ClientToken",
            "Placement",
        ],
    },
    Action {
        name: "DescribeInstances",
        handler: instances::describe_instances,
        params: &["InstanceId", "Filter", "MaxResults", "NextToken"],
    },
    Action {
        name: "DescribeInstanceStatus",
        handler: instances::describe_instance_status,
        params: &[
            "InstanceId",
            "Filter",
            "MaxResults",
            "NextToken",
            "IncludeAllInstances",
        ],
    },
    Action {
        name: "StartInstances",
        handler: instances::start_instances,
        params: &["InstanceId", "AdditionalInfo"],
    },
    Action {
        name: "StopInstances",
        handler: instances::stop_instances,
        params: &["InstanceId", "Force", "Hibernate"],
    },
    Action {
        name: "RebootInstances",
        handler: instances::reboot_instances,
        params: &["InstanceId"],
    },
    Action {
        name: "TerminateInstances",
        handler: instances::terminate_instances,
        params: &["InstanceId", "Force"],
    },
    Action {
        name: "GetConsoleOutput",
        handler: instances::get_console_output,
        params: &["InstanceId", "Latest"],
    },
    Action {
        name: "DescribeInstanceTypes",
        handler: meta::describe_instance_types,
        params: &["InstanceType", "Filter", "MaxResults", "NextToken"],
    },
    Action {
        name: "CreateTags",
        handler: meta::create_tags,
        params: &["ResourceId", "Tag"],
    },
    Action {
        name: "DeleteTags",
        handler: meta::delete_tags,
        params: &["ResourceId", "Tag"],
    },
    Action {
        name: "DescribeTags",
        handler: meta::describe_tags,
        params: &["Filter", "MaxResults", "NextToken"],
    },
    Action {
        name: "CreateKeyPair",
        handler: key_pairs::create_key_pair,
        params: &["KeyName", "KeyType", "KeyFormat", "TagSpecification"],
    },
    Action {
        name: "ImportKeyPair",
        handler: key_pairs::import_key_pair,
        params: &["KeyName", "PublicKeyMaterial", "TagSpecification"],
    },
    Action {
        name: "DescribeKeyPairs",
        handler: key_pairs::describe_key_pairs,
        params: &["KeyName", "KeyPairId", "Filter", "IncludePublicKey"],
    },
    Action {
        name: "DeleteKeyPair",
        handler: key_pairs::delete_key_pair,
        params: &["KeyName", "KeyPairId"],
    },
    Action {
        name: "DescribeRegions",
        handler: meta::describe_regions,
        params: &["RegionName", "Filter", "AllRegions"],
    },
    Action {
        name: "DescribeAvailabilityZones",
        handler: meta::describe_availability_zones,
        params: &["ZoneName", "ZoneId", "Filter", "AllAvailabilityZones"],
    },
];

/// The names of the actions the server implements.
pub fn action_names() -> impl Iterator<Item = &'static str> {
    ACTIONS.iter().map(|a| a.name)
}

/// The answer to an error.
pub fn error_response(e: &ApiError, request_id: &str) -> HttpResponse {
    HttpResponse {
        status: e.status(),
        body: error_document(e.code, &e.message, request_id),
    }
}

/// Whether `name` is `allowed` or `allowed.something`.
fn param_allowed(name: &str, allowed: &[&str]) -> bool {
    let head = name.split('.').next().unwrap_or(name);
    COMMON_PARAMS.contains(&head) || allowed.contains(&head)
}

/// A SigV4 failure as EC2 answers it.
pub fn auth_error(e: &SigError) -> ApiError {
    match e {
        SigError::Expired(_) => {
            ApiError::new(errors::REQUEST_EXPIRED, format!("Request has expired: {e}"))
        }
        SigError::Missing | SigError::UnknownKey | SigError::Mismatch => ApiError::new(
            errors::AUTH_FAILURE,
            format!("AWS was not able to validate the provided access credentials: {e}"),
        ),
        SigError::Malformed(_) | SigError::Scope(_) => {
            ApiError::new(errors::AUTH_FAILURE, e.to_string())
        }
    }
}

/// Answer one request. `now` is the server's clock (seconds since the Unix epoch).
pub fn handle(api: &Api, req: &HttpRequest, now: i64, request_id: &str) -> HttpResponse {
    match run(api, req, now, request_id) {
        Ok(body) => HttpResponse { status: 200, body },
        Err(e) => error_response(&e, request_id),
    }
}

fn run(api: &Api, req: &HttpRequest, now: i64, request_id: &str) -> Result<String, ApiError> {
    if req.method != "POST" && req.method != "GET" {
        return Err(ApiError::new(
            errors::INVALID_ACTION,
            format!(
                "The HTTP method {} is not supported (use POST or GET)",
                req.method
            ),
        ));
    }
    let sreq = sigv4::Request {
        method: &req.method,
        path: &req.path,
        query: &req.query,
        headers: &req.headers,
        body: &req.body,
    };
    let expect = sigv4::Expect {
        region: &api.region,
        service: super::SERVICE,
        now,
    };
    let mut key = None;
    let mut lookup_failed = None;
    let presigned = presign::is_presigned(&req.query);
    let lookup = |key_id: &str| match api.store.access_key(key_id) {
        Ok(k) => {
            let secret = k.as_ref().map(|k| k.secret_access_key.clone());
            key = k;
            secret
        }
        Err(e) => {
            lookup_failed = Some(e);
            None
        }
    };
    let verified = if presigned {
        presign::verify_presigned(&sreq, &expect, lookup)
    } else {
        sigv4::verify(&sreq, &expect, lookup)
    };
    if let Some(e) = lookup_failed {
        return Err(ApiError::new(
            errors::INTERNAL_ERROR,
            format!("reading the access keys: {e}"),
        ));
    }
    verified.map_err(|e| auth_error(&e))?;
    let caller = key
        .map(|k| k.account_id)
        .ok_or_else(|| auth_error(&SigError::UnknownKey))?;

    let mut map = parse_form(req.query.as_bytes())
        .map_err(|e| ApiError::new(errors::MALFORMED_QUERY_STRING, e.to_string()))?;
    if req.method == "POST" {
        let body = parse_form(&req.body)
            .map_err(|e| ApiError::new(errors::MALFORMED_QUERY_STRING, e.to_string()))?;
        for (k, v) in body {
            if map.insert(k.clone(), v).is_some() {
                return Err(ApiError::new(
                    errors::MALFORMED_QUERY_STRING,
                    format!("parameter '{k}' is given more than once"),
                ));
            }
        }
    }
    if presigned {
        // The signature's own parameters are not the action's.
        map.retain(|k, _| !k.starts_with(presign::PARAM_PREFIX));
    }
    let params = Params::new(map);
    let name = params.get("Action").ok_or_else(|| {
        ApiError::new(
            errors::MISSING_ACTION,
            "The request must contain the parameter Action",
        )
    })?;
    let action = ACTIONS.iter().find(|a| a.name == name).ok_or_else(|| {
        ApiError::new(
            errors::INVALID_ACTION,
            format!("The action {name} is not valid for this web service."),
        )
    })?;
    let version = params.required("Version")?;
    if !is_api_version(version) {
        return Err(ApiError::new(
            errors::NO_SUCH_VERSION,
            format!("The requested version ({version}) of service AmazonEC2 does not exist"),
        ));
    }
    if let Some(bad) = params.names().find(|n| !param_allowed(n, action.params)) {
        return Err(ApiError::new(
            errors::UNKNOWN_PARAMETER,
            format!("The parameter {bad} is not recognized"),
        ));
    }
    if params.bool("DryRun")? == Some(true) {
        return Err(ApiError::new(
            errors::DRY_RUN_OPERATION,
            "Request would have succeeded, but DryRun flag is set.",
        ));
    }
    let ctx = Ctx {
        api,
        caller,
        params: &params,
    };
    let mut xml = Xml::response(action.name, request_id);
    (action.handler)(&ctx, &mut xml)?;
    Ok(xml.finish_response(action.name))
}

/// EC2 API versions are dates, `YYYY-MM-DD`; the responses follow 2016-11-15 whichever is
/// asked (later versions only add to it).
fn is_api_version(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_against_the_action() {
        let run = ACTIONS.iter().find(|a| a.name == "RunInstances").unwrap();
        assert!(param_allowed("TagSpecification.1.Tag.1.Key", run.params));
        assert!(param_allowed("DryRun", run.params));
        assert!(!param_allowed("SubnetId", run.params));
        assert!(!param_allowed("ImageIdX", run.params));
    }

    #[test]
    fn versions() {
        assert!(is_api_version("2016-11-15"));
        assert!(!is_api_version("2016-11-1"));
        assert!(!is_api_version("latest"));
    }

    #[test]
    fn auth_errors() {
        assert_eq!(auth_error(&SigError::Missing).code, errors::AUTH_FAILURE);
        assert_eq!(auth_error(&SigError::Mismatch).status(), 401);
        assert_eq!(
            auth_error(&SigError::Expired("x".into())).code,
            errors::REQUEST_EXPIRED
        );
        let mut names: Vec<_> = action_names().collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ACTIONS.len());
    }
}
