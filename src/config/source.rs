//! Where the configuration file is found, and whether the one in the working directory
//! may be read.

use std::path::{Path, PathBuf};

/// The file in the working directory, looked for after `--config` and [`FILE_VARIABLE`].
pub const DEFAULT_FILE: &str = "callverify.toml";
/// The environment variable naming the configuration file.
pub const FILE_VARIABLE: &str = "CALLVERIFY_CONFIG";
/// The installed service's configuration (the Debian package's conffile), looked for last.
pub const SYSTEM_FILE: &str = "/etc/callverify/callverify.toml";

/// Where the configuration file came from: `--config FILE`, else `$CALLVERIFY_CONFIG`, else
/// `./callverify.toml`, else `/etc/callverify/callverify.toml`, else none (the defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag(PathBuf),
    Variable(PathBuf),
    WorkingDirectory(PathBuf),
    /// `./callverify.toml` that someone else could have written: not read.
    Untrusted {
        path: PathBuf,
        why: String,
    },
    System(PathBuf),
    /// `./callverify.toml` or [`SYSTEM_FILE`] whose existence cannot be checked (a folder
    /// this user may not search, as `/etc/callverify` is to users outside group
    /// `callverify`): not taken for absent, which would mean the defaults and a store in the
    /// working directory.
    Unreadable {
        path: PathBuf,
        kind: std::io::ErrorKind,
        why: String,
    },
    /// No file: the built-in defaults and the environment.
    Defaults,
}

impl Source {
    /// Where `callverify` finds its configuration: [`Self::locate_in`] the working directory
    /// and [`SYSTEM_FILE`].
    pub fn locate(flag: Option<&Path>) -> Self {
        Self::locate_in(
            flag,
            std::env::var_os(FILE_VARIABLE),
            Path::new(DEFAULT_FILE),
            Path::new(SYSTEM_FILE),
        )
    }

    /// The first of the places in order; a file named by the flag or the variable must exist
    /// (reading it fails otherwise), `local` and `system` are taken only if they exist, and
    /// are [`Self::Unreadable`] when whether they exist cannot be told.
    pub fn locate_in(
        flag: Option<&Path>,
        variable: Option<std::ffi::OsString>,
        local: &Path,
        system: &Path,
    ) -> Self {
        Self::locate_by(flag, variable, local, system, Path::try_exists)
    }

    /// [`Self::locate_in`], with `exists` telling whether a file exists.
    fn locate_by(
        flag: Option<&Path>,
        variable: Option<std::ffi::OsString>,
        local: &Path,
        system: &Path,
        exists: impl Fn(&Path) -> std::io::Result<bool>,
    ) -> Self {
        if let Some(path) = flag {
            return Self::Flag(path.to_owned());
        }
        if let Some(path) = variable.filter(|v| !v.is_empty()) {
            return Self::Variable(path.into());
        }
        match exists(local) {
            Ok(true) => {
                return match untrusted(local) {
                    Some(why) => Self::Untrusted {
                        path: local.to_owned(),
                        why,
                    },
                    None => Self::WorkingDirectory(local.to_owned()),
                }
            }
            Ok(false) => {}
            Err(e) => return Self::unreadable(local, &e, "run the command from another folder"),
        }
        match exists(system) {
            Ok(true) => Self::System(system.to_owned()),
            Ok(false) => Self::Defaults,
            Err(e) => {
                Self::unreadable(system, &e, "run as root or as a member of group callverify")
            }
        }
    }

    /// `path`, whose existence `error` hides; `remedy` when the error is a permission's.
    fn unreadable(path: &Path, error: &std::io::Error, remedy: &str) -> Self {
        let why = match error.kind() {
            std::io::ErrorKind::PermissionDenied => {
                format!("permission denied; {remedy}, or name another file with --config")
            }
            _ => error.to_string(),
        };
        Self::Unreadable {
            path: path.to_owned(),
            kind: error.kind(),
            why,
        }
    }

    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::Flag(p) | Self::Variable(p) | Self::WorkingDirectory(p) | Self::System(p) => {
                Some(p)
            }
            Self::Untrusted { .. } | Self::Unreadable { .. } | Self::Defaults => None,
        }
    }
}

/// Why the file in the working directory may not be the admin's own: a command run as root
/// in a folder another user controls (`/tmp`) would otherwise act on whatever store, with
/// whatever keys, that user's file names. `None`: it may be read (see [`open_trusted`]).
fn untrusted(path: &Path) -> Option<String> {
    open_trusted(path).err()
}

