/*!
Reading the small files a configuration is made of (rc files, `.netrc`, certificates
and keys) without trusting what a path names.

Only a regular file is read: a FIFO would block the load forever (opening one for
reading waits for a writer), and a device such as `/dev/zero` never ends. The check is
made on the path's metadata *before* opening, the file is opened non-blocking so that
a FIFO swapped in between cannot block either, and the opened file is checked again.
At most `max` bytes are read; a longer file is refused rather than truncated.

Errors are [`io::Error`]s without the path: callers put the path (and the option that
named it) in front.
*/

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The limit for rc files and `.netrc`: far more than any real one.
pub const CONFIG_MAX_BYTES: u64 = 1024 * 1024;

/// Reads the regular file at `path` (symlinks followed), at most `max` bytes, and returns
/// its contents with the metadata of the file that was read.
///
/// Errors: the file's own (`NotFound`, `PermissionDenied`, ...); `IsADirectory`; for a
/// FIFO, socket or device `InvalidInput` "not a regular file ..."; for a file longer than
/// `max`, `FileTooLarge`.
pub fn read(path: &Path, max: u64) -> io::Result<(Vec<u8>, fs::Metadata)> {
    check_regular(&fs::metadata(path)?)?;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    check_regular(&meta)?;
    let mut data = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {}, which no such file is", size_text(max)),
        ));
    }
    Ok((data, meta))
}

fn check_regular(meta: &fs::Metadata) -> io::Result<()> {
    if meta.is_dir() {
        Err(io::Error::from(io::ErrorKind::IsADirectory))
    } else if !meta.is_file() {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket or device); name a file",
        ))
    } else {
        Ok(())
    }
}

fn size_text(bytes: u64) -> String {
    if bytes >= 1024 * 1024 && bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn mkfifo(path: &Path) {
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            path,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
    }

    #[test]
    fn reads_a_regular_file_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"12345").unwrap();
        let (data, meta) = read(&p, 5).unwrap();
        assert_eq!(data, b"12345");
        assert!(meta.is_file());
        let e = read(&p, 4).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(e.to_string(), "larger than 4 bytes, which no such file is");
    }

    #[test]
    fn refuses_fifos_devices_and_directories_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let start = Instant::now();
        let e = read(&fifo, CONFIG_MAX_BYTES).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // A symlink to a FIFO is the FIFO.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert_eq!(
            read(&link, CONFIG_MAX_BYTES).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            read(Path::new("/dev/zero"), CONFIG_MAX_BYTES)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            read(dir.path(), CONFIG_MAX_BYTES).unwrap_err().kind(),
            io::ErrorKind::IsADirectory
        );
        assert_eq!(
            read(&dir.path().join("missing"), CONFIG_MAX_BYTES)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }
}
