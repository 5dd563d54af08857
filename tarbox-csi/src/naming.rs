//! Which tenant a CreateVolume request gets.
//!
//! With the external-provisioner's PVC metadata the tenant is named `<namespace>-<pvc>`, which
//! administrators recognise; without it, a name derived from the request name. Such a name is
//! ambiguous (namespace `a-b` with PVC `c` and namespace `a` with PVC `b-c` both give `a-b-c`) and
//! may pass 253 bytes, so every tenant records its owner (the request name and the PVC), and a
//! request whose preferred name belongs to someone else takes the same name with a hash of its
//! own request name appended: deterministic, so racing controllers and retries agree, and never
//! another volume's data.

/// The longest tenant name (an RFC 1123 subdomain) and the longest label in it.
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;
/// Hex digits of the request hash in a suffixed name.
const HASH_LEN: usize = 12;

/// The owner a tenant created for `request` records: the request name, the PVC, and what the
/// volume was made from (`snapshot:<id>` or `volume:<id>`), each a `;`-separated field.
pub(crate) fn owner(request: &str, pvc: Option<(&str, &str)>, source: Option<&str>) -> String {
    let mut owner = format!("csi-volume={request}");
    if let Some((ns, name)) = pvc {
        owner += &format!(";pvc={ns}/{name}");
    }
    if let Some(source) = source {
        owner += &format!(";source={source}");
    }
    owner
}

/// The field `key` of an owner string.
pub(crate) fn owner_field<'a>(owner: &'a str, key: &str) -> Option<&'a str> {
    owner
        .split(';')
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
}

/// The CSI request name an owner string records, if it is one of ours.
pub(crate) fn owner_request(owner: &str) -> Option<&str> {
    let rest = owner.strip_prefix("csi-volume=")?;
    Some(rest.split_once(';').map_or(rest, |(r, _)| r))
}

/// The tenant names to try for `request`, best first: the readable name, then the same with a
/// hash of the request name (for when the readable one is taken by another volume).
pub(crate) fn candidates(request: &str, pvc: Option<(&str, &str)>) -> [String; 2] {
    let readable = match pvc {
        Some((ns, name)) => format!("{ns}-{name}"),
        None => request.to_string(),
    };
    let clean = sanitize(&readable);
    let hash = blake3::hash(request.as_bytes()).to_hex();
    let suffix = &hash.as_str()[..HASH_LEN];
    let fits = clean.len() <= MAX_NAME && clean.split('.').all(|l| l.len() <= MAX_LABEL);
    let first = if fits {
        clean.clone()
    } else {
        // Too long to keep whole: shorten it and make it unique the same way.
        with_suffix(&clean, suffix)
    };
    [first, with_suffix(&clean, suffix)]
}

/// `name` shortened as needed, with `-<suffix>` appended to its last label, every label at most
/// 63 characters and the whole at most 253.
fn with_suffix(name: &str, suffix: &str) -> String {
    let mut labels: Vec<&str> = name
        .split('.')
        .map(|l| &l[..l.len().min(MAX_LABEL)])
        .collect();
    let last_room = MAX_LABEL - suffix.len() - 1;
    let last = labels.pop().unwrap_or_default();
    let last = last[..last.len().min(last_room)].trim_end_matches('-');
    let mut head = labels.join(".");
    let room = MAX_NAME - (last.len() + suffix.len() + 2);
    if head.len() > room {
        head.truncate(room);
    }
    let head = head.trim_end_matches(['-', '.']);
    let tail = if last.is_empty() {
        suffix.to_string()
    } else {
        format!("{last}-{suffix}")
    };
    if head.is_empty() {
        tail
    } else {
        format!("{head}.{tail}")
    }
}

/// `text` as an RFC 1123 subdomain: labels of lowercase letters, digits and `-`, each starting
/// and ending with a letter or digit, joined by `.` (labels may still be too long: see
/// [`candidates`]).
fn sanitize(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    let labels: Vec<&str> = mapped
        .split('.')
        .map(|l| l.trim_matches('-'))
        .filter(|l| !l.is_empty())
        .collect();
    if labels.is_empty() {
        "volume".to_string()
    } else {
        labels.join(".")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvc_metadata_names_the_tenant() {
        let [first, second] = candidates("pvc-1234", Some(("team-a", "data")));
        assert_eq!(first, "team-a-data");
        assert!(second.starts_with("team-a-data-") && second.len() == first.len() + 13);
    }

    #[test]
    fn ambiguous_names_get_distinct_fallbacks() {
        let a = candidates("pvc-1", Some(("a-b", "c")));
        let b = candidates("pvc-2", Some(("a", "b-c")));
        assert_eq!(a[0], b[0], "the readable names collide");
        assert_ne!(a[1], b[1], "the fallbacks never do");
    }

    #[test]
    fn long_and_odd_names_become_valid() {
        let dotted = format!("{}.{}", "y".repeat(100), "z".repeat(200));
        for long in ["x".repeat(128), "x".repeat(300), dotted, "a..b.-c-.".into()] {
            for name in candidates(&long, None) {
                tarbox_fs::validate_tenant_name(&name)
                    .unwrap_or_else(|e| panic!("{long:?} gave {name:?}: {e}"));
            }
        }
        assert_eq!(candidates("PVC_Name!", None)[0], "pvc-name");
        assert_eq!(candidates("___", None)[0], "volume");
    }

    #[test]
    fn owners_round_trip() {
        let full = owner("pvc-9", Some(("ns", "p")), Some("snapshot:4-7"));
        assert_eq!(owner_request(&full), Some("pvc-9"));
        assert_eq!(owner_field(&full, "pvc"), Some("ns/p"));
        assert_eq!(owner_field(&full, "source"), Some("snapshot:4-7"));
        assert_eq!(owner_request(&owner("pvc-9", None, None)), Some("pvc-9"));
        assert_eq!(owner_field(&owner("pvc-9", None, None), "source"), None);
        assert_eq!(owner_request("made by hand"), None);
    }
}
