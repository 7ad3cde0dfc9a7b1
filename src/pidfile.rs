//! The `-p` pid file: output for other tools, never the source of truth for whom to signal; and
//! the atomic replace of a file it and the reload ledger are written with.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Largest pid file the wrapper reads; anything longer is not a pid file.
const MAX_LEN: u64 = 4096;

/// Parses a pid file: pids separated by white space. Anything else (garbage, zero, negative,
/// numbers beyond the kernel's pid range, megabytes of text) is an error.
pub fn parse(text: &[u8]) -> Result<Vec<i32>, String> {
    if text.len() as u64 > MAX_LEN {
        return Err(format!("{} bytes is too long for a pid file", text.len()));
    }
    let text = std::str::from_utf8(text).map_err(|_| "not text".to_string())?;
    let mut pids = Vec::new();
    for word in text.split_whitespace() {
        match word.parse::<i32>() {
            Ok(p) if p > 0 && p <= 4_194_304 => pids.push(p),
            _ => return Err(format!("'{}' is not a pid", word.chars().take(32).collect::<String>())),
        }
    }
    Ok(pids)
}

/// Opens an existing file for reading without following a symlink and without blocking (a FIFO
/// at the path would otherwise hang the event loop); anything but a regular file is refused.
fn open_regular(path: &Path) -> Result<std::fs::File, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => "a symbolic link, not a regular file".to_string(),
            _ => e.to_string(),
        })?;
    let kind = f.metadata().map_err(|e| e.to_string())?.file_type();
    if !kind.is_file() {
        return Err("not a regular file".to_string());
    }
    Ok(f)
}

