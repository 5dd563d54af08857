//! Where settings come from: command-line flags win over environment variables, which win over
//! the TOML config file (`--config`, `$TARBOX_CONFIG`, or `~/.config/tarbox/config.toml`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The config file. Unknown keys are an error so a typo does not go unnoticed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Storage URL: `postgres://…` or `memory://`.
    pub database_url: Option<String>,
    /// Tenant used when `--tenant` is not given.
    pub tenant: Option<String>,
    /// Audit level of mounts that do not pass `--audit-level`.
    pub audit_level: Option<tarbox_fs::AuditLevel>,
    /// Address mounts serve Prometheus metrics on when `--metrics-addr` is not given.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Keys of S3 data stores (`[s3] access_key_id = …, secret_access_key = …`); without them
    /// the `AWS_*` environment variables are used.
    pub s3: Option<tarbox_fs::store::S3Credentials>,
}

impl ConfigFile {
    /// Load the file named by `explicit`, else `$TARBOX_CONFIG`, else the per-user default if it
    /// exists. A named file that is missing is an error; a missing default is not.
    pub fn load(explicit: Option<&Path>) -> Result<ConfigFile> {
        let named = explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("TARBOX_CONFIG").map(PathBuf::from));
        let path = match named {
            Some(p) => p,
            None => match default_path() {
                Some(p) if p.exists() => p,
                _ => return Ok(ConfigFile::default()),
            },
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("tarbox").join("config.toml"))
}

/// Parse a byte size such as `4096`, `64KiB`, `10G`, `1.5TiB` (K/M/G/T are powers of 1024).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().with_context(|| {
        format!("invalid size {text:?}: expected a number with an optional unit like 10GiB")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        "p" | "pb" | "pib" => 1 << 50,
        other => bail!("invalid size {text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB)"),
    };
    let bytes = value * mult as f64;
    if !(0.0..=u64::MAX as f64).contains(&bytes) {
        bail!("invalid size {text:?}: out of range");
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096").expect("plain"), 4096);
        assert_eq!(parse_size("64KiB").expect("kib"), 65536);
        assert_eq!(parse_size("10G").expect("g"), 10 << 30);
        assert_eq!(parse_size("1.5MiB").expect("fraction"), 3 << 19);
        let err = parse_size("10 furlongs").expect_err("bad unit").to_string();
        assert!(err.contains("10 furlongs"), "{err}");
        assert!(parse_size("lots").is_err());
    }
}
