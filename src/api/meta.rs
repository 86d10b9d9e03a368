//! DescribeInstanceTypes, CreateTags / DeleteTags / DescribeTags, DescribeRegions and
//! DescribeAvailabilityZones.

use super::dispatch::Ctx;
use super::errors::{self, from_instance, from_store, ApiError, Resource};
use super::images::image_id;
use super::params::page;
use super::xml::Xml;
use crate::instance::{record, tags, types};
use crate::store::filter::glob_match;
use crate::store::manifest::validate_tags;
use crate::store::{ImageId, OwnerFilter};
use std::collections::BTreeMap;

/// DescribeInstanceTypes' MaxResults range (EC2 API Reference).
const TYPES_MAX_RESULTS: (i64, i64) = (5, 100);
/// DescribeTags' MaxResults range (EC2 API Reference).
const TAGS_MAX_RESULTS: (i64, i64) = (5, 1000);

fn any(values: &[String], text: &str) -> bool {
    values.iter().any(|v| glob_match(v, text))
}

pub fn describe_instance_types(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let names = p.list("InstanceType")?;
    let filters = p.filters()?;
    let max = p.int("MaxResults", TYPES_MAX_RESULTS.0, TYPES_MAX_RESULTS.1)?;
    let all = types::all();
    for n in &names {
        if !all.iter().any(|t| t.name == *n) {
            return Err(ApiError::new(
                "InvalidInstanceType",
                format!("The following supplied instance types do not exist: [{n}]"),
            ));
        }
    }
    let mut kept = Vec::new();
    for t in all {
        if !names.is_empty() && !names.contains(&t.name) {
            continue;
        }
        let mut ok = true;
        for (name, values) in &filters {
            ok &= match name.as_str() {
                "instance-type" => any(values, &t.name),
                "vcpu-info.default-vcpus" => any(values, &t.vcpus.to_string()),
                "memory-info.size-in-mib" => any(values, &t.memory_mib.to_string()),
                "processor-info.supported-architecture" => any(values, "x86_64"),
                "current-generation" => any(values, "true"),
                other => {
                    return Err(ApiError::invalid(format!(
                        "The filter '{other}' is invalid"
                    )))
                }
            };
        }
        if ok {
            kept.push(t);
        }
    }
    kept.sort_by(|a, b| a.name.cmp(&b.name));
    let (kept, next) = page(kept, |t| t.name.as_str(), p.get("NextToken"), max)?;
    x.list("instanceTypeSet", &kept, |x, t| {
        x.leaf("instanceType", &t.name)
            .bool("currentGeneration", true)
            .open("supportedRootDeviceTypes")
            .leaf("item", "ebs")
            .close("supportedRootDeviceTypes")
            .open("supportedVirtualizationTypes")
            .leaf("item", "hvm")
            .close("supportedVirtualizationTypes")
            .bool("bareMetal", false)
            .open("processorInfo")
            .open("supportedArchitectures")
            .leaf("item", "x86_64")
            .close("supportedArchitectures")
            .close("processorInfo")
            .open("vCpuInfo")
            .num("defaultVCpus", t.vcpus)
            .num("defaultCores", t.vcpus)
            .num("defaultThreadsPerCore", 1)
            .close("vCpuInfo")
            .open("memoryInfo")
            .num("sizeInMiB", t.memory_mib)
            .close("memoryInfo");
    });
    x.leaf_opt("nextToken", next.as_deref());
    Ok(())
}

/// A resource CreateTags/DeleteTags can name.
enum Taggable {
    Image(ImageId),
    Instance(String),
}