/// Reads at most MAX_LEN+1 bytes of a pid file and parses them.
pub fn read(path: &Path) -> Result<Vec<i32>, String> {
    let f = open_regular(path)?;
    let mut buf = Vec::new();
    f.take(MAX_LEN + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    parse(&buf)
}

/// What may be at the pid file's path for the wrapper to replace it: nothing, or a regular file.
fn replaceable(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) => {
            let what = if m.file_type().is_symlink() {
                "a symbolic link"
            } else if m.file_type().is_dir() {
                "a directory"
            } else {
                "a special file"
            };
            Err(std::io::Error::new(
                std::io::ErrorKind::Other,
                format!("{} is {}, not a regular file: left alone", path.display(), what),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A name nobody can guess in advance (so nobody can place a FIFO or a link there first).
fn random_suffix() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe {
        nix::libc::getrandom(
            b.as_mut_ptr() as *mut nix::libc::c_void,
            b.len(),
            nix::libc::GRND_NONBLOCK,
        )
    };
    if n != b.len() as isize {
        b = crate::clock::now_ns().to_le_bytes();
    }
    b.iter().map(|x| format!("{:02x}", x)).collect()
}

/// Writes the pids atomically (`replace_file`, 0644, a temporary name nobody can predict).
/// Refuses to replace anything that is not a regular file.
pub fn write(path: &Path, pids: &[i32]) -> std::io::Result<()> {
    replaceable(path)?;
    let mut text = String::new();
    for p in pids {
        text.push_str(&p.to_string());
        text.push('\n');
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{}.{}.tmp", name, random_suffix()));
    replace_file(path, &tmp, 0o644, text.as_bytes(), true)
}

/// Replaces `target` atomically with `bytes`: `tmp` created fresh beside it (O_CREAT|O_EXCL|
/// O_NOFOLLOW|O_NONBLOCK|O_NOCTTY, `mode`), written, synced when `sync`, renamed over `target`;
/// removed again when anything fails. For the pid file (synced) and the reload ledger (not: it is
/// written on every reload, and only the running wrapper and its clients read it).
pub fn replace_file(target: &Path, tmp: &Path, mode: u32, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(tmp)?;
    let result = f
        .write_all(bytes)
        .and_then(|_| if sync { f.sync_all() } else { Ok(()) })
        .and_then(|_| std::fs::rename(tmp, target));
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// Removes the pid file at exit, only while it is still a regular file.
pub fn remove(path: &Path) {
    if replaceable(path).is_ok() {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    #[test]
    fn parses_pids_and_rejects_garbage() {
        assert_eq!(parse(b"123\n").unwrap(), vec![123]);
        assert_eq!(parse(b"1 2\n3\n").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse(b"").unwrap(), Vec::<i32>::new());
        assert!(parse(b"abc").is_err());
        assert!(parse(b"0").is_err());
        assert!(parse(b"-5").is_err());
        assert!(parse(b"99999999999").is_err());
        assert!(parse(&[0xff, 0xfe]).is_err());
        assert!(parse("1 ".repeat(3000).as_bytes()).is_err());
    }

    #[test]
    fn writes_atomically_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("hsw-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("haproxy.pid");
        std::fs::write(&p, "garbage").unwrap();
        write(&p, &[10, 20]).unwrap();
        assert_eq!(read(&p).unwrap(), vec![10, 20]);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
        std::fs::write(&p, vec![b'7'; 5 * 1024 * 1024]).unwrap();
        assert!(read(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn never_replaces_or_blocks_on_what_is_not_a_regular_file() {
        use nix::sys::stat::Mode;
        let dir = std::env::temp_dir().join(format!("hsw-pidfile-hostile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A FIFO at the pid file's path: neither read nor write blocks, and it stays a FIFO.
        let fifo = dir.join("fifo.pid");
        nix::unistd::mkfifo(&fifo, Mode::S_IRWXU).unwrap();
        assert_eq!(read(&fifo).unwrap_err(), "not a regular file");
        assert!(write(&fifo, &[1])
            .unwrap_err()
            .to_string()
            .contains("a special file, not a regular file"));
        remove(&fifo);
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        // A symlink to a file of someone else's choosing: never written through, never replaced.
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = dir.join("link.pid");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(read(&link).unwrap_err().contains("symbolic link"));
        assert!(write(&link, &[1]).is_err());
        remove(&link);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        // The temporary name is not predictable: two writes use two names, neither left behind.
        let p = dir.join("ok.pid");
        write(&p, &[5]).unwrap();
        write(&p, &[6]).unwrap();
        assert_eq!(read(&p).unwrap(), vec![6]);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        assert_ne!(random_suffix(), random_suffix());
        remove(&p);
        assert!(!p.exists());
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 3, "only fifo, victim and link are left: {:?}", left);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn randomized_pid_files_parse_or_fail_clearly() {
        use crate::fuzz::{assert_clear_error, Rng, CASES};
        let mut rng = Rng::new(0x91d);
        let valid = b"1234\n5678\n";
        for case in 0..CASES {
            let input = match case % 3 {
                0 => rng.bytes(64),
                1 => rng.mutate(valid, b" \n\t-+0123456789"),
                _ => {
                    // Round trip: pids written one per line (or with any white space) read back.
                    let pids: Vec<i32> = (0..rng.below(8)).map(|_| 1 + rng.below(4_194_304) as i32).collect();
                    let sep = *rng.pick(&[" ", "\n", "\t", " \n ", "\r\n"]);
                    let text: String = pids.iter().map(|p| format!("{}{}", p, sep)).collect();
                    assert_eq!(parse(text.as_bytes()), Ok(pids), "case {}: {:?}", case, text);
                    continue;
                }
            };
            match parse(&input) {
                Ok(pids) => assert!(
                    pids.iter().all(|&p| p > 0 && p <= 4_194_304),
                    "case {}: {:?} gave {:?}",
                    case,
                    input,
                    pids
                ),
                Err(e) => {
                    assert_clear_error(&input, &e);
                    assert!(
                        e.chars().count() < 100 && !e.contains('\n'),
                        "case {}: one short line: {:?}",
                        case,
                        e
                    );
                }
            }
        }
    }
}
