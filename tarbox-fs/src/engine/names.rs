//! Name rules shared by every operation that takes a directory entry name.

use crate::error::{FsError, FsResult};
use crate::types::Ino;

/// The name of the control directory at the root of every mount (`/.tarbox`). It is never stored:
/// a tree that held it would be hidden by the mount's virtual directory.
pub const CONTROL_DIR: &[u8] = b".tarbox";

/// Longest name of a directory entry, as `NAME_MAX` on Linux.
pub(crate) const NAME_MAX: usize = 255;
/// Longest symlink target, as `PATH_MAX` on Linux.
pub(crate) const PATH_MAX: usize = 4096;

/// Check a name that is about to be created or looked up.
///
/// - `ENAMETOOLONG` for more than 255 bytes;
/// - `EINVAL` for an empty name or one containing `/` or NUL (the kernel never sends these, but
///   the CLI and library callers can).
pub(crate) fn validate(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() {
        return Err(FsError::Invalid("empty file name"));
    }
    if name.contains(&b'/') {
        return Err(FsError::Invalid("file name contains '/'"));
    }
    if name.contains(&0) {
        return Err(FsError::Invalid("file name contains NUL"));
    }
    Ok(())
}

/// `.` or `..`.
pub(crate) fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// Check a name for an operation that creates it: dots already exist (`EEXIST`).
pub(crate) fn validate_new(name: &[u8]) -> FsResult<()> {
    validate(name)?;
    if is_dot(name) {
        return Err(FsError::Exists);
    }
    Ok(())
}

/// Refuse to bind the control directory's name at the root (`EPERM`), whichever frontend asks.
pub(crate) fn check_not_reserved(parent: Ino, name: &[u8]) -> FsResult<()> {
    if parent == Ino::ROOT && name == CONTROL_DIR {
        return Err(FsError::NotPermitted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_linux_limits() {
        assert!(validate(&[b'a'; 255]).is_ok());
        assert!(matches!(validate(&[b'a'; 256]), Err(FsError::NameTooLong)));
        assert!(matches!(validate(b"a/b"), Err(FsError::Invalid(_))));
        assert!(matches!(validate(b"a\0b"), Err(FsError::Invalid(_))));
        assert!(matches!(validate_new(b".."), Err(FsError::Exists)));
        assert!(validate("naïve \u{1F600}".as_bytes()).is_ok());
        assert!(validate(&[0xff, 0xfe]).is_ok());
    }
}
