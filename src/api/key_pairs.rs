//! Key pair actions: CreateKeyPair, ImportKeyPair, DescribeKeyPairs, DeleteKeyPair, over the
//! store's key pairs (the ones `amivm key-pair` manages).

use super::dispatch::Ctx;
use super::errors::{self, from_store, ApiError, Resource};
use super::images::ec2_time;
use super::xml::Xml;
use crate::store::filter::glob_match;
use crate::store::{KeyPair, KeyPairId, KeyPairRef, StoreError};
use base64::Engine;
use std::collections::BTreeMap;

/// The filters DescribeKeyPairs understands (EC2 API Reference; `fingerprint` as moto adds).
const FILTER_NAMES: &[&str] = &[
    "key-name",
    "key-pair-id",
    "key-type",
    "fingerprint",
    "tag:KEY",
    "tag-key",
];

fn key_pair_id(s: &str) -> Result<KeyPairId, ApiError> {
    KeyPairId::parse(s).map_err(|_| {
        ApiError::new(
            errors::INVALID_KEY_PAIR_ID_MALFORMED,
            format!("Invalid id: \"{s}\" (expecting \"key-...\")"),
        )
    })
}

fn store_error(e: StoreError) -> ApiError {
    from_store(e, Resource::KeyPair)
}

fn tags(ctx: &Ctx) -> Result<BTreeMap<String, String>, ApiError> {
    Ok(ctx
        .params
        .tag_specifications(&["key-pair"])?
        .into_iter()
        .map(|(_, k, v)| (k, v))
        .collect())
}

fn render_tags(x: &mut Xml, k: &KeyPair) {
    if !k.tags.is_empty() {
        x.tags(&k.tags);
    }
}

pub fn create_key_pair(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let name = p.required("KeyName")?;
    // EC2's default type is rsa; amivm creates ed25519 keys only, so an absent KeyType means
    // ed25519 here and an explicit rsa is refused.
    match p.get("KeyType") {
        None | Some("ed25519") => {}
        Some("rsa") => {
            return Err(ApiError::new(
                errors::UNSUPPORTED,
                "amivm creates ed25519 key pairs only: use KeyType ed25519, or import an RSA key with ImportKeyPair",
            ))
        }
        Some(o) => return Err(ApiError::invalid(format!("Invalid value '{o}' for KeyType"))),
    }
    match p.get("KeyFormat") {
        None | Some("pem") => {}
        Some("ppk") => {
            return Err(ApiError::new(
                errors::UNSUPPORTED,
                "amivm gives private keys in OpenSSH format only (KeyFormat pem)",
            ))
        }
        Some(o) => {
            return Err(ApiError::invalid(format!(
                "Invalid value '{o}' for KeyFormat"
            )))
        }
    }
    let tags = tags(ctx)?;
    let made = ctx
        .api
        .store
        .create_key_pair(&ctx.caller, name, tags)
        .map_err(store_error)?;
    let k = &made.key_pair;
    x.leaf("keyName", &k.key_name)
        .leaf("keyFingerprint", &k.key_fingerprint)
        .leaf("keyMaterial", &made.key.private_openssh)
        .leaf("keyPairId", k.key_pair_id.as_str());
    render_tags(x, k);
    Ok(())
}

pub fn import_key_pair(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let name = p.required("KeyName")?;
    let material = p.required("PublicKeyMaterial")?;
    // botocore sends the key's bytes base64-encoded (a blob); a client that sends the key's
    // text as is is understood too (OpenSSH text is never valid base64: it has a space).
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(material)
        .unwrap_or_else(|_| material.as_bytes().to_vec());
    let tags = tags(ctx)?;
    let k = ctx
        .api
        .store
        .import_key_pair(&ctx.caller, name, &bytes, tags)
        .map_err(store_error)?;
    x.leaf("keyFingerprint", &k.key_fingerprint)
        .leaf("keyName", &k.key_name)
        .leaf("keyPairId", k.key_pair_id.as_str());
    render_tags(x, &k);
    Ok(())
}

