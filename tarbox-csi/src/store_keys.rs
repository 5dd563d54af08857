//! Keys of a volume's S3 block store, from the StorageClass's secrets: the same secrets that may
//! name its database (`csi.storage.k8s.io/provisioner-secret-name` for CreateVolume and
//! DeleteVolume, the node-stage secret for NodeStageVolume, the snapshotter and
//! controller-expand secrets for theirs). Without them the driver's environment is used (the
//! Secret the chart's `dataStore.credentialsSecret` names).

use std::collections::HashMap;

use tarbox_fs::Engine;
use tarbox_fs::store::S3Credentials;
use tonic::Status;

/// The secret key holding the S3 access key id.
pub const SECRET_ACCESS_KEY_ID: &str = "accessKeyID";
/// The secret key holding the S3 secret access key.
pub const SECRET_SECRET_ACCESS_KEY: &str = "secretAccessKey";
/// The secret key holding an S3 session token (temporary credentials), optional.
pub const SECRET_SESSION_TOKEN: &str = "sessionToken";

/// The S3 keys in a call's `secrets`, if any; half a pair is `INVALID_ARGUMENT` naming the
/// missing key.
pub(crate) fn from_secrets(
    secrets: &HashMap<String, String>,
) -> Result<Option<S3Credentials>, Status> {
    let given = |key| secrets.get(key).filter(|v: &&String| !v.is_empty());
    match (given(SECRET_ACCESS_KEY_ID), given(SECRET_SECRET_ACCESS_KEY)) {
        (None, None) => Ok(None),
        (Some(id), Some(secret)) => Ok(Some(S3Credentials {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: secrets.get(SECRET_SESSION_TOKEN).cloned(),
        })),
        (Some(_), None) => Err(Status::invalid_argument(format!(
            "the secret has {SECRET_ACCESS_KEY_ID} but no {SECRET_SECRET_ACCESS_KEY}"
        ))),
        (None, Some(_)) => Err(Status::invalid_argument(format!(
            "the secret has {SECRET_SECRET_ACCESS_KEY} but no {SECRET_ACCESS_KEY_ID}"
        ))),
    }
}

/// Give `engine` the S3 keys in `secrets` for the block store at `url`, when there is a store
/// and there are keys: what its deletes, clones and snapshots will use. Half a pair is refused
/// as by [`from_secrets`], store or not.
pub(crate) fn register(
    engine: &Engine,
    url: Option<&str>,
    secrets: &HashMap<String, String>,
) -> Result<(), Status> {
    if let (Some(url), Some(keys)) = (url, from_secrets(secrets)?) {
        engine.set_store_keys(url, keys);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_in_pairs() {
        let secrets = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(from_secrets(&secrets(&[])).expect("none"), None);
        let keys = from_secrets(&secrets(&[
            (SECRET_ACCESS_KEY_ID, "id"),
            (SECRET_SECRET_ACCESS_KEY, "key"),
        ]))
        .expect("valid")
        .expect("keys");
        assert_eq!(keys.access_key_id, "id");
        assert_eq!(keys.session_token, None);
        for half in [SECRET_ACCESS_KEY_ID, SECRET_SECRET_ACCESS_KEY] {
            let e = from_secrets(&secrets(&[(half, "x")])).expect_err("half a pair");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(half), "{}", e.message());
        }
    }
}
