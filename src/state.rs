//! What must survive a restart: the secret that keys ISNs, timestamp
//! offsets, port offsets and SYN cookies.
//!
//! RFC 6528 makes an ISN a clock plus a keyed hash of the 4-tuple, and our
//! TIME_WAIT recycling rests on ISNs and timestamps growing per tuple. A
//! secret drawn anew by each process would move every tuple's hash: within
//! 2MSL of a restart a new connection could start below the old
//! incarnation's sequence space and be taken for an old duplicate. So the
//! secret is drawn once, kept in `state_dir` (0600), and read by every
//! later start.

use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file in the state directory.
pub const SECRET_FILE: &str = "isn-secret";
/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/turnstile";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot create the state directory {dir}: {err} (set state_dir / --state-dir to a \
         writable directory; it keeps the ISN secret across restarts)"
    )]
    Dir { dir: PathBuf, err: io::Error },
    #[error(
        "cannot write {file}: {err} (the state directory must be writable by turnstile on \
         first start; set state_dir / --state-dir)"
    )]
    Write { file: PathBuf, err: io::Error },
    #[error("cannot read {file}: {err}")]
    Read { file: PathBuf, err: io::Error },
    #[error(
        "{file} holds {len} bytes, not 16: it is not a turnstile secret (remove it to draw a \
         new one; connections to tuples used in the last 2MSL may then be refused for a while)"
    )]
    Corrupt { file: PathBuf, len: usize },
    #[error(
        "{file} is readable by others (mode {mode:o}): anyone who reads it can predict our \
         ISNs and forge SYN cookies; run `chmod 600 {file}`"
    )]
    Exposed { file: PathBuf, mode: u32 },
    #[error("no randomness for the ISN secret: {0}")]
    Random(String),
}

/// The secret in `dir`, drawn and stored (0600) on first start.
pub fn load_or_create_secret(dir: &Path) -> Result<[u8; 16], StateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|err| StateError::Dir {
            dir: dir.to_path_buf(),
            err,
        })?;
    let file = dir.join(SECRET_FILE);
    match read_secret(&file) {
        Err(StateError::Read { err, .. }) if err.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let mut secret = [0u8; 16];
    getrandom::fill(&mut secret).map_err(|e| StateError::Random(e.to_string()))?;
    // Written whole under a temporary name, then linked into place: a
    // reader never sees half a secret, and of two processes starting at
    // once one wins and the other reads the winner's.
    let tmp = dir.join(format!(".{SECRET_FILE}.{}", std::process::id()));
    let write = |err| StateError::Write {
        file: file.clone(),
        err,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write)?;
    let written = f.write_all(&secret).and_then(|()| f.sync_all());
    drop(f);
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, &file));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_secret(&file),
        Err(e) => Err(write(e)),
    }
}

fn read_secret(file: &Path) -> Result<[u8; 16], StateError> {
    let read = |err| StateError::Read {
        file: file.to_path_buf(),
        err,
    };
    let mut f = std::fs::File::open(file).map_err(read)?;
    let mode = f.metadata().map_err(read)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StateError::Exposed {
            file: file.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Vec::with_capacity(17);
    Read::by_ref(&mut f)
        .take(17)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    <[u8; 16]>::try_from(bytes.as_slice()).map_err(|_| StateError::Corrupt {
        file: file.to_path_buf(),
        len: bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("turnstile-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_secret_is_created_once_0600_and_read_back() {
        let dir = scratch("create").join("nested");
        let a = load_or_create_secret(&dir).unwrap();
        let meta = std::fs::metadata(dir.join(SECRET_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_secret(&dir).unwrap(), a);
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn a_bad_or_exposed_file_is_a_clear_error() {
        let dir = scratch("bad");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(SECRET_FILE);
        std::fs::write(&file, b"short").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_or_create_secret(&dir).unwrap_err();
        assert!(matches!(e, StateError::Corrupt { len: 5, .. }), "{e}");
        std::fs::write(&file, [1u8; 16]).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_secret(&dir).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_directory_is_a_clear_error() {
        // A path under a regular file cannot be a directory.
        let dir = scratch("file");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plain"), b"x").unwrap();
        let e = load_or_create_secret(&dir.join("plain").join("sub")).unwrap_err();
        assert!(e.to_string().contains("state_dir"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
