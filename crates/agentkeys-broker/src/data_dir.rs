//! The data dir holds the SQLite database (emails, IP addresses, PKCE verifiers) and the
//! signing keys: it is the broker's alone. It is created 0700; an existing one that group or
//! others can enter is refused at start-up, as an open key file is (keys.rs).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "the directory is open to group or others (mode {mode:03o}) and holds the database and \
         the signing keys; run `chmod 700 {}`", path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("cannot create or read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Refuses an existing data dir that is not a directory or is open to group or others; a
/// missing one is fine (see [`ensure`]).
pub fn check(dir: &Path) -> Result<(), DataDirError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataDirError::Io {
            path: dir.to_path_buf(),
            source,
        }),
        Ok(m) if !m.is_dir() => Err(DataDirError::NotADirectory(dir.to_path_buf())),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Err(DataDirError::TooOpen {
            path: dir.to_path_buf(),
            mode: m.permissions().mode() & 0o777,
        }),
        Ok(_) => Ok(()),
    }
}

/// Creates the data dir 0700 (whatever the umask) if it is missing, then [`check`]s it.
pub fn ensure(dir: &Path) -> Result<(), DataDirError> {
    let io = |source| DataDirError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    check(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn created_private_and_open_ones_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/data");
        check(&dir).expect("a missing dir is fine");
        ensure(&dir).expect("created");
        assert_eq!(mode(&dir), 0o700);
        ensure(&dir).expect("again");

        for open in [0o750, 0o705, 0o755, 0o777] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(open)).expect("chmod");
            let e = ensure(&dir).expect_err("too open");
            assert!(
                matches!(e, DataDirError::TooOpen { mode, .. } if mode == open),
                "{e}"
            );
            let s = e.to_string();
            assert!(s.contains(&format!("chmod 700 {}", dir.display())), "{s}");
            assert_eq!(mode(&dir), open, "not changed behind the operator's back");
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");

        let file = tmp.path().join("file");
        fs::write(&file, b"x").expect("write");
        assert!(matches!(check(&file), Err(DataDirError::NotADirectory(_))));
    }
}
