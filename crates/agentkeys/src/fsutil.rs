//! Private files: created 0600 in 0700 directories, replaced atomically, and refused on read
//! when group or others can read them.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Largest private file this client reads (key files and session state are tiny).
const MAX_PRIVATE_FILE: u64 = 64 * 1024;

/// Creates `dir` and any missing parents; the ones created here get mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))
}

fn open_options_0600() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

/// Writes a new file with mode 0600; fails with `AlreadyExists` if `path` exists (no race: the
/// existence check and the creation are one `open(O_CREAT|O_EXCL)`).
pub fn write_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut f = open_options_0600().create_new(true).open(path)?;
    let res = f.write_all(contents).and_then(|()| f.sync_all());
    if res.is_err() {
        let _ = fs::remove_file(path);
    }
    res
}

/// Replaces `path` atomically with a 0600 file holding `contents` (a temporary file in the same
/// directory, synced, then renamed over it), whatever the mode of the file it replaces.
pub fn write_private_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if path.file_name().is_none() {
        return Err(Error::InvalidInput(format!(
            "{} is not a file path",
            path.display()
        )));
    }
    // tempfile creates it 0600 with O_EXCL under a random name, and removes it on failure.
    let mut tmp = tempfile::Builder::new()
        .prefix(".agentkeys-")
        .tempfile_in(dir)
        .map_err(|e| Error::io("write", path, e))?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io("write", path, e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("write", path, e.error))?;
    Ok(())
}

/// Reads a private file: it must be a regular file, not readable or writable by group/others,
/// and small. `Ok(None)` when it does not exist.
pub fn read_private(path: &Path) -> Result<Option<Vec<u8>>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let meta = f.metadata().map_err(|e| Error::io("read", path, e))?;
    if !meta.is_file() {
        return Err(Error::InvalidInput(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    check_private_mode(path, &meta)?;
    if meta.len() > MAX_PRIVATE_FILE {
        return Err(Error::InvalidInput(format!(
            "{} is larger than {MAX_PRIVATE_FILE} bytes; it is not a file this client wrote",
            path.display()
        )));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_PRIVATE_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(Some(buf))
}

#[cfg(unix)]
fn check_private_mode(path: &Path, meta: &fs::Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(_path: &Path, _meta: &fs::Metadata) -> Result<()> {
    Ok(())
}

/// Removes a file; `Ok(false)` when there was nothing to remove.
pub fn remove_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn atomic_write_is_0600_even_over_a_loose_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        fs::write(&p, b"old").expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private_atomic(&p, b"new").expect("atomic write");
        assert_eq!(mode(&p), 0o600);
        assert_eq!(fs::read(&p).expect("read"), b"new");
        // No temp file left behind.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn dirs_are_0700() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a/b/c");
        create_private_dir(&p).expect("mkdir");
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&dir.path().join(d)), 0o700, "{d}");
        }
    }

    #[test]
    fn read_refuses_group_or_other_access() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        write_new_private(&p, b"x").expect("write");
        assert_eq!(read_private(&p).expect("read"), Some(b"x".to_vec()));
        for loose in [0o640, 0o604, 0o620, 0o602] {
            fs::set_permissions(&p, fs::Permissions::from_mode(loose)).expect("chmod");
            match read_private(&p) {
                Err(Error::InsecurePermissions { mode, .. }) => assert_eq!(mode, loose),
                other => panic!("mode {loose:o}: {other:?}"),
            }
        }
        assert_eq!(
            read_private(&dir.path().join("missing")).expect("read"),
            None
        );
    }

    #[test]
    fn write_new_refuses_existing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        write_new_private(&p, b"1").expect("first");
        let e = write_new_private(&p, b"2").expect_err("second must fail");
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).expect("read"), b"1");
    }
}
