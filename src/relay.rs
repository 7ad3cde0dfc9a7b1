//! haproxy's stdout and stderr: one pipe for every haproxy the wrapper starts, read by the loop,
//! each line re-emitted through the wrapper's log with a priority.

use std::os::unix::io::RawFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// The pipe haproxy's stdout and stderr go to; the wrapper re-emits each line with a priority.
pub struct Relay {
    pub r: RawFd,
    pub w: RawFd,
    buf: Vec<u8>,
}

impl Relay {
    pub fn new() -> nix::Result<Relay> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // Writers (haproxy) block rather than lose lines; only the read end is non-blocking.
        fcntl(w, FcntlArg::F_SETFL(OFlag::empty()))?;
        Ok(Relay { r, w, buf: Vec::new() })
    }

    pub fn from_fds(r: RawFd, w: RawFd) -> Relay {
        Relay { r, w, buf: Vec::new() }
    }

    /// Reads what is available (at most READ_BUDGET bytes per call, so the loop gets its turn
    /// during a flood) and returns the complete lines; a line longer than MAX_RELAY_LINE is cut there.
    pub fn read_lines(&mut self) -> Vec<String> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut lines = Vec::new();
        let mut read = 0;
        while read < READ_BUDGET {
            match nix::unistd::read(self.r, &mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    read += n;
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.take_lines(&mut lines);
                }
                Err(nix::Error::EINTR) => continue,
                Err(_) => break,
            }
        }
        lines
    }

    /// Moves the complete lines out of the buffer (one pass, one drain); a line longer than
    /// MAX_RELAY_LINE, complete or still growing, goes out in MAX_RELAY_LINE pieces.
    fn take_lines(&mut self, lines: &mut Vec<String>) {
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + i;
            for piece in self.buf[start..end].chunks(MAX_RELAY_LINE) {
                lines.push(String::from_utf8_lossy(piece).trim_end().to_string());
            }
            if start == end {
                lines.push(String::new());
            }
            start = end + 1;
        }
        while self.buf.len() - start > MAX_RELAY_LINE {
            lines.push(String::from_utf8_lossy(&self.buf[start..start + MAX_RELAY_LINE]).into_owned());
            start += MAX_RELAY_LINE;
        }
        self.buf.drain(..start);
    }

    /// Whatever partial line is left (before the re-exec).
    pub fn take_partial(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            None
        } else {
            let s = String::from_utf8_lossy(&self.buf).into_owned();
            self.buf.clear();
            Some(s)
        }
    }
}

/// The longest haproxy line relayed as one (the rest of a longer one follows as further lines).
pub const MAX_RELAY_LINE: usize = 16 * 1024;
/// How much of haproxy's output one turn of the loop reads at most.
const READ_BUDGET: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_splits_lines() {
        let mut r = Relay::new().unwrap();
        nix::unistd::write(r.w, b"[ALERT] one\ntwo\npart").unwrap();
        assert_eq!(r.read_lines(), vec!["[ALERT] one".to_string(), "two".to_string()]);
        nix::unistd::write(r.w, b"ial\n").unwrap();
        assert_eq!(r.read_lines(), vec!["partial".to_string()]);
        assert_eq!(r.take_partial(), None);
    }

    #[test]
    fn relay_cuts_long_lines_at_16_kib_and_keeps_many_lines_in_order() {
        let mut r = Relay::new().unwrap();
        // A 40 KiB line without a newline yet: two 16 KiB pieces now, the rest when it ends.
        nix::unistd::write(r.w, &vec![b'x'; 40 * 1024]).unwrap();
        let got = r.read_lines();
        assert_eq!(
            got.iter().map(String::len).collect::<Vec<_>>(),
            vec![MAX_RELAY_LINE, MAX_RELAY_LINE]
        );
        nix::unistd::write(r.w, b"\n").unwrap();
        assert_eq!(
            r.read_lines().iter().map(String::len).collect::<Vec<_>>(),
            vec![8 * 1024]
        );
        // A 20 KiB line with its newline: cut at 16 KiB, the rest follows as a line of its own.
        let mut long = vec![b'y'; 20 * 1024];
        long.push(b'\n');
        nix::unistd::write(r.w, &long).unwrap();
        assert_eq!(
            r.read_lines().iter().map(String::len).collect::<Vec<_>>(),
            vec![MAX_RELAY_LINE, 4 * 1024]
        );
        // Thousands of short lines, in order (a reload's "Proxy X stopped" lines).
        let text: String = (0..3000)
            .map(|i| format!("[WARNING]  (1) : Proxy p{} stopped\n", i))
            .collect();
        let writer = std::thread::spawn({
            let w = r.w;
            move || nix::unistd::write(w, text.as_bytes()).unwrap()
        });
        let mut all = Vec::new();
        while all.len() < 3000 {
            all.extend(r.read_lines());
        }
        writer.join().unwrap();
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, l)| l == &format!("[WARNING]  (1) : Proxy p{} stopped", i)));
    }
}
