//! Which instances DescribeInstances and DescribeInstanceStatus answer with: the caller's, from
//! the server's instance index ([`crate::instance::index`]), narrowed by `InstanceId.N` and
//! `Filter.N`.

use super::dispatch::Ctx;
use super::errors::{self, from_instance, ApiError, Resource};
use super::images::ec2_time;
use super::instance_xml::{reservation_id, state_code};
use super::params::Params;
use crate::instance::{record, Instance};
use std::sync::Arc;

/// DescribeInstances' and DescribeInstanceStatus' MaxResults range (EC2 API Reference).
const MAX_RESULTS: (i64, i64) = (5, 1000);

/// Filters DescribeInstances and DescribeInstanceStatus understand.
fn instance_matches(
    i: &Instance,
    name: &str,
    values: &[String],
    zone: &str,
) -> Result<bool, ApiError> {
    let any = |t: &str| {
        values
            .iter()
            .any(|v| crate::store::filter::glob_match(v, t))
    };
    Ok(match name {
        "instance-id" => any(&i.instance_id),
        "instance-state-name" => any(i.state.as_str()),
        "instance-state-code" => any(&state_code(i.state).to_string()),
        "image-id" => any(i.image.image_id.as_str()),
        "instance-type" => any(&i.instance_type),
        "owner-id" => any(i.owner_id.as_str()),
        "availability-zone" => any(zone),
        "architecture" => any(i.image.architecture.as_str()),
        "root-device-type" => any("ebs"),
        "launch-time" => any(&ec2_time(&i.launch_time)),
        "reservation-id" => any(&reservation_id(&i.instance_id)),
        "tag-key" => i.tags.keys().any(|k| any(k)),
        other => match other.strip_prefix("tag:") {
            Some(k) if !k.is_empty() => i.tags.get(k).is_some_and(|v| any(v)),
            _ => {
                return Err(ApiError::invalid(format!(
                    "The filter '{other}' is invalid"
                )))
            }
        },
    })
}

/// The caller's instances selected by `InstanceId.N` (each must exist) and `Filter.N`,
/// sorted by id.
pub(super) fn select(
    ctx: &Ctx,
    extra: impl Fn(&Instance) -> bool,
) -> Result<Vec<Arc<Instance>>, ApiError> {
    let p = ctx.params;
    let ids = p.list("InstanceId")?;
    let filters = p.filters()?;
    let all = ctx
        .api
        .instances
        .list(&ctx.api.store, &ctx.caller)
        .map_err(|e| from_instance(e, Resource::Instance))?;
    for id in &ids {
        if !record::looks_like_id(id) {
            return Err(ApiError::new(
                errors::INVALID_INSTANCE_ID_MALFORMED,
                format!("Invalid id: \"{id}\""),
            ));
        }
        if !all.iter().any(|i| i.instance_id == *id) {
            return Err(ApiError::new(
                errors::INVALID_INSTANCE_ID_NOT_FOUND,
                format!("The instance ID '{id}' does not exist"),
            ));
        }
    }
    let zone = ctx.api.zone();
    let mut out = Vec::new();
    for i in all {
        if !ids.is_empty() && !ids.contains(&i.instance_id) {
            continue;
        }
        let mut ok = extra(&i);
        for (name, values) in &filters {
            ok &= instance_matches(&i, name, values, &zone)?;
        }
        if ok {
            out.push(i);
        }
    }
    out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    Ok(out)
}

pub(super) fn max_results(p: &Params) -> Result<Option<i64>, ApiError> {
    let max = p.int("MaxResults", MAX_RESULTS.0, MAX_RESULTS.1)?;
    if max.is_some() && p.get("InstanceId.1").is_some() {
        return Err(ApiError::new(
            errors::INVALID_PARAMETER_COMBINATION,
            "The parameter instancesSet cannot be used with the parameter maxResults",
        ));
    }
    Ok(max)
}
