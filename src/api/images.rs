//! Image actions: DescribeImages, CreateImage, CopyImage, DeregisterImage,
//! Describe/Modify/ResetImageAttribute.

use super::dispatch::Ctx;
use super::errors::{self, from_instance, from_store, ApiError, Resource};
use super::params::page;
use super::xml::Xml;
use crate::instance::{create_image, record};
use crate::store::accounts::can_see;
use crate::store::manifest::{validate_name, validate_tags};
use crate::store::{AccountId, Image, ImageFilter, ImageId, NoProgress};
use std::collections::{BTreeMap, BTreeSet};

/// DescribeImages' MaxResults range (EC2 API Reference).
const IMAGES_MAX_RESULTS: (i64, i64) = (1, 1000);
/// The launch-permission group meaning "everyone".
const GROUP_ALL: &str = "all";

/// Parse an image id, as EC2 answers a malformed one.
pub fn image_id(s: &str) -> Result<ImageId, ApiError> {
    ImageId::parse(s).map_err(|_| {
        ApiError::new(
            errors::INVALID_AMI_ID_MALFORMED,
            format!("Invalid id: \"{s}\" (expecting \"ami-...\")"),
        )
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        errors::INVALID_AMI_ID_NOT_FOUND,
        format!("The image id '[{id}]' does not exist"),
    )
}

/// An image the caller may see, by id (another account's private image is "not found").
fn visible_image(ctx: &Ctx, id: &str) -> Result<Image, ApiError> {
    let id = image_id(id)?;
    ctx.api
        .store
        .resolve_image(&ctx.caller, id.as_str())
        .map_err(|e| match e {
            crate::store::StoreError::NotFound(_) => not_found(id.as_str()),
            e => from_store(e, Resource::Image),
        })
}

pub fn account(s: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(s).map_err(|_| {
        ApiError::new(
            errors::INVALID_USER_ID_MALFORMED,
            format!("User ID '{s}' is invalid"),
        )
    })
}

/// One image as DescribeImages shows it.
pub fn render_image(x: &mut Xml, img: &Image) {
    x.leaf("imageId", img.image_id.as_str())
        .leaf("imageLocation", &format!("{}/{}", img.owner_id, img.name))
        .leaf("imageState", img.state.as_str())
        .leaf("imageOwnerId", img.owner_id.as_str())
        .leaf("creationDate", &ec2_time(&img.creation_date))
        .bool("isPublic", img.public)
        .leaf("architecture", img.architecture.as_str())
        .leaf("imageType", "machine")
        .leaf("name", &img.name);
    if !img.description.is_empty() {
        x.leaf("description", &img.description);
    }
    if !img.product_codes.is_empty() {
        render_product_codes(x, &img.product_codes);
    }
    x.leaf("rootDeviceType", "ebs")
        .leaf("rootDeviceName", &img.root_device_name)
        .list("blockDeviceMapping", &img.block_device_mappings, |x, m| {
            x.leaf("deviceName", &m.device_name)
                .open("ebs")
                .leaf("snapshotId", m.ebs.snapshot_id.as_str())
                .num("volumeSize", m.ebs.volume_size)
                .bool("deleteOnTermination", m.ebs.delete_on_termination)
                .leaf("volumeType", "standard")
                .bool("encrypted", false)
                .close("ebs");
        })
        .leaf("virtualizationType", "hvm")
        .leaf("platformDetails", "Linux/UNIX")
        .leaf("usageOperation", "RunInstances");
    if let Some(src) = &img.source_image_id {
        x.leaf("sourceImageId", src.as_str());
    }
    if !img.tags.is_empty() {
        x.tags(&img.tags);
    }
}

/// `productCodes` as EC2 writes them (`item` with `productCode` and `type`; empty for none).
pub fn render_product_codes(x: &mut Xml, codes: &[crate::store::product_codes::ProductCode]) {
    x.list("productCodes", codes, |x, c| {
        x.leaf("productCode", &c.product_code_id)
            .leaf("type", &c.product_code_type);
    });
}

/// RFC 3339 seconds as EC2 prints times: with milliseconds (`2024-01-02T03:04:05.000Z`).
pub fn ec2_time(rfc3339: &str) -> String {
    match rfc3339.strip_suffix('Z') {
        Some(t) if !t.contains('.') => format!("{t}.000Z"),
        _ => rfc3339.to_string(),
    }
}

pub fn describe_images(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let ids = p.list("ImageId")?;
    let owners = p.list("Owner")?;
    let exec_by = p.list("ExecutableBy")?;
    let max = p.int("MaxResults", IMAGES_MAX_RESULTS.0, IMAGES_MAX_RESULTS.1)?;
    if max.is_some() && !ids.is_empty() {
        return Err(ApiError::new(
            errors::INVALID_PARAMETER_COMBINATION,
            "The parameter ImageIds cannot be used with the parameter MaxResults",
        ));
    }
    let mut filter = ImageFilter::default();
    for (name, values) in p.filters()? {
        filter.add(&name, values).map_err(|_| {
            ApiError::new(
                errors::INVALID_PARAMETER_VALUE,
                format!("The filter '{name}' is invalid"),
            )
        })?;
    }
    // Owners: self, account ids, and EC2's aliases (amazon, aws-marketplace: no such images here).
    let mut owner_ids: Vec<AccountId> = Vec::new();
    let mut owner_aliases = false;
    for o in &owners {
        match o.as_str() {
            "self" => owner_ids.push(ctx.caller.clone()),
            "amazon" | "aws-marketplace" | "aws-backup-vault" => owner_aliases = true,
            o => owner_ids.push(account(o)?),
        }
    }
    let caller = &ctx.caller;
    let executable_by = |img: &Image| {
        exec_by.is_empty()
            || exec_by.iter().any(|e| match e.as_str() {
                GROUP_ALL => img.public,
                "self" => img.owner_id == *caller || img.launch_permissions.contains(caller),
                id => {
                    img.owner_id.as_str() == id
                        || img.launch_permissions.iter().any(|a| a.as_str() == id)
                }
            })
    };
    // Shared, not copied: the store's in-memory index, current as of the last commit.
    let all = ctx
        .api
        .store
        .images()
        .map_err(|e| from_store(e, Resource::Image))?;
    // In image id order, as the paging token needs.
    let mut images = all.select(caller, &crate::store::OwnerFilter::All, &filter);
    if !ids.is_empty() {
        let want: BTreeSet<ImageId> = ids.iter().map(|i| image_id(i)).collect::<Result<_, _>>()?;
        // Every id asked for must exist and be visible, whatever the filters say.
        for id in &want {
            if !all.get(id).is_some_and(|i| can_see(caller, i)) {
                return Err(not_found(id.as_str()));
            }
        }
        images.retain(|i| want.contains(&i.image_id));
    }
    images.retain(|i| (owners.is_empty() || owner_ids.contains(&i.owner_id)) && executable_by(i));
    if !owners.is_empty() && owner_ids.is_empty() && owner_aliases {
        images.clear();
    }
    let (images, next) = page(images, |i| i.image_id.as_str(), p.get("NextToken"), max)?;
    x.list("imagesSet", &images, |x, i| render_image(x, i));
    x.leaf_opt("nextToken", next.as_deref());
    Ok(())
}

/// The tags of `TagSpecification`s for `image`; `snapshot` ones are refused (snapshots have
/// no tags here).
fn image_tags(ctx: &Ctx) -> Result<BTreeMap<String, String>, ApiError> {
    let tags: BTreeMap<String, String> = ctx
        .params
        .tag_specifications(&["image"])?
        .into_iter()
        .map(|(_, k, v)| (k, v))
        .collect();
    validate_tags(&tags).map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(tags)
}

fn image_name(name: &str) -> Result<(), ApiError> {
    validate_name(name)
        .map_err(|e| ApiError::new(errors::INVALID_AMI_NAME_MALFORMED, e.to_string()))
}

fn tag_image(ctx: &Ctx, id: &ImageId, tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if tags.is_empty() {
        return Ok(());
    }
    ctx.api
        .store
        .modify_image(&ctx.caller, id, None, tags, &[])
        .map(|_| ())
        .map_err(|e| from_store(e, Resource::Image))
}

pub fn create_image(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let id = p.required("InstanceId")?;
    let name = p.required("Name")?;
    image_name(name)?;
    let description = p.get("Description").unwrap_or("");
    let no_reboot = p.bool("NoReboot")?.unwrap_or(false);
    let tags = image_tags(ctx)?;
    let store = &ctx.api.store;
    let inst = record::load(store, &ctx.caller, id).map_err(|e| instance_error(id, e))?;
    let (img, _report) = create_image::create_image(
        store,
        &ctx.caller,
        &inst,
        name,
        description,
        no_reboot,
        &NoProgress,
    )
    .map_err(|e| from_instance(e, Resource::Image))?;
    tag_image(ctx, &img.image_id, &tags)?;
    x.leaf("imageId", img.image_id.as_str());
    Ok(())
}

/// An instance error, with a malformed id answered as EC2 does.
pub fn instance_error(id: &str, e: crate::instance::InstanceError) -> ApiError {
    if !record::looks_like_id(id) {
        return ApiError::new(
            errors::INVALID_INSTANCE_ID_MALFORMED,
            format!("Invalid id: \"{id}\""),
        );
    }
    from_instance(e, Resource::Instance)
}

pub fn copy_image(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let src = visible_image(ctx, p.required("SourceImageId")?)?;
    let region = p.required("SourceRegion")?;
    if region != ctx.api.region {
        return Err(ApiError::new(
            errors::INVALID_REGION_NOT_FOUND,
            format!(
                "Region '{region}' is not this server's ({})",
                ctx.api.region
            ),
        ));
    }
    let name = p.required("Name")?;
    image_name(name)?;
    let mut tags = image_tags(ctx)?;
    if p.bool("CopyImageTags")?.unwrap_or(false) {
        for (k, v) in &src.tags {
            tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
        validate_tags(&tags).map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    let img = ctx
        .api
        .store
        .copy_image(&ctx.caller, &src, name, p.get("Description"))
        .map_err(|e| from_store(e, Resource::Image))?;
    tag_image(ctx, &img.image_id, &tags)?;
    x.leaf("imageId", img.image_id.as_str());
    Ok(())
}

pub fn deregister_image(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let img = visible_image(ctx, p.required("ImageId")?)?;
    let delete = p.bool("DeleteAssociatedSnapshots")?.unwrap_or(false);
    let report = ctx
        .api
        .store
        .deregister_image(&ctx.caller, &img.image_id, delete)
        .map_err(|e| from_store(e, Resource::Image))?;
    x.bool("return", true);
    if delete {
        let mut rows: Vec<(String, &str)> = report
            .deleted_snapshots
            .iter()
            .map(|s| (s.to_string(), "success"))
            .collect();
        rows.extend(
            report
                .kept_snapshots
                .iter()
                .map(|(s, _)| (s.to_string(), "error-generic")),
        );
        x.list("deleteSnapshotResultSet", &rows, |x, (s, code)| {
            x.leaf("snapshotId", s).leaf("returnCode", code);
        });
    }
    Ok(())
}

fn owned_image(ctx: &Ctx, id: &str) -> Result<Image, ApiError> {
    let img = visible_image(ctx, id)?;
    if img.owner_id != ctx.caller {
        return Err(ApiError::new(
            errors::AUTH_FAILURE,
            format!("Not authorized for image:{}", img.image_id),
        ));
    }
    Ok(img)
}

pub fn describe_image_attribute(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let id = p.required("ImageId")?;
    let attr = p.required("Attribute")?;
    let img = match attr {
        "launchPermission" => owned_image(ctx, id)?,
        _ => visible_image(ctx, id)?,
    };
    x.leaf("imageId", img.image_id.as_str());
    match attr {
        "description" => {
            x.open("description");
            if !img.description.is_empty() {
                x.leaf("value", &img.description);
            }
            x.close("description");
        }
        "launchPermission" => {
            x.open("launchPermission");
            if img.public {
                x.open("item").leaf("group", GROUP_ALL).close("item");
            }
            for a in &img.launch_permissions {
                x.open("item").leaf("userId", a.as_str()).close("item");
            }
            x.close("launchPermission");
        }
        "blockDeviceMapping" => {
            x.list("blockDeviceMapping", &img.block_device_mappings, |x, m| {
                x.leaf("deviceName", &m.device_name)
                    .open("ebs")
                    .leaf("snapshotId", m.ebs.snapshot_id.as_str())
                    .num("volumeSize", m.ebs.volume_size)
                    .bool("deleteOnTermination", m.ebs.delete_on_termination)
                    .close("ebs");
            });
        }
        "productCodes" => render_product_codes(x, &img.product_codes),
        "kernel" | "ramdisk" => {}
        other => {
            return Err(ApiError::invalid(format!(
                "Value ({other}) for parameter attribute is invalid. Supported: description, \
                 launchPermission, blockDeviceMapping, kernel, ramdisk, productCodes"
            )))
        }
    }
    Ok(())
}

/// Who a launch-permission change names: accounts, and whether the group `all` is among them.
fn permission_targets(
    items: &[crate::api::params::Params],
    users: &[String],
    groups: &[String],
) -> Result<(Vec<AccountId>, bool), ApiError> {
    let mut accounts = Vec::new();
    let mut all = false;
    let mut group = |g: &str| {
        if g == GROUP_ALL {
            all = true;
            Ok(())
        } else {
            Err(ApiError::invalid(format!(
                "Invalid launch permission group '{g}' (only 'all')"
            )))
        }
    };
    for it in items {
        if let Some(u) = it.get("UserId") {
            accounts.push(account(u)?);
        }
        if let Some(g) = it.get("Group") {
            group(g)?;
        }
    }
    for g in groups {
        group(g)?;
    }
    for u in users {
        accounts.push(account(u)?);
    }
    Ok((accounts, all))
}

pub fn modify_image_attribute(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let img = owned_image(ctx, p.required("ImageId")?)?;
    let store = &ctx.api.store;
    let attr = p.get("Attribute");
    let lp = p.sub("LaunchPermission");
    let (add, remove) = (lp.structs("Add")?, lp.structs("Remove")?);
    let users = p.list("UserId")?;
    let groups = p.list("UserGroup")?;
    let mut add = permission_targets(&add, &[], &[])?;
    let mut remove = permission_targets(&remove, &[], &[])?;
    if !users.is_empty() || !groups.is_empty() {
        if attr != Some("launchPermission") {
            return Err(ApiError::new(
                errors::INVALID_PARAMETER_COMBINATION,
                "UserId and UserGroup need Attribute=launchPermission",
            ));
        }
        let t = permission_targets(&[], &users, &groups)?;
        match p.required("OperationType")? {
            "add" => add = (t.0, t.1 || add.1),
            "remove" => remove = (t.0, t.1 || remove.1),
            o => return Err(ApiError::invalid(format!("Invalid OperationType '{o}'"))),
        }
    }
    let description = match (p.get("Description.Value"), attr, p.get("Value")) {
        (Some(d), _, _) => Some(d),
        (None, Some("description"), Some(v)) => Some(v),
        _ => None,
    };
    let changes_permissions = !add.0.is_empty() || add.1 || !remove.0.is_empty() || remove.1;
    if description.is_none() && !changes_permissions {
        return Err(ApiError::missing("LaunchPermission or Description"));
    }
    let id = &img.image_id;
    let err = |e| from_store(e, Resource::Image);
    if !add.0.is_empty() || add.1 {
        store
            .share_image(&ctx.caller, id, &add.0, add.1)
            .map_err(err)?;
    }
    if !remove.0.is_empty() || remove.1 {
        store
            .unshare_image(&ctx.caller, id, &remove.0, remove.1)
            .map_err(err)?;
    }
    if let Some(d) = description {
        store
            .modify_image(&ctx.caller, id, Some(d), &BTreeMap::new(), &[])
            .map_err(err)?;
    }
    x.bool("return", true);
    Ok(())
}

pub fn reset_image_attribute(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let img = owned_image(ctx, p.required("ImageId")?)?;
    let err = |e| from_store(e, Resource::Image);
    let store = &ctx.api.store;
    match p.required("Attribute")? {
        "launchPermission" => {
            store
                .unshare_image(&ctx.caller, &img.image_id, &img.launch_permissions, true)
                .map_err(err)?;
        }
        "description" => {
            store
                .modify_image(&ctx.caller, &img.image_id, Some(""), &BTreeMap::new(), &[])
                .map_err(err)?;
        }
        other => {
            return Err(ApiError::invalid(format!(
            "Value ({other}) for parameter attribute is invalid (launchPermission or description)"
        )))
        }
    }
    x.bool("return", true);
    Ok(())
}
