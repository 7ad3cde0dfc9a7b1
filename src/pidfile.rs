//! The `-p` pid file: output for other tools, never the source of truth for whom to signal.

use std::io::{Read, Write};
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

/// Reads at most MAX_LEN+1 bytes of a pid file and parses them.
pub fn read(path: &Path) -> Result<Vec<i32>, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.take(MAX_LEN + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    parse(&buf)
}

/// Writes the pids atomically: a temporary file beside the target, then rename.
pub fn write(path: &Path, pids: &[i32]) -> std::io::Result<()> {
    let mut text = String::new();
    for p in pids {
        text.push_str(&p.to_string());
        text.push('\n');
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{}.{}.tmp", name, std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
