//! Instance actions: RunInstances, DescribeInstances, DescribeInstanceStatus, Start, Stop,
//! Reboot and TerminateInstances, GetConsoleOutput.
//!
//! Instances run in background processes the server starts ([`super::supervisor`]). Stop,
//! terminate and reboot take as long as the guest's shutdown, so they run on a thread of their
//! own and the answer is the state change under way, as EC2 answers (`stopping`,
//! `shutting-down`); clients poll DescribeInstances (boto3's waiters do).

use super::dispatch::Ctx;
use super::errors::{self, from_instance, from_store, ApiError, Resource};
use super::images::{ec2_time, image_id, instance_error};
use super::instance_select::{max_results, select};
use super::instance_xml::{render_reservation, render_state};
use super::params::{page, Params};
use super::xml::Xml;
use crate::instance::detach::DetachOptions;
use crate::instance::launch::{self, LaunchRequest};
use crate::instance::metadata::{self, MetadataOptions};
use crate::instance::{lifecycle, record, tags, types, Instance, InstanceState, ShutdownBehavior};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

/// Most instances one RunInstances starts: EC2's long-standing default On-Demand limit of 20
/// instances per region.
pub const MAX_INSTANCES_PER_REQUEST: i64 = 20;
/// RunInstances' UserData limit: 16 KiB before base64 (EC2 User Guide, "Instance user data").
pub const MAX_USER_DATA: usize = 16 * 1024;
/// GetConsoleOutput returns the most recent 64 KiB (EC2 API Reference, GetConsoleOutput).
pub const CONSOLE_OUTPUT_BYTES: u64 = 64 * 1024;
/// The stack of the threads that stop, terminate or reboot an instance.
const ACTION_STACK: usize = 256 * 1024;

/// The decoded UserData (served by the metadata service), checked.
fn user_data_bytes(b64: &str) -> Result<Vec<u8>, ApiError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| ApiError::invalid("Invalid BASE64 encoding of user data"))?;
    if raw.len() > MAX_USER_DATA {
        return Err(ApiError::invalid(format!(
            "User data is limited to {MAX_USER_DATA} bytes"
        )));
    }
    Ok(raw)
}

/// RunInstances' MetadataOptions (`HttpTokens`, `HttpPutResponseHopLimit`, `HttpEndpoint`
/// enabled only).
fn metadata_options(p: &Params) -> Result<MetadataOptions, ApiError> {
    let sub = p.sub("MetadataOptions");
    let mut o = MetadataOptions::default();
    for name in sub.names() {
        let v = sub.get(name).unwrap_or_default();
        match name {
            "HttpTokens" => {
                o.http_tokens = metadata::parse_tokens(v).map_err(|e| {
                    ApiError::invalid(format!("Invalid value for MetadataOptions.HttpTokens: {e}"))
                })?
            }
            "HttpPutResponseHopLimit" => {
                o.http_put_response_hop_limit = metadata::parse_hop_limit(v).map_err(|e| {
                    ApiError::invalid(format!(
                        "Invalid value for MetadataOptions.HttpPutResponseHopLimit: {e}"
                    ))
                })?
            }
            "HttpEndpoint" if v == "enabled" => {}
            _ => {
                return Err(ApiError::new(
                    errors::UNSUPPORTED,
                    format!("MetadataOptions.{name}={v} is not supported here"),
                ))
            }
        }
    }
    Ok(o)
}