/// Whether `k` passes the filter `name` with any of `values`.
fn filter_matches(k: &KeyPair, name: &str, values: &[String]) -> bool {
    let any = |s: &str| values.iter().any(|v| glob_match(v, s));
    match name {
        "key-name" => any(&k.key_name),
        "key-pair-id" => any(k.key_pair_id.as_str()),
        "key-type" => any(k.key_type.as_str()),
        "fingerprint" => any(&k.key_fingerprint),
        "tag-key" => k.tags.keys().any(|t| any(t)),
        other => other
            .strip_prefix("tag:")
            .and_then(|t| k.tags.get(t))
            .is_some_and(|v| any(v)),
    }
}

pub fn describe_key_pairs(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let names = p.list("KeyName")?;
    let ids = p
        .list("KeyPairId")?
        .iter()
        .map(|i| key_pair_id(i))
        .collect::<Result<Vec<_>, _>>()?;
    let include_public = p.bool("IncludePublicKey")?.unwrap_or(false);
    let filters = p.filters()?;
    for (name, _) in &filters {
        let known = FILTER_NAMES.contains(&name.as_str())
            || name.strip_prefix("tag:").is_some_and(|t| !t.is_empty());
        if !known {
            return Err(ApiError::new(
                errors::INVALID_PARAMETER_VALUE,
                format!("The filter '{name}' is invalid"),
            ));
        }
    }
    let all = ctx
        .api
        .store
        .list_key_pairs(&ctx.caller)
        .map_err(store_error)?;
    // Every name and id asked for must exist, whatever the filters say.
    for n in &names {
        if !all.iter().any(|k| k.key_name == *n) {
            return Err(ApiError::new(
                errors::INVALID_KEY_PAIR_NOT_FOUND,
                format!("The key pair '{n}' does not exist"),
            ));
        }
    }
    for id in &ids {
        if !all.iter().any(|k| k.key_pair_id == *id) {
            return Err(ApiError::new(
                errors::INVALID_KEY_PAIR_NOT_FOUND,
                format!("The key pair '{id}' does not exist"),
            ));
        }
    }
    let selected: Vec<&KeyPair> = all
        .iter()
        .filter(|k| names.is_empty() || names.contains(&k.key_name))
        .filter(|k| ids.is_empty() || ids.contains(&k.key_pair_id))
        .filter(|k| filters.iter().all(|(n, v)| filter_matches(k, n, v)))
        .collect();
    x.list("keySet", &selected, |x, k| {
        x.leaf("keyPairId", k.key_pair_id.as_str())
            .leaf("keyType", k.key_type.as_str())
            .leaf("keyName", &k.key_name)
            .leaf("keyFingerprint", &k.key_fingerprint);
        if include_public {
            x.leaf("publicKey", &k.public_key);
        }
        x.leaf("createTime", &ec2_time(&k.create_time));
        render_tags(x, k);
    });
    Ok(())
}

pub fn delete_key_pair(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let which = match (p.get("KeyName"), p.get("KeyPairId")) {
        (_, Some(id)) => KeyPairRef::Id(key_pair_id(id)?),
        (Some(name), None) => KeyPairRef::Name(name.to_string()),
        (None, None) => return Err(ApiError::missing("KeyName")),
    };
    match ctx.api.store.delete_key_pair(&ctx.caller, &which) {
        Ok(k) => {
            x.bool("return", true)
                .leaf("keyPairId", k.key_pair_id.as_str());
        }
        // EC2 answers success for a key name that does not exist (deleting is idempotent).
        Err(StoreError::NotFound(_)) if matches!(which, KeyPairRef::Name(_)) => {
            x.bool("return", true);
        }
        Err(e) => return Err(store_error(e)),
    }
    Ok(())
}
