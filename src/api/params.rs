//! Typed access to an EC2 Query request's parameters.
//!
//! botocore's EC2 serializer flattens every list: member `N` (from 1) of list `X` is `X.N`, a
//! structure's fields are `X.N.Field`, so a filter is `Filter.1.Name` with
//! `Filter.1.Value.1`, `Filter.1.Value.2`, ... ([`Params::list`], [`Params::structs`]).

use super::errors::{ApiError, INVALID_PAGINATION_TOKEN};
use std::collections::BTreeMap;

/// Most members one list parameter may have (EC2 caps its lists at 1000 ids, 200 filters and
/// 50 tags; this bounds the work of any of them).
pub const MAX_LIST: usize = 1000;

/// A request's parameters (or one structure inside them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    pub fn new(map: BTreeMap<String, String>) -> Self {
        Params { map }
    }

    /// Every parameter name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name).ok_or_else(|| ApiError::missing(name))
    }

    /// `true`/`false` (EC2 also takes them in any case).
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid(format!(
                "Invalid value '{v}' for {name}: use true or false"
            ))),
        }
    }

    /// An integer within `[min, max]`.
    pub fn int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::invalid(format!(
                    "Invalid value '{v}' for {name}: must be an integer from {min} to {max}"
                ))),
            },
        }
    }

    /// Members `prefix.1`, `prefix.2`, ... grouped by index, each with the rest of its name
    /// (`""` for the member itself), in index order.
    fn indexed(&self, prefix: &str) -> Result<BTreeMap<u32, Params>, ApiError> {
        let mut out: BTreeMap<u32, Params> = BTreeMap::new();
        let head = format!("{prefix}.");
        for (k, v) in self.map.range(head.clone()..) {
            let Some(rest) = k.strip_prefix(&head) else {
                break;
            };
            let (idx, tail) = rest.split_once('.').unwrap_or((rest, ""));
            let n: u32 = idx
                .parse()
                .ok()
                .filter(|n| *n >= 1 && !idx.starts_with('0'))
                .ok_or_else(|| {
                    ApiError::invalid(format!("'{k}': list members are numbered from 1"))
                })?;
            if out.len() >= MAX_LIST && !out.contains_key(&n) {
                return Err(ApiError::invalid(format!(
                    "{prefix}: more than {MAX_LIST} members"
                )));
            }
            out.entry(n)
                .or_default()
                .map
                .insert(tail.to_string(), v.clone());
        }
        Ok(out)
    }

    /// The list `prefix.N` of plain values.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, ApiError> {
        self.indexed(prefix)?
            .into_iter()
            .map(|(n, p)| {
                p.get("").map(str::to_string).ok_or_else(|| {
                    ApiError::invalid(format!("{prefix}.{n} must be a value, not a structure"))
                })
            })
            .collect()
    }

    /// The list `prefix.N.Field...` of structures.
    pub fn structs(&self, prefix: &str) -> Result<Vec<Params>, ApiError> {
        Ok(self.indexed(prefix)?.into_values().collect())
    }

    /// The structure `prefix.Field...` (not a list).
    pub fn sub(&self, prefix: &str) -> Params {
        let head = format!("{prefix}.");
        Params {
            map: self
                .map
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(&head).map(|r| (r.to_string(), v.clone())))
                .collect(),
        }
    }

    /// `Filter.N.Name` / `Filter.N.Value.M`, as (name, values) pairs.
    pub fn filters(&self) -> Result<Vec<(String, Vec<String>)>, ApiError> {
        self.structs("Filter")?
            .into_iter()
            .map(|f| {
                let name = f.required("Name")?.to_string();
                Ok((name, f.list("Value")?))
            })
            .collect()
    }

    /// `Tag.N.Key` / `Tag.N.Value` (a missing value is empty).
    pub fn tags(&self, prefix: &str) -> Result<Vec<(String, Option<String>)>, ApiError> {
        self.structs(prefix)?
            .into_iter()
            .map(|t| {
                Ok((
                    t.required("Key")?.to_string(),
                    t.get("Value").map(str::to_string),
                ))
            })
            .collect()
    }

    /// The tags of `TagSpecification.N` whose `ResourceType` is `resource_type`; other
    /// resource types are refused.
    pub fn tag_specifications(
        &self,
        resource_types: &[&str],
    ) -> Result<Vec<(String, String, String)>, ApiError> {
        let mut out = Vec::new();
        for spec in self.structs("TagSpecification")? {
            let rt = spec.required("ResourceType")?;
            if !resource_types.contains(&rt) {
                return Err(ApiError::invalid(format!(
                    "'{rt}' is not a valid taggable resource type for this operation (use {})",
                    resource_types.join(", ")
                )));
            }
            for (k, v) in spec.tags("Tag")? {
                out.push((rt.to_string(), k, v.unwrap_or_default()));
            }
        }
        Ok(out)
    }
}