fn taggable(ctx: &Ctx, id: &str) -> Result<Taggable, ApiError> {
    let store = &ctx.api.store;
    if id.starts_with("ami-") {
        let iid = image_id(id)?;
        let img = store
            .resolve_image(&ctx.caller, iid.as_str())
            .map_err(|_| {
                ApiError::new(
                    errors::INVALID_AMI_ID_NOT_FOUND,
                    format!("The image id '[{id}]' does not exist"),
                )
            })?;
        if img.owner_id != ctx.caller {
            return Err(ApiError::new(
                errors::AUTH_FAILURE,
                format!("Not authorized for image:{id}"),
            ));
        }
        return Ok(Taggable::Image(iid));
    }
    if id.starts_with("i-") {
        record::load(store, &ctx.caller, id).map_err(|e| super::images::instance_error(id, e))?;
        return Ok(Taggable::Instance(id.to_string()));
    }
    Err(ApiError::new(
        errors::INVALID_ID,
        format!("The ID '{id}' is not valid (amivm tags images and instances)"),
    ))
}

fn resources(ctx: &Ctx) -> Result<Vec<Taggable>, ApiError> {
    let ids = ctx.params.list("ResourceId")?;
    if ids.is_empty() {
        return Err(ApiError::missing("ResourceId"));
    }
    ids.iter().map(|id| taggable(ctx, id)).collect()
}

pub fn create_tags(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let targets = resources(ctx)?;
    let add: BTreeMap<String, String> = ctx
        .params
        .tags("Tag")?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect();
    if add.is_empty() {
        return Err(ApiError::missing("Tag"));
    }
    validate_tags(&add).map_err(|e| ApiError::invalid(e.to_string()))?;
    let store = &ctx.api.store;
    for t in targets {
        match t {
            Taggable::Image(id) => {
                store
                    .modify_image(&ctx.caller, &id, None, &add, &[])
                    .map_err(|e| from_store(e, Resource::Image))?;
            }
            Taggable::Instance(id) => {
                tags::update(store, &ctx.caller, &id, &add, &[])
                    .map_err(|e| from_instance(e, Resource::Instance))?;
            }
        }
    }
    x.bool("return", true);
    Ok(())
}

