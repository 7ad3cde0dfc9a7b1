//! The test's notify socket: what the wrapper tells "systemd", received in a thread.

use super::*;

#[derive(Clone, Debug)]
pub struct Msg {
    /// Sender pid from SCM_CREDENTIALS (-1 when the kernel sent none).
    pub pid: i32,
    pub text: String,
    /// CLOCK_MONOTONIC (us) when the test received it.
    pub recv_usec: u64,
    /// Descriptors that came with it (FDSTORE=1): the test's copies, closed with the message.
    pub fds: Vec<Arc<OwnedFd>>,
}

impl Msg {
    /// The value of `KEY=` in this datagram.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
    pub fn has(&self, kv: &str) -> bool {
        self.text.lines().any(|l| l == kv)
    }
    pub fn is_ready(&self) -> bool {
        self.has("READY=1")
    }
    pub fn is_reloading(&self) -> bool {
        self.has("RELOADING=1")
    }
    pub fn is_stopping(&self) -> bool {
        self.has("STOPPING=1")
    }
}

const SYNC_PREFIX: &str = "X_TEST_SYNC=";

#[derive(Default)]
struct NotifyShared {
    msgs: Mutex<Vec<Msg>>,
    /// The last sync marker the receiving thread saw (see `Notify::sync`).
    synced: Mutex<u64>,
    sync_cond: Condvar,
    sync_sent: AtomicU64,
    cond: Condvar,
    stop: AtomicBool,
    /// Keep the descriptors datagrams bring (`Notify::keep_fds`); else they are closed at once, so
    /// that no test's listener stays open in the test process.
    keep_fds: AtomicBool,
}

/// A test-owned `NOTIFY_SOCKET`: AF_UNIX SOCK_DGRAM bound in the test's dir, SO_PASSCRED set; a
/// thread receives every datagram with its sender pid and records it.
pub struct Notify {
    pub path: PathBuf,
    shared: Arc<NotifyShared>,
    thread: Option<JoinHandle<()>>,
}

impl Notify {
    pub fn bind(path: &Path) -> Notify {
        let sock = UnixDatagram::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        setsockopt(sock.as_raw_fd(), sockopt::PassCred, &true).expect("SO_PASSCRED");
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let shared = Arc::new(NotifyShared::default());
        let sh = shared.clone();
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !sh.stop.load(Ordering::SeqCst) {
                let (n, pid, fds) = {
                    let mut iov = [IoSliceMut::new(&mut buf)];
                    // Room for one SCM_CREDENTIALS (ucred: 12 bytes) and up to 64 descriptors,
                    // with their headers; recvmsg uses the capacity.
                    let mut cmsg: Vec<u8> = Vec::with_capacity(64 + 64 * 4);
                    match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                        Ok(m) => {
                            let mut pid = -1;
                            let mut fds = Vec::new();
                            for c in m.cmsgs() {
                                match c {
                                    ControlMessageOwned::ScmCredentials(cr) => pid = cr.pid(),
                                    ControlMessageOwned::ScmRights(v) => {
                                        // SAFETY: the kernel just installed these for this process.
                                        fds.extend(
                                            v.into_iter().map(|fd| Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })),
                                        )
                                    }
                                    _ => {}
                                }
                            }
                            (m.bytes, pid, fds)
                        }
                        Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
                        Err(e) => panic!("recvmsg on notify socket: {e}"),
                    }
                };
                let fds = if sh.keep_fds.load(Ordering::SeqCst) {
                    fds
                } else {
                    Vec::new()
                };
                let msg = Msg {
                    pid,
                    text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                    recv_usec: monotonic_usec(),
                    fds,
                };
                if let Some(n) = msg.text.strip_prefix(SYNC_PREFIX) {
                    *sh.synced.lock().unwrap() = n.trim().parse().unwrap_or(0);
                    sh.sync_cond.notify_all();
                    continue;
                }
                sh.msgs.lock().unwrap().push(msg);
                sh.cond.notify_all();
            }
        });
        Notify {
            path: path.to_path_buf(),
            shared,
            thread: Some(thread),
        }
    }

    /// Returns once every datagram queued on the socket before this call is recorded: sends a
    /// marker datagram to the socket (datagrams are received in order) and waits for it.
    pub fn sync(&self) {
        let n = self.shared.sync_sent.fetch_add(1, Ordering::SeqCst) + 1;
        let sock = UnixDatagram::unbound().expect("socket");
        sock.send_to(format!("{SYNC_PREFIX}{n}").as_bytes(), &self.path)
            .expect("send sync marker");
        let deadline = Instant::now() + T;
        let mut synced = self.shared.synced.lock().unwrap();
        while *synced < n {
            let now = Instant::now();
            assert!(
                now < deadline,
                "notify socket: sync marker {n} not received within {T:?}"
            );
            synced = self.shared.sync_cond.wait_timeout(synced, deadline - now).unwrap().0;
        }
    }

    /// From now on, the descriptors that come with datagrams (FDSTORE=1) are kept with them.
    pub fn keep_fds(&self) {
        self.shared.keep_fds.store(true, Ordering::SeqCst);
    }

    /// Closes the descriptors kept so far (the test's copies of what the wrapper stored).
    pub fn close_fds(&self) {
        for m in self.shared.msgs.lock().unwrap().iter_mut() {
            m.fds.clear();
        }
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.shared.msgs.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the messages received so far; false on timeout.
    pub fn wait_for<F: FnMut(&[Msg]) -> bool>(&self, timeout: Duration, mut pred: F) -> bool {
        let deadline = Instant::now() + timeout;
        let mut msgs = self.shared.msgs.lock().unwrap();
        loop {
            if pred(&msgs) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            msgs = self.shared.cond.wait_timeout(msgs, deadline - now).unwrap().0;
        }
    }

    /// Waits until at least `n` messages satisfy `f`; panics with `what` on timeout.
    pub fn wait_count<F: Fn(&Msg) -> bool>(&self, what: &str, n: usize, timeout: Duration, f: F) {
        if !self.wait_for(timeout, |m| m.iter().filter(|x| f(x)).count() >= n) {
            panic!(
                "timed out after {timeout:?} waiting for {n} x {what}; got:\n{}",
                self.dump()
            );
        }
    }

    pub fn count<F: Fn(&Msg) -> bool>(&self, f: F) -> usize {
        self.messages().iter().filter(|m| f(m)).count()
    }

    /// The last STATUS= value received.
    pub fn last_status(&self) -> Option<String> {
        self.messages()
            .iter()
            .rev()
            .find_map(|m| m.get("STATUS").map(str::to_string))
    }

    pub fn dump(&self) -> String {
        let mut s = String::new();
        for m in self.messages() {
            s.push_str(&format!("  [pid {}] {}\n", m.pid, m.text.replace('\n', " | ")));
        }
        s
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The significant notify events (READY/RELOADING/STOPPING; status-only and WATCHDOG messages are
/// skipped) as a compact string like "R L R L R S", for sequence assertions.
pub fn notify_sequence(msgs: &[Msg]) -> String {
    let mut v = Vec::new();
    for m in msgs {
        if m.is_reloading() {
            v.push("L");
        }
        if m.is_ready() {
            v.push("R");
        }
        if m.is_stopping() {
            v.push("S");
        }
    }
    v.join(" ")
}
