//! A small tmpfs for tests of a full or read-only disk: real ENOSPC and
//! EROFS from the kernel, no mocks. Shared by the unit tests
//! (`checkpoint.rs`, the disk buffer's) and `router/tests/faults.rs`.
//!
//! It is mounted inside a private mount namespace of the calling thread
//! (`unshare(CLONE_NEWNS)`, then `/` made private), so nobody else sees it
//! and a test that dies leaves no mount behind; [`Tmpfs`] also unmounts on
//! drop. Only this thread and what it starts afterwards (threads, child
//! processes such as the router) see the mount: create runtimes and spawn
//! processes after [`Tmpfs::mount`]. Needs root (CAP_SYS_ADMIN); without it
//! the caller skips its test, with the reason printed.
#![allow(dead_code)]

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct Tmpfs {
    /// Removed after the unmount (fields drop after `Drop::drop`).
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// Read-only bind mounts stacked on top (see [`Tmpfs::read_only`]).
    binds: usize,
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in a temp path")
}

fn errno(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let src = src.map(cstr);
    let target = cstr(target);
    let fstype = fstype.map(|t| CString::new(t).expect("no NUL"));
    let data = data.map(|d| CString::new(d).expect("no NUL"));
    // SAFETY: every pointer is a valid NUL-terminated string or null, alive
    // for the call.
    let r = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast::<libc::c_void>()),
        )
    };
    if r == 0 { Ok(()) } else { Err(errno("mount")) }
}

impl Tmpfs {
    /// A tmpfs of `size` (e.g. `"1m"`), or `None` with the reason printed
    /// when this process may not mount.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        match Self::try_mount(size) {
            Ok(t) => Some(t),
            Err(why) => {
                eprintln!("SKIPPED: cannot mount a tmpfs here ({why}); this test needs root with CAP_SYS_ADMIN");
                None
            }
        }
    }

    fn try_mount(size: &str) -> Result<Tmpfs, String> {
        // SAFETY: plain syscalls on this thread.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        // SAFETY: unshare of this thread's mount namespace (and fs info).
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Err(errno("unshare(CLONE_NEWNS)"));
        }
        // Our mounts must not propagate to the namespace we came from.
        mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        mount(
            Some(Path::new("tmpfs")),
            &path,
            Some("tmpfs"),
            0,
            Some(&format!("size={size},mode=0755")),
        )?;
        Ok(Tmpfs {
            _dir: dir,
            path,
            binds: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the file system with `<path>/filler` until the kernel says
    /// ENOSPC; returns the filler's path (remove it to give space back).
    pub fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&filler)
            .expect("create the filler");
        let chunk = vec![0xAAu8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        filler
    }

    /// Makes the file system read-only for new opens (a read-only bind
    /// mount on top: files already open for writing, like the router's
    /// `data_dir` lock, would make a plain read-only remount fail).
    pub fn read_only(&mut self) {
        mount(Some(&self.path), &self.path, None, libc::MS_BIND, None).expect("bind mount");
        self.binds += 1;
        mount(
            None,
            &self.path,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            None,
        )
        .expect("remount read-only");
    }

    /// Undoes [`Tmpfs::read_only`].
    pub fn writable(&mut self) {
        while self.binds > 0 {
            umount(&self.path).expect("unmount the read-only bind");
            self.binds -= 1;
        }
    }
}

fn umount(path: &Path) -> Result<(), String> {
    let p = cstr(path);
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(errno("umount"))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for _ in 0..=self.binds {
            let _ = umount(&self.path);
        }
    }
}
