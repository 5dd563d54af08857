//! Which database a volume lives in. The driver has its own (`--database-url`); a StorageClass
//! may name another through its provisioner secret (key `databaseURL`, set with
//! `csi.storage.k8s.io/provisioner-secret-name` and `-namespace`, and likewise the snapshotter,
//! controller-expand and node-stage secrets, since each call gets only its own). A volume in
//! another database carries that database's key (a hash of its URL, never the URL) in its id:
//! `<tenant number>.<key>`; a volume in the driver's own is just `<tenant number>`. The URL
//! itself only ever travels in secrets, and a driver opens one engine per database it is given.
//!
//! As a StorageClass parameter a URL (and its password) would be readable by anyone who can
//! read StorageClasses, and DeleteVolume would never see it, so `databaseURL` is refused there.

use std::collections::HashMap;
use std::fmt;

use tarbox_fs::{Engine, EngineConfig, FsError};
use tokio::sync::Mutex;
use tonic::Status;

/// The secret key naming a database.
pub const SECRET_DATABASE_URL: &str = "databaseURL";

/// A volume id: the tenant's number and, for a volume outside the driver's own database, the
/// key of its database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VolumeId {
    pub tenant: i64,
    pub database: Option<String>,
}

impl VolumeId {
    /// `None` for ids this driver never made.
    pub fn parse(id: &str) -> Option<VolumeId> {
        let (tenant, database) = match id.split_once('.') {
            Some((t, k)) if is_key(k) => (t, Some(k.to_string())),
            Some(_) => return None,
            None => (id, None),
        };
        let parsed = VolumeId {
            tenant: tenant.parse().ok().filter(|n: &i64| *n > 0)?,
            database,
        };
        // Only the canonical form: `07` and `7` must not name one volume twice.
        (parsed.to_string() == id).then_some(parsed)
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.database {
            Some(key) => write!(f, "{}.{key}", self.tenant),
            None => write!(f, "{}", self.tenant),
        }
    }
}

const KEY_LEN: usize = 12;

fn is_key(k: &str) -> bool {
    k.len() == KEY_LEN
        && k.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The key of a database URL: 12 hex digits of the BLAKE3 hash of the URL without its
/// password, so rotating the password keeps every volume's id.
pub(crate) fn key_of(url: &str) -> String {
    blake3::hash(without_password(url).as_bytes()).to_hex()[..KEY_LEN].to_string()
}

/// `scheme://user:secret@host/…` as `scheme://user@host/…`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// The driver's engines: its own database's and those secrets named.
#[derive(Debug)]
pub(crate) struct Databases {
    own: Engine,
    others: Mutex<HashMap<String, Engine>>,
    /// The background work of the other databases' engines (stops when dropped).
    upkeep: Mutex<Vec<tarbox_fuse::EngineUpkeep>>,
}

impl Databases {
    pub fn new(own: Engine) -> Databases {
        Databases {
            own,
            others: Mutex::new(HashMap::new()),
            upkeep: Mutex::new(Vec::new()),
        }
    }

    pub fn own(&self) -> &Engine {
        &self.own
    }

    /// The database a call's `secrets` name (its key and engine), or the driver's own.
    pub async fn named_by(
        &self,
        secrets: &HashMap<String, String>,
    ) -> Result<(Option<String>, Engine), Status> {
        match secrets.get(SECRET_DATABASE_URL) {
            Some(url) => {
                let key = key_of(url);
                let engine = self.open(&key, url).await?;
                Ok((Some(key), engine))
            }
            None => Ok((None, self.own.clone())),
        }
    }

    /// The engine of database `key` (`None`: the driver's own). A database the driver has not
    /// opened yet must be named by `secrets`.
    pub async fn engine(
        &self,
        key: Option<&str>,
        secrets: &HashMap<String, String>,
    ) -> Result<Engine, Status> {
        let Some(key) = key else {
            return Ok(self.own.clone());
        };
        if let Some(url) = secrets.get(SECRET_DATABASE_URL) {
            if key_of(url) != key {
                return Err(Status::invalid_argument(format!(
                    "the secret's {SECRET_DATABASE_URL} names another database than the volume's \
                     ({key})"
                )));
            }
            return self.open(key, url).await;
        }
        self.others.lock().await.get(key).cloned().ok_or_else(|| {
            Status::failed_precondition(format!(
                "the volume lives in database {key}, which this driver has not been given: name \
                 it with the {SECRET_DATABASE_URL} key of the StorageClass's secrets"
            ))
        })
    }

    /// The engine of the database `url` names (`None`: the driver's own), as a node's record
    /// keeps it.
    pub async fn for_url(&self, url: Option<&str>) -> Result<Engine, Status> {
        match url {
            Some(url) => self.open(&key_of(url), url).await,
            None => Ok(self.own.clone()),
        }
    }

    /// Every database the driver knows now: its own and those opened since it started.
    pub async fn known(&self) -> Vec<(Option<String>, Engine)> {
        let mut all = vec![(None, self.own.clone())];
        let others = self.others.lock().await;
        let mut keys: Vec<&String> = others.keys().collect();
        keys.sort();
        all.extend(
            keys.into_iter()
                .map(|k| (Some(k.clone()), others[k].clone())),
        );
        all
    }

    async fn open(&self, key: &str, url: &str) -> Result<Engine, Status> {
        let mut others = self.others.lock().await;
        if let Some(engine) = others.get(key) {
            return Ok(engine.clone());
        }
        // Never echo the URL: it may hold a password.
        let engine = Engine::open(url, EngineConfig::default())
            .await
            .map_err(|e| match e {
                FsError::Backend(tarbox_fs::BackendError::Config { .. }) => {
                    Status::invalid_argument(format!(
                        "the secret's {SECRET_DATABASE_URL} is not a database URL: {e}"
                    ))
                }
                e => Status::unavailable(format!(
                    "cannot open the database {key} the secret's {SECRET_DATABASE_URL} names: {e}"
                )),
            })?;
        // Deleted volumes there are purged and its audit partitions kept, as in the driver's own.
        let upkeep = tarbox_fuse::EngineUpkeep::start(&engine, true);
        self.upkeep.lock().await.push(upkeep);
        others.insert(key.to_string(), engine.clone());
        Ok(engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_name_tenant_and_database() {
        let own = VolumeId::parse("42").expect("own");
        assert_eq!((own.tenant, own.database.as_deref()), (42, None));
        let key = key_of("postgres://a@b/c");
        let other = VolumeId::parse(&format!("7.{key}")).expect("other");
        assert_eq!(other.database.as_deref(), Some(key.as_str()));
        assert_eq!(other.to_string(), format!("7.{key}"));
        assert_eq!(
            key_of("postgres://u:old@db:5432/t"),
            key_of("postgres://u:new@db:5432/t"),
            "a password rotation keeps the key"
        );
        assert_ne!(key_of("postgres://u@db/t"), key_of("postgres://u@db/other"));
        for bad in [
            "",
            "x",
            "7.",
            "7.xyz",
            "-1",
            "7.ABCDEFABCDEF",
            "1-2",
            "07",
            "+7",
            "0",
        ] {
            assert_eq!(VolumeId::parse(bad), None, "{bad:?}");
        }
    }
}