/// One page of a sorted list: items whose key is after `NextToken`, at most `MaxResults`, and
/// the token for the next page (the last key returned) when more remain.
pub fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    next_token: Option<&str>,
    max_results: Option<i64>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let start = match next_token {
        None => 0,
        Some(t) => {
            if t.is_empty() || t.len() > 256 {
                return Err(ApiError::new(
                    INVALID_PAGINATION_TOKEN,
                    format!("Invalid pagination token '{t}'"),
                ));
            }
            items.partition_point(|i| key(i) <= t)
        }
    };
    let max = max_results.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    let mut items: Vec<T> = items.into_iter().skip(start).collect();
    let more = items.len() > max;
    items.truncate(max);
    let token = if more {
        items.last().map(|i| key(i).to_string())
    } else {
        None
    };
    Ok((items, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Params {
        Params::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn lists_are_in_index_order() {
        let q = p(&[
            ("ImageId.2", "b"),
            ("ImageId.10", "c"),
            ("ImageId.1", "a"),
            ("ImageIdX", "z"),
        ]);
        assert_eq!(q.list("ImageId").unwrap(), ["a", "b", "c"]);
        assert!(p(&[("ImageId.0", "a")]).list("ImageId").is_err());
        assert!(p(&[("ImageId.x", "a")]).list("ImageId").is_err());
        assert!(p(&[("ImageId.01", "a")]).list("ImageId").is_err());
        assert!(p(&[("ImageId.1.Foo", "a")]).list("ImageId").is_err());
        assert!(p(&[]).list("ImageId").unwrap().is_empty());
    }

    #[test]
    fn filters_and_tags() {
        let q = p(&[
            ("Filter.1.Name", "name"),
            ("Filter.1.Value.1", "a*"),
            ("Filter.1.Value.2", "b"),
            ("Filter.2.Name", "tag:env"),
            ("Filter.2.Value.1", "prod"),
            ("TagSpecification.1.ResourceType", "instance"),
            ("TagSpecification.1.Tag.1.Key", "k"),
            ("TagSpecification.1.Tag.1.Value", "v"),
        ]);
        assert_eq!(
            q.filters().unwrap(),
            vec![
                ("name".to_string(), vec!["a*".to_string(), "b".to_string()]),
                ("tag:env".to_string(), vec!["prod".to_string()])
            ]
        );
        assert_eq!(
            q.tag_specifications(&["instance"]).unwrap(),
            vec![("instance".into(), "k".into(), "v".into())]
        );
        assert!(q.tag_specifications(&["image"]).is_err());
        assert!(p(&[("Filter.1.Value.1", "x")]).filters().is_err());
        let lp = p(&[
            ("LaunchPermission.Add.1.UserId", "1"),
            ("LaunchPermission.Remove.1.Group", "all"),
        ]);
        let sub = lp.sub("LaunchPermission");
        assert_eq!(sub.structs("Add").unwrap()[0].get("UserId"), Some("1"));
        assert_eq!(sub.structs("Remove").unwrap()[0].get("Group"), Some("all"));
    }

    #[test]
    fn scalars() {
        let q = p(&[("DryRun", "true"), ("N", "5"), ("B", "maybe")]);
        assert_eq!(q.bool("DryRun").unwrap(), Some(true));
        assert!(q.bool("B").is_err());
        assert_eq!(q.int("N", 1, 10).unwrap(), Some(5));
        assert!(q.int("N", 6, 10).is_err());
        assert_eq!(q.required("Nope").unwrap_err().code, "MissingParameter");
    }

    #[test]
    fn paging() {
        let items: Vec<String> = (0..7).map(|i| format!("id-{i}")).collect();
        let (p1, t1) = page(items.clone(), |s| s.as_str(), None, Some(3)).unwrap();
        assert_eq!(p1, ["id-0", "id-1", "id-2"]);
        let (p2, t2) = page(items.clone(), |s| s.as_str(), t1.as_deref(), Some(3)).unwrap();
        assert_eq!(p2, ["id-3", "id-4", "id-5"]);
        let (p3, t3) = page(items.clone(), |s| s.as_str(), t2.as_deref(), Some(3)).unwrap();
        assert_eq!((p3, t3), (vec!["id-6".to_string()], None));
        let (all, t) = page(items, |s| s.as_str(), None, None).unwrap();
        assert_eq!((all.len(), t), (7, None));
    }
}
