//! Where volume instances may live (`CAIRN_VOLUME_ROOTS`).
//!
//! Paths are checked after resolving symlinks, so a link inside a root that
//! points outside it does not let a request read or write there.

use std::path::{Component, Path, PathBuf};

/// Why a volume path is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumePathError {
    /// Not an absolute path.
    #[error("volume path {0:?} must be absolute")]
    NotAbsolute(String),
    /// Outside every configured root.
    #[error("volume path {0:?} is outside CAIRN_VOLUME_ROOTS")]
    OutsideRoots(String),
    /// A registered volume must be an existing directory.
    #[error("volume path {0:?} is not an existing directory")]
    NotADirectory(String),
    /// A restore target must be absent or empty.
    #[error("volume path {0:?} exists and is not an empty directory")]
    NotEmpty(String),
}

/// Resolves `path` (which may not exist yet: its nearest existing ancestor is
/// resolved) and checks it lies strictly inside one of `roots`.
pub fn resolve_inside(roots: &[PathBuf], path: &str) -> Result<PathBuf, VolumePathError> {
    let raw = Path::new(path);
    if !raw.is_absolute() {
        return Err(VolumePathError::NotAbsolute(path.into()));
    }
    if raw.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(VolumePathError::OutsideRoots(path.into()));
    }
    let resolved = resolve_existing_prefix(raw);
    let inside = roots.iter().any(|root| {
        let root = root.canonicalize().unwrap_or_else(|_| root.clone());
        resolved.starts_with(&root) && resolved != root
    });
    if inside { Ok(resolved) } else { Err(VolumePathError::OutsideRoots(path.into())) }
}

/// Canonicalizes the longest existing prefix of `path` and appends the rest.
fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(canon) = existing.canonicalize() {
            return rest.iter().rev().fold(canon, |acc: PathBuf, part| acc.join(part));
        }
        match (existing.file_name().map(|n| n.to_owned()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// A registered instance's directory: inside the roots and existing.
pub fn check_registered(roots: &[PathBuf], path: &str) -> Result<PathBuf, VolumePathError> {
    let resolved = resolve_inside(roots, path)?;
    if resolved.is_dir() { Ok(resolved) } else { Err(VolumePathError::NotADirectory(path.into())) }
}

/// A restore target: inside the roots, and absent or an empty directory.
pub fn check_restore_target(roots: &[PathBuf], path: &str) -> Result<PathBuf, VolumePathError> {
    let resolved = resolve_inside(roots, path)?;
    match std::fs::symlink_metadata(&resolved) {
        Err(_) => Ok(resolved),
        Ok(meta) if meta.is_dir() => match std::fs::read_dir(&resolved).map(|mut entries| entries.next().is_none()) {
            Ok(true) => Ok(resolved),
            _ => Err(VolumePathError::NotEmpty(path.into())),
        },
        Ok(_) => Err(VolumePathError::NotEmpty(path.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside_the_roots_after_resolving_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("db")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let roots = vec![root.clone()];
        let s = |p: &Path| p.to_str().unwrap().to_owned();

        assert!(check_registered(&roots, &s(&root.join("db"))).is_ok());
        assert_eq!(check_registered(&roots, "db"), Err(VolumePathError::NotAbsolute("db".into())));
        assert!(matches!(check_registered(&roots, &s(&outside)), Err(VolumePathError::OutsideRoots(_))));
        assert!(matches!(check_registered(&roots, &s(&root)), Err(VolumePathError::OutsideRoots(_))));
        assert!(matches!(check_registered(&roots, &s(&root.join("escape"))), Err(VolumePathError::OutsideRoots(_))));
        assert!(matches!(
            check_restore_target(&roots, &s(&root.join("escape/new"))),
            Err(VolumePathError::OutsideRoots(_))
        ));
        assert!(matches!(
            check_restore_target(&roots, &format!("{}/db/../../outside", s(&root))),
            Err(VolumePathError::OutsideRoots(_))
        ));
        assert!(matches!(check_registered(&roots, &s(&root.join("missing"))), Err(VolumePathError::NotADirectory(_))));
        assert!(check_restore_target(&roots, &s(&root.join("new/deeper"))).is_ok());
        assert!(check_restore_target(&roots, &s(&root.join("db"))).is_ok());
        std::fs::write(root.join("db/file"), b"x").unwrap();
        assert!(matches!(check_restore_target(&roots, &s(&root.join("db"))), Err(VolumePathError::NotEmpty(_))));
    }
}