/// The file in the working directory, opened, if it may be read: a regular file (not a
/// symbolic link, whose target's folder would go unchecked), and the file and its folder
/// belong to this user or root, and neither may be written by anyone else (others, or a
/// group other than this user's own); a sticky folder (`/tmp`) lets nobody swap another's
/// file. The checks are made on the file opened, which is the one then read: nobody else
/// can change it or put another in its place between them. `Err`: why not.
pub(crate) fn open_trusted(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let (me, my_group) = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path);
    let opened = match opened {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err("it is a symbolic link (name the file it points to with --config)".into())
        }
        Err(e) => return Err(format!("{} cannot be read: {e}", path.display())),
    };
    let file = opened
        .metadata()
        .map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    if !file.is_file() {
        return Err("it is not a regular file".into());
    }
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let folder = std::fs::metadata(folder)
        .map_err(|e| format!("{} cannot be read: {e}", folder.display()))?;
    // Writable by someone else: by all, or by a group that is not this user's.
    let others_write = |meta: &std::fs::Metadata| {
        meta.mode() & 0o002 != 0 || (meta.mode() & 0o020 != 0 && meta.gid() != my_group)
    };
    if file.uid() != me && file.uid() != 0 {
        return Err(format!(
            "it belongs to user id {}, not to you or root",
            file.uid()
        ));
    }
    if others_write(&file) {
        return Err(format!(
            "others may write it (mode {:o})",
            file.mode() & 0o7777
        ));
    }
    // A folder's owner may replace any file in it, sticky or not.
    if folder.uid() != me && folder.uid() != 0 {
        return Err(format!(
            "its folder belongs to user id {}, who may replace it",
            folder.uid()
        ));
    }
    if others_write(&folder) && folder.mode() & 0o1000 == 0 {
        return Err("others may replace it: its folder is writable by them".into());
    }
    // In a sticky folder others write to (/tmp), another name of a file elsewhere: where
    // hard links to others' files are allowed, a user may link root's there.
    if others_write(&folder) && file.nlink() > 1 {
        return Err(format!(
            "it has {} names (hard links) in a folder others write to: name the file with \
             --config",
            file.nlink()
        ));
    }
    Ok(opened)
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flag(p) => write!(f, "{} (--config)", p.display()),
            Self::Variable(p) => write!(f, "{} (${FILE_VARIABLE})", p.display()),
            Self::WorkingDirectory(p) => write!(f, "{} (in the working directory)", p.display()),
            Self::Untrusted { path, why } => write!(
                f,
                "{} (in the working directory; not read: {why})",
                path.display()
            ),
            Self::System(p) => write!(f, "{} (the installed service's)", p.display()),
            Self::Unreadable { path, why, .. } => {
                write!(f, "{} (cannot be read: {why})", path.display())
            }
            Self::Defaults => write!(
                f,
                "none: the defaults (no --config, no ${FILE_VARIABLE}, no ./{DEFAULT_FILE}, no {SYSTEM_FILE})"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::env;
    use crate::config::Config;

    #[test]
    fn the_file_is_looked_for_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (local, system) = (
            dir.path().join("local.toml"),
            dir.path().join("system.toml"),
        );
        let flag = Path::new("flag.toml");
        let variable = || Some(std::ffi::OsString::from("variable.toml"));
        let locate = |flag, variable| Source::locate_in(flag, variable, &local, &system);
        assert_eq!(locate(None, None), Source::Defaults);
        std::fs::write(&system, "").unwrap();
        assert_eq!(locate(None, None), Source::System(system.clone()));
        std::fs::write(&local, "").unwrap();
        assert_eq!(locate(None, None), Source::WorkingDirectory(local.clone()));
        assert_eq!(
            locate(None, Some("".into())),
            Source::WorkingDirectory(local.clone())
        );
        assert_eq!(
            locate(None, variable()),
            Source::Variable("variable.toml".into())
        );
        assert_eq!(locate(Some(flag), variable()), Source::Flag(flag.into()));
        // Each says where it came from.
        assert!(Source::Defaults.to_string().contains(SYSTEM_FILE));
        assert!(locate(None, variable()).to_string().contains(FILE_VARIABLE));
    }

    /// A file whose existence cannot be checked (`/etc/callverify`, mode 750, to a user
    /// outside group `callverify`) is reported, not taken for absent: the defaults would
    /// start a store in the working directory.
    #[test]
    fn a_file_that_cannot_be_checked_is_not_taken_for_absent() {
        use std::io::{Error, ErrorKind};
        let (local, system) = (Path::new("local.toml"), Path::new("/etc/cv/cv.toml"));
        let locate = |denied: &'static Path| {
            Source::locate_by(None, None, local, system, |path| match path {
                p if p == denied => Err(Error::from(ErrorKind::PermissionDenied)),
                _ => Ok(false),
            })
        };
        let source = locate(system);
        assert!(
            matches!(&source, Source::Unreadable { path, kind: ErrorKind::PermissionDenied, .. }
                if path == system),
            "{source:?}"
        );
        let error = Config::load(&source, env(&[])).unwrap_err().to_string();
        assert_eq!(
            error,
            "cannot read config file /etc/cv/cv.toml: permission denied; run as root or as a \
             member of group callverify, or name another file with --config"
        );
        assert!(
            source
                .to_string()
                .contains("cannot be read: permission denied"),
            "{source}"
        );
        // The working directory's file first, as when it exists.
        let source = locate(local);
        assert!(
            matches!(&source, Source::Unreadable { path, .. } if path == local),
            "{source:?}"
        );
        // Another error is said as it is.
        let source = Source::locate_by(None, None, local, system, |path| match path {
            p if p == system => Err(Error::from(ErrorKind::NotADirectory)),
            _ => Ok(false),
        });
        let error = Config::load(&source, env(&[])).unwrap_err().to_string();
        assert!(
            error.starts_with("cannot read config file /etc/cv/cv.toml: "),
            "{error}"
        );
        // The real file system, where the user is not root (mode 000 does not stop root).
        if !rustix::process::geteuid().is_root() {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            let folder = dir.path().join("etc");
            std::fs::create_dir(&folder).unwrap();
            std::fs::write(folder.join("c.toml"), "").unwrap();
            std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o000)).unwrap();
            let source = Source::locate_in(
                None,
                None,
                &dir.path().join("none.toml"),
                &folder.join("c.toml"),
            );
            std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700)).unwrap();
            assert!(
                matches!(
                    source,
                    Source::Unreadable {
                        kind: ErrorKind::PermissionDenied,
                        ..
                    }
                ),
                "{source:?}"
            );
        }
    }

    /// A command run as root in a folder another user controls must not act on a store (or
    /// make keys and staff in one) that a file planted there names.
    #[cfg(unix)]
    #[test]
    fn a_working_directory_file_others_could_write_is_not_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (local, system) = (dir.path().join("c.toml"), dir.path().join("none.toml"));
        std::fs::write(&local, "").unwrap();
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let locate = || Source::locate_in(None, None, &local, &system);
        let refused = |why: &str| {
            let source = locate();
            assert!(
                matches!(&source, Source::Untrusted { why: w, .. } if w.contains(why)),
                "{source:?}"
            );
            let error = Config::load(&source, env(&[])).unwrap_err().to_string();
            assert!(error.contains("--config"), "{error}");
        };
        mode(&local, 0o644);
        assert_eq!(locate(), Source::WorkingDirectory(local.clone()));
        // Changed after it was found: the file read is checked again.
        let found = locate();
        mode(&local, 0o666);
        let error = Config::load(&found, env(&[])).unwrap_err().to_string();
        assert!(error.contains("others may write it"), "{error}");
        refused("others may write it");
        // A symbolic link, even to a file that may be read, is not followed.
        mode(&local, 0o644);
        std::fs::rename(&local, dir.path().join("target.toml")).unwrap();
        std::os::unix::fs::symlink("target.toml", &local).unwrap();
        refused("symbolic link");
        std::fs::remove_file(&local).unwrap();
        // Another name of a file: one's own in one's own folder, but not in a folder others
        // write to.
        std::fs::hard_link(dir.path().join("target.toml"), &local).unwrap();
        assert_eq!(locate(), Source::WorkingDirectory(local.clone()));
        mode(dir.path(), 0o1777);
        refused("2 names (hard links) in a folder others write to");
        mode(dir.path(), 0o700);
        std::fs::remove_file(&local).unwrap();
        std::fs::rename(dir.path().join("target.toml"), &local).unwrap();
        // Not a regular file (a pipe would block the reading).
        std::fs::remove_file(&local).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &local,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        refused("not a regular file");
        std::fs::remove_file(&local).unwrap();
        std::fs::write(&local, "").unwrap();
        mode(&local, 0o666);
        refused("others may write it");
        // Group-writable is fine when the group is the user's own (a umask of 002).
        std::os::unix::fs::chown(&local, None, Some(rustix::process::getegid().as_raw())).unwrap();
        mode(&local, 0o664);
        assert_eq!(locate(), Source::WorkingDirectory(local.clone()));
        mode(&local, 0o644);
        mode(dir.path(), 0o777);
        refused("its folder is writable by them");
        mode(dir.path(), 0o1777);
        assert_eq!(locate(), Source::WorkingDirectory(local.clone()));
        if rustix::process::geteuid().is_root() {
            // A group of other users may write it.
            std::os::unix::fs::chown(&local, None, Some(65534)).unwrap();
            mode(&local, 0o664);
            refused("others may write it");
            mode(&local, 0o644);
            std::os::unix::fs::chown(&local, Some(65534), None).unwrap();
            refused("belongs to user id 65534");
            std::os::unix::fs::chown(&local, Some(0), None).unwrap();
            mode(dir.path(), 0o755);
            std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
            refused("its folder belongs to user id 65534");
            std::os::unix::fs::chown(dir.path(), Some(0), None).unwrap();
        }
        mode(dir.path(), 0o700);
    }
}