pub fn delete_tags(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let targets = resources(ctx)?;
    let given = ctx.params.tags("Tag")?;
    let store = &ctx.api.store;
    for t in targets {
        match t {
            Taggable::Image(id) => {
                let img = store
                    .image(&id)
                    .map_err(|e| from_store(e, Resource::Image))?;
                // No Tag: all of them. Key with a value: only when the value is that.
                let keys: Vec<String> = img
                    .tags
                    .iter()
                    .filter(|(k, v)| {
                        given.is_empty()
                            || given
                                .iter()
                                .any(|(gk, gv)| gk == *k && gv.as_ref().is_none_or(|gv| gv == *v))
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                store
                    .modify_image(&ctx.caller, &id, None, &BTreeMap::new(), &keys)
                    .map_err(|e| from_store(e, Resource::Image))?;
            }
            Taggable::Instance(id) => {
                let remove = if given.is_empty() {
                    let inst = record::load(store, &ctx.caller, &id)
                        .map_err(|e| from_instance(e, Resource::Instance))?;
                    inst.tags.into_keys().map(|k| (k, None)).collect()
                } else {
                    given.clone()
                };
                tags::update(store, &ctx.caller, &id, &BTreeMap::new(), &remove)
                    .map_err(|e| from_instance(e, Resource::Instance))?;
            }
        }
    }
    x.bool("return", true);
    Ok(())
}

/// One row of DescribeTags.
struct TagRow {
    sort_key: String,
    resource_id: String,
    resource_type: &'static str,
    key: String,
    value: String,
}

pub fn describe_tags(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let filters = p.filters()?;
    let max = p.int("MaxResults", TAGS_MAX_RESULTS.0, TAGS_MAX_RESULTS.1)?;
    let store = &ctx.api.store;
    let mut rows = Vec::new();
    let mut push = |id: &str, rt: &'static str, tags: &BTreeMap<String, String>| {
        for (k, v) in tags {
            rows.push(TagRow {
                sort_key: format!("{id} {k}"),
                resource_id: id.to_string(),
                resource_type: rt,
                key: k.clone(),
                value: v.clone(),
            });
        }
    };
    let images = store
        .list_images(&ctx.caller, &OwnerFilter::Caller, &Default::default())
        .map_err(|e| from_store(e, Resource::Image))?;
    for i in &images {
        push(i.image_id.as_str(), "image", &i.tags);
    }
    let insts = ctx
        .api
        .instances
        .list(store, &ctx.caller)
        .map_err(|e| from_instance(e, Resource::Instance))?;
    for i in &insts {
        push(&i.instance_id, "instance", &i.tags);
    }
    let mut kept = Vec::new();
    for r in rows {
        let mut ok = true;
        for (name, values) in &filters {
            ok &= match name.as_str() {
                "resource-id" => any(values, &r.resource_id),
                "resource-type" => any(values, r.resource_type),
                "key" => any(values, &r.key),
                "value" => any(values, &r.value),
                other => {
                    return Err(ApiError::invalid(format!(
                        "The filter '{other}' is invalid"
                    )))
                }
            };
        }
        if ok {
            kept.push(r);
        }
    }
    kept.sort_by(|a, b| a.sort_key.cmp(&b.sort_key));
    let (kept, next) = page(kept, |r| r.sort_key.as_str(), p.get("NextToken"), max)?;
    x.list("tagSet", &kept, |x, r| {
        x.leaf("resourceId", &r.resource_id)
            .leaf("resourceType", r.resource_type)
            .leaf("key", &r.key)
            .leaf("value", &r.value);
    });
    x.leaf_opt("nextToken", next.as_deref());
    Ok(())
}

pub fn describe_regions(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let region = &ctx.api.region;
    for n in p.list("RegionName")? {
        if n != *region {
            return Err(ApiError::new(
                errors::INVALID_PARAMETER_VALUE,
                format!("Invalid region: {n} (this server is {region})"),
            ));
        }
    }
    let mut ok = true;
    for (name, values) in p.filters()? {
        ok &= match name.as_str() {
            "region-name" => any(&values, region),
            "endpoint" => any(&values, &ctx.api.endpoint),
            "opt-in-status" => any(&values, "opt-in-not-required"),
            other => {
                return Err(ApiError::invalid(format!(
                    "The filter '{other}' is invalid"
                )))
            }
        };
    }
    let regions: Vec<&String> = if ok { vec![region] } else { vec![] };
    x.list("regionInfo", &regions, |x, r| {
        x.leaf("regionName", r)
            .leaf("regionEndpoint", &ctx.api.endpoint)
            .leaf("optInStatus", "opt-in-not-required");
    });
    Ok(())
}

pub fn describe_availability_zones(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let zone = ctx.api.zone();
    let zone_id = format!("{}-az1", ctx.api.region);
    for n in p.list("ZoneName")? {
        if n != zone {
            return Err(ApiError::new(
                errors::INVALID_ZONE_NOT_FOUND,
                format!("The zone '{n}' does not exist (this server has {zone})"),
            ));
        }
    }
    for n in p.list("ZoneId")? {
        if n != zone_id {
            return Err(ApiError::new(
                errors::INVALID_ZONE_NOT_FOUND,
                format!("The zone ID '{n}' does not exist (this server has {zone_id})"),
            ));
        }
    }
    let mut ok = true;
    for (name, values) in p.filters()? {
        ok &= match name.as_str() {
            "zone-name" => any(&values, &zone),
            "zone-id" => any(&values, &zone_id),
            "region-name" => any(&values, &ctx.api.region),
            "state" => any(&values, "available"),
            "zone-type" => any(&values, "availability-zone"),
            other => {
                return Err(ApiError::invalid(format!(
                    "The filter '{other}' is invalid"
                )))
            }
        };
    }
    let zones: Vec<&String> = if ok { vec![&zone] } else { vec![] };
    x.list("availabilityZoneInfo", &zones, |x, z| {
        x.leaf("zoneName", z)
            .leaf("zoneId", &zone_id)
            .leaf("zoneState", "available")
            .leaf("regionName", &ctx.api.region)
            .leaf("groupName", &ctx.api.region)
            .leaf("networkBorderGroup", &ctx.api.region)
            .leaf("optInStatus", "opt-in-not-required")
            .leaf("zoneType", "availability-zone")
            .open("messageSet")
            .close("messageSet");
    });
    Ok(())
}
