//! `--initial-cluster`: `name=url[,name=url...]`, a name repeated to give a member
//! several peer URLs.

use std::collections::BTreeMap;
use std::fmt;

use url::Url;

use super::urls::{parse_url_list, url_string};

/// Member name → its peer URLs (sorted), ordered by name as etcd prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitialCluster(BTreeMap<String, Vec<Url>>);

impl InitialCluster {
    /// Parses etcd's form. Items without `=` are an error; empty items are skipped.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut map: BTreeMap<String, Vec<Url>> = BTreeMap::new();
        for item in value.split(',') {
            if item.trim().is_empty() {
                continue;
            }
            let (name, url) = item
                .split_once('=')
                .ok_or_else(|| format!("invalid member {item:?}: expected name=url"))?;
            let urls = parse_url_list(url)?;
            // `name=` with no URL: etcd parses the empty text as a URL without a
            // scheme and refuses it so (found by the property tests: it was taken
            // as a member without peer URLs).
            if urls.is_empty() {
                return Err(format!(
                    "URL scheme must be http, https, unix, or unixs: {}",
                    url.trim()
                ));
            }
            let entry = map.entry(name.to_string()).or_default();
            for u in urls {
                if !entry.iter().any(|e| url_string(e) == url_string(&u)) {
                    entry.push(u);
                }
            }
            entry.sort_by_key(url_string);
        }
        Ok(InitialCluster(map))
    }

    /// `name=url` for each of `urls`: what etcd uses when only `--name` is given.
    pub fn from_name(name: &str, urls: &[Url]) -> Self {
        let mut map = BTreeMap::new();
        map.insert(name.to_string(), urls.to_vec());
        InitialCluster(map)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<Url>)> {
        self.0.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Vec<Url>> {
        self.0.get(name)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for InitialCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, urls) in &self.0 {
            for u in urls {
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                write!(f, "{name}={}", url_string(u))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_names_merge_and_print_sorted() {
        let c = InitialCluster::parse(
            "infra1=http://10.0.1.11:2380,infra0=http://10.0.1.10:2380,infra0=http://10.0.1.9:2380,",
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.to_string(),
            "infra0=http://10.0.1.10:2380,infra0=http://10.0.1.9:2380,infra1=http://10.0.1.11:2380"
        );
    }

    #[test]
    fn bad_items_are_errors() {
        assert!(InitialCluster::parse("infra0").is_err());
        assert!(InitialCluster::parse("infra0=10.0.0.1:2380").is_err());
    }
}
