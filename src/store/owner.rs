//! A command run as root on a store another user owns (the service's, in
//! `/var/lib/callverify`) acts as that user. SQLite creates the `-wal` and `-shm` files with
//! the identity of whoever opens the store first; a root-owned `-wal` would lock the service
//! out of its own store, and a root-owned new key file would be unreadable to it.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use rustix::process::{Gid, Uid};

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot act as the owner (uid {uid}, gid {gid}) of {}: {source}; run the command as that user \
     (e.g. `sudo -u callverify callverify ...`)",
    path.display()
)]
pub struct OwnerError {
    path: PathBuf,
    uid: u32,
    gid: u32,
    source: std::io::Error,
}

/// When this process runs as root and the SQLite store of `url` (or, before there is one,
/// its folder) belongs to another user, become that user: groups, then group, then user,
/// for good. Must run before any other thread starts: Linux changes only the calling thread's
/// identity, and threads started later inherit it.
pub fn act_as_owner(url: &str) -> Result<(), OwnerError> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let Some(path) = super::sqlite_path(url) else {
        return Ok(());
    };
    // The store, or where there is none yet the folder it is to be made in (the service's
    // state directory): a store a root command creates there is its owner's too. Another
    // user's symbolic link is that user's: root does not follow it as root; root's own link
    // is followed to what it points to.
    let folder = super::store_folder(path);
    let owned = |path: &Path| {
        let meta = std::fs::symlink_metadata(path)?;
        if meta.is_symlink() && meta.uid() == 0 {
            std::fs::metadata(path)
        } else {
            Ok(meta)
        }
    };
    let (path, meta) = match owned(path) {
        Ok(meta) => (path, meta),
        Err(_) => match owned(folder) {
            Ok(meta) => (folder, meta),
            Err(_) => return Ok(()),
        },
    };
    if meta.uid() == 0 {
        return Ok(());
    }
    let failed = |source: rustix::io::Errno| OwnerError {
        path: path.to_owned(),
        uid: meta.uid(),
        gid: meta.gid(),
        source: source.into(),
    };
    let (uid, gid) = (Uid::from_raw(meta.uid()), Gid::from_raw(meta.gid()));
    rustix::thread::set_thread_groups(&[gid]).map_err(failed)?;
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(failed)?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(failed)?;
    Ok(())
}
