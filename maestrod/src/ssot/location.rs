//! Where the SSOT lives: `--store sled` (the data directory, the default),
//! `--store sled:DIR`, or `--store etcd://h1:2379,h2:2379[/prefix]`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Prefix under which the SSOT's keys live in etcd when the address names none.
pub const DEFAULT_ETCD_PREFIX: &str = "maestro/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded sled store in this directory (`None`: the daemon's data directory).
    Sled(Option<PathBuf>),
    /// An etcd cluster.
    Etcd(EtcdAddress),
}

impl Default for StoreLocation {
    fn default() -> Self {
        StoreLocation::Sled(None)
    }
}

/// `etcd://host:port,host:port[/prefix]`: the cluster's client endpoints and
/// the key prefix that holds this SSOT (several SSOTs can share one cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdAddress {
    /// `host:port` of each endpoint, in the order given.
    pub endpoints: Vec<String>,
    /// Ends with `/`.
    pub prefix: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--store {given:?}: {reason} (expected sled, sled:DIR or etcd://HOST:PORT[,HOST:PORT...][/PREFIX])")]
pub struct LocationError {
    given: String,
    reason: String,
}

impl FromStr for StoreLocation {
    type Err = LocationError;

    fn from_str(given: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| LocationError { given: given.to_string(), reason: reason.to_string() };
        if given == "sled" {
            return Ok(StoreLocation::Sled(None));
        }
        if let Some(dir) = given.strip_prefix("sled:") {
            if dir.is_empty() {
                return Err(fail("the directory is empty"));
            }
            return Ok(StoreLocation::Sled(Some(PathBuf::from(dir))));
        }
        let Some(rest) = given.strip_prefix("etcd://") else {
            return Err(fail("unknown store"));
        };
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, prefix)) => (hosts, prefix),
            None => (rest, ""),
        };
        if hosts.contains('@') {
            return Err(fail("credentials do not belong in the address: use --etcd-user and MAESTRO_ETCD_PASSWORD"));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let (name, port) = host.rsplit_once(':').ok_or_else(|| fail(&format!("endpoint {host:?} has no port")))?;
            if name.is_empty() || port.parse::<u16>().is_err() {
                return Err(fail(&format!("endpoint {host:?} is not HOST:PORT")));
            }
            endpoints.push(host.to_string());
        }
        let prefix = prefix.trim_matches('/');
        if prefix.contains('\0') {
            return Err(fail("the prefix contains a NUL byte"));
        }
        let prefix = if prefix.is_empty() { DEFAULT_ETCD_PREFIX.to_string() } else { format!("{prefix}/") };
        Ok(StoreLocation::Etcd(EtcdAddress { endpoints, prefix }))
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sled(None) => write!(f, "sled"),
            StoreLocation::Sled(Some(dir)) => write!(f, "sled:{}", dir.display()),
            StoreLocation::Etcd(address) => {
                write!(f, "etcd://{}/{}", address.endpoints.join(","), address.prefix.trim_end_matches('/'))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_documented() {
        assert_eq!("sled".parse(), Ok(StoreLocation::Sled(None)));
        assert_eq!("sled:/var/lib/m".parse(), Ok(StoreLocation::Sled(Some("/var/lib/m".into()))));
        let etcd: StoreLocation = "etcd://h1:2379,h2:2379,h3:2379/team-a".parse().unwrap();
        assert_eq!(
            etcd,
            StoreLocation::Etcd(EtcdAddress {
                endpoints: vec!["h1:2379".into(), "h2:2379".into(), "h3:2379".into()],
                prefix: "team-a/".into()
            })
        );
        assert_eq!(etcd.to_string(), "etcd://h1:2379,h2:2379,h3:2379/team-a");
        let bare: StoreLocation = "etcd://127.0.0.1:2379".parse().unwrap();
        assert!(matches!(bare, StoreLocation::Etcd(EtcdAddress { ref prefix, .. }) if prefix == DEFAULT_ETCD_PREFIX));
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        for (given, reason) in [
            ("etcd://h1", "has no port"),
            ("etcd://h1:notaport", "is not HOST:PORT"),
            ("etcd://:2379", "is not HOST:PORT"),
            ("etcd://u:p@h1:2379", "--etcd-user"),
            ("postgres://x", "unknown store"),
            ("sled:", "directory is empty"),
        ] {
            let error = given.parse::<StoreLocation>().unwrap_err().to_string();
            assert!(error.contains(reason), "{given}: {error}");
        }
    }
}