/// The decoded UserData, as words for the kernel command line (the sample and test guests
/// read their instructions there; the metadata service serves the bytes as they are).
fn user_data(b64: &str) -> Result<String, ApiError> {
    let raw = user_data_bytes(b64)?;
    let text = String::from_utf8(raw).map_err(|_| {
        ApiError::invalid("User data must be UTF-8 text (it is added to the kernel command line)")
    })?;
    if text.chars().any(|c| c.is_control() && !c.is_whitespace()) {
        return Err(ApiError::invalid(
            "User data must be printable text (it is added to the kernel command line)",
        ));
    }
    Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn instance_tags(p: &Params) -> Result<BTreeMap<String, String>, ApiError> {
    let tags: BTreeMap<String, String> = p
        .tag_specifications(&["instance"])?
        .into_iter()
        .map(|(_, k, v)| (k, v))
        .collect();
    crate::store::manifest::validate_tags(&tags).map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(tags)
}

fn detach_options(ctx: &Ctx) -> DetachOptions {
    DetachOptions {
        exe: ctx.api.exe.clone(),
        log_level: ctx.api.log_level.clone(),
        timeout: None,
        expect: None,
        first_launch: true,
        extra_args: Vec::new(),
    }
}

pub fn run_instances(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let store = &ctx.api.store;
    let ami = image_id(p.required("ImageId")?)?;
    let itype = types::lookup(p.get("InstanceType").unwrap_or(types::DEFAULT_TYPE))
        .map_err(|e| ApiError::invalid(format!("Invalid value for InstanceType: {e}")))?;
    let min = p
        .int("MinCount", 1, i64::MAX)?
        .ok_or_else(|| ApiError::missing("MinCount"))?;
    let max = p
        .int("MaxCount", 1, i64::MAX)?
        .ok_or_else(|| ApiError::missing("MaxCount"))?;
    if min > max {
        return Err(ApiError::invalid("MinCount must be at most MaxCount"));
    }
    let count = max.min(MAX_INSTANCES_PER_REQUEST);
    if count < min {
        return Err(ApiError::new(
            "InstanceLimitExceeded",
            format!("You may launch at most {MAX_INSTANCES_PER_REQUEST} instances in one request"),
        ));
    }
    if let Some(k) = p.get("KeyName") {
        // Checked here for EC2's code; launch::create looks it up again for the record.
        store
            .key_pair(&ctx.caller, k)
            .map_err(|e| from_store(e, Resource::KeyPair))?;
    }
    let placement = p.sub("Placement");
    for name in placement.names() {
        match (name, placement.get(name)) {
            ("AvailabilityZone", Some(z)) if z == ctx.api.zone() => {}
            ("Tenancy", Some("default")) => {}
            _ => {
                return Err(ApiError::new(
                    errors::UNSUPPORTED,
                    format!(
                        "Placement.{name} is not supported here (zone {})",
                        ctx.api.zone()
                    ),
                ))
            }
        }
    }
    let append = p.get("UserData").map(user_data).transpose()?;
    let user_data = p.get("UserData").map(user_data_bytes).transpose()?;
    let metadata_options = metadata_options(p)?;
    let shutdown_behavior = match p.get("InstanceInitiatedShutdownBehavior") {
        None | Some("stop") => ShutdownBehavior::Stop,
        Some("terminate") => ShutdownBehavior::Terminate,
        Some(o) => {
            return Err(ApiError::invalid(format!(
                "Invalid value '{o}' for InstanceInitiatedShutdownBehavior (stop or terminate)"
            )))
        }
    };
    let tags = instance_tags(p)?;
    let req = LaunchRequest {
        image: ami.to_string(),
        instance_type: itype,
        name: None,
        append: append.filter(|a| !a.is_empty()),
        user_data,
        metadata_options,
        // `serve --network`: user (one passt per instance) unless the server was told none.
        network: ctx.api.network.clone(),
        publish: Vec::new(),
        shutdown_behavior,
        remove_on_stop: false,
        serial_log: None,
        key_name: p.get("KeyName").map(str::to_string),
        region: None,
        // Each instance boots in its own detached process.
        boots_here: false,
    };
    // Create every instance (pending, run locks held) before starting any, so a failure
    // leaves nothing behind.
    let mut created = Vec::new();
    let mut failure = None;
    for _ in 0..count {
        let made = launch::create(store, &ctx.caller, &req).and_then(|(inst, lock)| {
            let inst = if tags.is_empty() {
                inst
            } else {
                tags::update(store, &ctx.caller, &inst.instance_id, &tags, &[])?
            };
            Ok((inst, lock))
        });
        match made {
            Ok(m) => created.push(m),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failure {
        for (inst, lock) in created {
            if let Err(e) = launch::remove(store, &inst.instance_id) {
                log::warn!(
                    "{}: cannot remove after a failed launch: {e}",
                    inst.instance_id
                );
            }
            drop(lock);
        }
        return Err(match e {
            crate::instance::InstanceError::Store(crate::store::StoreError::NotFound(_)) => {
                ApiError::new(
                    errors::INVALID_AMI_ID_NOT_FOUND,
                    format!("The image id '[{ami}]' does not exist"),
                )
            }
            e => from_instance(e, Resource::Image),
        });
    }
    let opts = detach_options(ctx);
    let mut started = Vec::new();
    for (inst, lock) in created {
        if let Err(e) = ctx.api.supervisor.start(store, &inst, lock, &opts) {
            log::warn!("{}: {e}", inst.instance_id);
        }
        started.push(
            record::get(store, &inst.instance_id)
                .ok()
                .flatten()
                .unwrap_or(inst),
        );
    }
    render_reservation(x, &ctx.caller, &started, &ctx.api.zone());
    Ok(())
}

pub fn describe_instances(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let max = max_results(p)?;
    let insts = select(ctx, |_| true)?;
    let (insts, next) = page(insts, |i| i.instance_id.as_str(), p.get("NextToken"), max)?;
    let zone = ctx.api.zone();
    x.list("reservationSet", &insts, |x, i| {
        render_reservation(x, &ctx.caller, std::slice::from_ref(&**i), &zone)
    });
    x.leaf_opt("nextToken", next.as_deref());
    Ok(())
}

pub fn describe_instance_status(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let max = max_results(p)?;
    let include_all = p.bool("IncludeAllInstances")?.unwrap_or(false);
    let insts = select(ctx, |i| include_all || i.state == InstanceState::Running)?;
    let (insts, next) = page(insts, |i| i.instance_id.as_str(), p.get("NextToken"), max)?;
    let zone = ctx.api.zone();
    x.list("instanceStatusSet", &insts, |x, i| {
        let status = if i.state == InstanceState::Running {
            "ok"
        } else {
            "not-applicable"
        };
        x.leaf("instanceId", &i.instance_id)
            .leaf("availabilityZone", &zone);
        render_state(x, "instanceState", i.state);
        for tag in ["systemStatus", "instanceStatus"] {
            x.open(tag).leaf("status", status).open("details");
            if i.state == InstanceState::Running {
                x.open("item")
                    .leaf("name", "reachability")
                    .leaf("status", "passed")
                    .close("item");
            }
            x.close("details").close(tag);
        }
        x.open("eventsSet").close("eventsSet");
    });
    x.leaf_opt("nextToken", next.as_deref());
    Ok(())
}

/// The caller's instances named by `InstanceId.N` (at least one; every one must exist).
fn named_instances(ctx: &Ctx) -> Result<Vec<Instance>, ApiError> {
    let ids = ctx.params.list("InstanceId")?;
    if ids.is_empty() {
        return Err(ApiError::missing("InstanceId"));
    }
    ids.iter()
        .map(|id| record::load(&ctx.api.store, &ctx.caller, id).map_err(|e| instance_error(id, e)))
        .collect()
}

fn render_changes(x: &mut Xml, changes: &[(String, InstanceState, InstanceState)]) {
    x.list("instancesSet", changes, |x, (id, prev, cur)| {
        x.leaf("instanceId", id);
        render_state(x, "currentState", *cur);
        render_state(x, "previousState", *prev);
    });
}

/// Run `f` on a thread of its own (a stop waits for the guest); failures are logged, and the
/// instance's record tells the outcome.
fn in_background(what: &str, f: impl FnOnce() -> Result<(), String> + Send + 'static) {
    let what = what.to_string();
    let spawned = std::thread::Builder::new()
        .name(what.clone())
        .stack_size(ACTION_STACK)
        .spawn(move || {
            if let Err(e) = f() {
                log::warn!("{what}: {e}");
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start a thread for {e}");
    }
}

pub fn start_instances(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let insts = named_instances(ctx)?;
    for i in &insts {
        if matches!(
            i.state,
            InstanceState::ShuttingDown | InstanceState::Terminated | InstanceState::Stopping
        ) {
            return Err(ApiError::new(
                errors::INCORRECT_INSTANCE_STATE,
                format!(
                    "The instance '{}' is not in a state from which it can be started.",
                    i.instance_id
                ),
            ));
        }
    }
    let store = &ctx.api.store;
    let opts = DetachOptions {
        first_launch: false,
        ..detach_options(ctx)
    };
    let mut changes = Vec::new();
    for i in insts {
        if i.state != InstanceState::Stopped {
            changes.push((i.instance_id, i.state, i.state));
            continue;
        }
        let (inst, lock) = lifecycle::start(store, &ctx.caller, &i.instance_id)
            .map_err(|e| from_instance(e, Resource::Instance))?;
        ctx.api
            .supervisor
            .start(store, &inst, lock, &opts)
            .map_err(|e| from_instance(e, Resource::Instance))?;
        changes.push((
            i.instance_id,
            InstanceState::Stopped,
            InstanceState::Pending,
        ));
    }
    render_changes(x, &changes);
    Ok(())
}

pub fn stop_instances(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let force = ctx.params.bool("Force")?.unwrap_or(false);
    if ctx.params.bool("Hibernate")? == Some(true) {
        return Err(ApiError::new(
            errors::UNSUPPORTED,
            "Hibernation is not supported",
        ));
    }
    let insts = named_instances(ctx)?;
    for i in &insts {
        if matches!(
            i.state,
            InstanceState::ShuttingDown | InstanceState::Terminated
        ) {
            return Err(ApiError::new(
                errors::INCORRECT_INSTANCE_STATE,
                format!(
                    "The instance '{}' is not in a state from which it can be stopped.",
                    i.instance_id
                ),
            ));
        }
    }
    let mut changes = Vec::new();
    for i in insts {
        let cur = match i.state {
            InstanceState::Stopped => InstanceState::Stopped,
            _ => {
                let (store, caller, id) = (
                    ctx.api.store.clone(),
                    ctx.caller.clone(),
                    i.instance_id.clone(),
                );
                in_background(&format!("stop {id}"), move || {
                    lifecycle::stop(&store, &caller, &id, force)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
                InstanceState::Stopping
            }
        };
        changes.push((i.instance_id, i.state, cur));
    }
    render_changes(x, &changes);
    Ok(())
}

pub fn terminate_instances(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let force = ctx.params.bool("Force")?.unwrap_or(false);
    let insts = named_instances(ctx)?;
    let mut changes = Vec::new();
    for i in insts {
        let cur = match i.state {
            InstanceState::Terminated => InstanceState::Terminated,
            _ => {
                let (store, caller, id) = (
                    ctx.api.store.clone(),
                    ctx.caller.clone(),
                    i.instance_id.clone(),
                );
                in_background(&format!("terminate {id}"), move || {
                    lifecycle::terminate(&store, &caller, &id, force)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
                InstanceState::ShuttingDown
            }
        };
        changes.push((i.instance_id, i.state, cur));
    }
    render_changes(x, &changes);
    Ok(())
}

pub fn reboot_instances(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let insts = named_instances(ctx)?;
    for i in &insts {
        if i.state != InstanceState::Running {
            return Err(ApiError::new(
                errors::INCORRECT_INSTANCE_STATE,
                format!("The instance '{}' is not running.", i.instance_id),
            ));
        }
    }
    let opts = DetachOptions {
        first_launch: false,
        ..detach_options(ctx)
    };
    for i in insts {
        let (store, caller, id) = (
            ctx.api.store.clone(),
            ctx.caller.clone(),
            i.instance_id.clone(),
        );
        let opts = opts.clone();
        let sup = ctx.api.supervisor.clone();
        in_background(&format!("reboot {id}"), move || {
            lifecycle::stop(&store, &caller, &id, false).map_err(|e| e.to_string())?;
            let (inst, lock) = lifecycle::start(&store, &caller, &id).map_err(|e| e.to_string())?;
            sup.start(&store, &inst, lock, &opts)
                .map_err(|e| e.to_string())
        });
    }
    x.bool("return", true);
    Ok(())
}

pub fn get_console_output(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let id = ctx.params.required("InstanceId")?;
    let inst = record::load(&ctx.api.store, &ctx.caller, id).map_err(|e| instance_error(id, e))?;
    let mut buf = Vec::new();
    let console = inst
        .dir(&ctx.api.store)
        .and_then(|d| crate::instance::launch::open_console_log(&d));
    match console {
        Ok(Some(mut f)) => {
            let len = f
                .metadata()
                .map_err(|e| ApiError::new(errors::INTERNAL_ERROR, format!("console log: {e}")))?
                .len();
            f.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_OUTPUT_BYTES)))
                .and_then(|_| f.take(CONSOLE_OUTPUT_BYTES).read_to_end(&mut buf))
                .map_err(|e| ApiError::new(errors::INTERNAL_ERROR, format!("console log: {e}")))?;
        }
        Ok(None) => {}
        Err(e) => {
            return Err(ApiError::new(
                errors::INTERNAL_ERROR,
                format!("console log: {e}"),
            ))
        }
    }
    x.leaf("instanceId", &inst.instance_id)
        .leaf(
            "timestamp",
            &ec2_time(&crate::store::manifest::now_rfc3339()),
        )
        .leaf(
            "output",
            &base64::engine::general_purpose::STANDARD.encode(&buf),
        );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::instance_xml::{reservation_id, state_code};
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn metadata_options_map_to_the_record() {
        use crate::net::imds::HttpTokens;
        assert_eq!(
            metadata_options(&params(&[])).unwrap(),
            MetadataOptions::default()
        );
        let o = metadata_options(&params(&[
            ("MetadataOptions.HttpTokens", "required"),
            ("MetadataOptions.HttpPutResponseHopLimit", "3"),
            ("MetadataOptions.HttpEndpoint", "enabled"),
        ]))
        .unwrap();
        assert_eq!(o.http_tokens, HttpTokens::Required);
        assert_eq!(o.http_put_response_hop_limit, 3);
        for (k, v) in [
            ("MetadataOptions.HttpTokens", "sometimes"),
            ("MetadataOptions.HttpPutResponseHopLimit", "0"),
            ("MetadataOptions.HttpEndpoint", "disabled"),
            ("MetadataOptions.InstanceMetadataTags", "enabled"),
        ] {
            assert!(metadata_options(&params(&[(k, v)])).is_err(), "{k}={v}");
        }
        let raw = b"\x1f\x8b binary cloud-init";
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(user_data_bytes(&b64).unwrap(), raw);
    }

    #[test]
    fn user_data_becomes_command_line_words() {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            user_data(&b("exit=halt\n  blk=getid\n")).unwrap(),
            "exit=halt blk=getid"
        );
        assert!(user_data("not base64!").is_err());
        assert!(user_data(&b("a\u{1}b")).is_err());
        assert!(user_data(&b(&"x".repeat(MAX_USER_DATA + 1))).is_err());
    }

    #[test]
    fn state_codes_are_ec2s() {
        assert_eq!(state_code(InstanceState::Running), 16);
        assert_eq!(state_code(InstanceState::Stopped), 80);
        assert_eq!(reservation_id("i-0123456789abcdef0"), "r-0123456789abcdef0");
    }
}
