//! `image ls` selection: `--owner` and EC2-style `--filter NAME=VALUE`.
//!
//! Supported filter names (as in EC2 `DescribeImages`): `name`, `image-id`, `state`,
//! `is-public`, `owner-id`, `architecture`, `description`, `tag:KEY`, `tag-key`. Values may use
//! `*` (any run of characters) and `?` (one character). Several values for one name
//! (`--filter name=a --filter name=b`, or `name=a,b`) match any of them; different names must
//! all match.

use super::accounts::can_see;
use super::error::{Result, StoreError};
use super::ids::AccountId;
use super::manifest::Image;
use std::collections::BTreeMap;

/// The filter names `image ls` understands.
pub const FILTER_NAMES: &[&str] = &[
    "name",
    "image-id",
    "state",
    "is-public",
    "owner-id",
    "architecture",
    "description",
    "tag:KEY",
    "tag-key",
];

/// `--owner`: whose images to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerFilter {
    /// Everything visible to the caller (the default).
    All,
    /// Images the caller owns.
    Caller,
    /// Images of this account that the caller can see.
    Account(AccountId),
}

impl OwnerFilter {
    /// Parse `self`, `all` or an account id.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "self" => Ok(OwnerFilter::Caller),
            "all" => Ok(OwnerFilter::All),
            id => AccountId::parse(id).map(OwnerFilter::Account).map_err(|_| {
                StoreError::Invalid(format!(
                    "--owner '{s}': use self, all or a 12-digit account id"
                ))
            }),
        }
    }
}

/// What one condition looks at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Field {
    Name,
    ImageId,
    State,
    IsPublic,
    OwnerId,
    Architecture,
    Description,
    TagKey,
    /// `tag:KEY`: the value of tag `KEY`.
    Tag(String),
}

impl Field {
    fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "name" => Field::Name,
            "image-id" => Field::ImageId,
            "state" => Field::State,
            "is-public" => Field::IsPublic,
            "owner-id" => Field::OwnerId,
            "architecture" => Field::Architecture,
            "description" => Field::Description,
            "tag-key" => Field::TagKey,
            other => match other.strip_prefix("tag:") {
                Some(key) if !key.is_empty() => Field::Tag(key.to_string()),
                _ => return None,
            },
        })
    }
}

/// A set of `--filter` conditions.
#[derive(Debug, Clone, Default)]
pub struct ImageFilter {
    /// One entry per field, with the values any of which it may match.
    conds: BTreeMap<Field, Vec<String>>,
}

impl ImageFilter {
    /// Parse `NAME=VALUE[,VALUE...]` strings.
    pub fn parse(specs: &[String]) -> Result<Self> {
        let mut f = ImageFilter::default();
        for spec in specs {
            let (name, values) = spec
                .split_once('=')
                .ok_or_else(|| StoreError::Invalid(format!("filter '{spec}': use NAME=VALUE")))?;
            f.add(name, values.split(',').map(str::to_string).collect())?;
        }
        Ok(f)
    }

    /// Add one condition: `name` with any of `values` (no splitting at commas, as in the EC2
    /// API's `Filter.N.Value.M`).
    pub fn add(&mut self, name: &str, values: Vec<String>) -> Result<()> {
        let field = Field::parse(name).ok_or_else(|| {
            StoreError::Invalid(format!(
                "unknown filter '{name}' (known: {})",
                FILTER_NAMES.join(", ")
            ))
        })?;
        self.conds.entry(field).or_default().extend(values);
        Ok(())
    }

    /// Whether `image` passes every condition.
    pub fn matches(&self, image: &Image) -> bool {
        self.conds.iter().all(|(field, values)| {
            let any = |s: &str| values.iter().any(|v| glob_match(v, s));
            match field {
                Field::Name => any(&image.name),
                Field::ImageId => any(image.image_id.as_str()),
                Field::State => any(image.state.as_str()),
                Field::IsPublic => any(if image.public { "true" } else { "false" }),
                Field::OwnerId => any(image.owner_id.as_str()),
                Field::Architecture => any(image.architecture.as_str()),
                Field::Description => any(&image.description),
                Field::TagKey => image.tags.keys().any(|k| any(k)),
                Field::Tag(key) => image.tags.get(key).is_some_and(|v| any(v)),
            }
        })
    }
}

/// Select the images `caller` may see that pass `owner` and `filter`.
pub fn select<'a>(
    images: &'a [Image],
    caller: &AccountId,
    owner: &OwnerFilter,
    filter: &ImageFilter,
) -> Vec<&'a Image> {
    images
        .iter()
        .filter(|i| filter.matches(i))
        .filter(|i| match owner {
            OwnerFilter::All => true,
            OwnerFilter::Caller => i.owner_id == *caller,
            OwnerFilter::Account(a) => i.owner_id == *a,
        })
        .filter(|i| can_see(caller, i))
        .collect()
}

/// Match `text` against a pattern with `*` and `?` wildcards (EC2 filter syntax).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return pattern == text;
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("abc", "abc"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("a*", "abcd"));
        assert!(glob_match("*cd", "abcd"));
        assert!(glob_match("a*c*", "abxcyy"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*a*a", "banana"));
    }

    #[test]
    fn filter_parsing() {
        assert!(ImageFilter::parse(&["name=x".into(), "tag:Env=prod".into()]).is_ok());
        assert!(ImageFilter::parse(&["bogus=x".into()]).is_err());
        assert!(ImageFilter::parse(&["name".into()]).is_err());
        assert_eq!(OwnerFilter::parse("self").unwrap(), OwnerFilter::Caller);
        assert!(OwnerFilter::parse("bob").is_err());
    }
}
