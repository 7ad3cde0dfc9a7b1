//! HTTP for the tests: one GET, a kept-alive connection, a backend that holds connections,
//! and a load generator that counts answers and failures.

use super::*;

pub struct Response {
    pub status_line: String,
    /// The header lines (status line excluded), as received.
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            if k.trim().eq_ignore_ascii_case(name) {
                Some(v.trim())
            } else {
                None
            }
        })
    }
}

/// `GET path` on 127.0.0.1:port with `Connection: close`, 2 s timeouts.
pub fn http_get(port: u16, path: &str) -> io::Result<Response> {
    http_get_within(port, path, Duration::from_secs(2))
}

/// `http_get` with `timeout` for the connect, each write and each read.
pub fn http_get_within(port: u16, path: &str, timeout: Duration) -> io::Result<Response> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = match text.find("\r\n\r\n") {
        Some(i) => (text[..i].to_string(), text[i + 4..].to_string()),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no HTTP header in {text:?}"),
            ))
        }
    };
    let status_line = head.lines().next().unwrap_or("").to_string();
    let head = head.lines().skip(1).collect::<Vec<_>>().join("\n");
    Ok(Response {
        status_line,
        head,
        body,
    })
}

/// One client connection kept open across requests (HTTP/1.1 keep-alive), reading responses by
/// their Content-Length; 10 s read/write timeouts.
pub struct HttpConn {
    reader: io::BufReader<TcpStream>,
}

impl HttpConn {
    pub fn connect(port: u16) -> io::Result<HttpConn> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(HttpConn {
            reader: io::BufReader::new(s),
        })
    }

    /// Sends `GET path` (keep-alive) without waiting for the answer.
    pub fn send(&mut self, path: &str) -> io::Result<()> {
        write!(self.reader.get_mut(), "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    }

    /// Reads one whole response (head, then Content-Length bytes of body).
    pub fn read_response(&mut self) -> io::Result<Response> {
        use std::io::BufRead;
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            if self.reader.read_line(&mut l)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {lines:?}"),
                ));
            }
            let l = l.trim_end_matches(&['\r', '\n'][..]).to_string();
            if l.is_empty() {
                break;
            }
            lines.push(l);
        }
        let status_line = lines.first().cloned().unwrap_or_default();
        let head = lines[1.min(lines.len())..].join("\n");
        let mut r = Response {
            status_line,
            head,
            body: String::new(),
        };
        let len: usize = r.header("content-length").and_then(|v| v.parse().ok()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no Content-Length in {:?} / {:?}", r.status_line, r.head),
            )
        })?;
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body)?;
        r.body = String::from_utf8_lossy(&body).into_owned();
        Ok(r)
    }

    /// `send` then `read_response`.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.send(path)?;
        self.read_response()
    }

    /// Reads until the peer closes the connection; Ok(n) with the bytes that came before (an
    /// orderly close), Err on a reset or timeout.
    pub fn read_to_close(&mut self) -> io::Result<usize> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest)?;
        Ok(rest.len())
    }
}

/// A backend HTTP server run by the test on 127.0.0.1: answers `GET /slow...` only once
/// `release` is called (each held request is announced first, see `wait_held`), every other
/// path at once; the body is "backend PATH". Keep-alive; a thread per connection.
pub struct Backend {
    pub port: u16,
    held: Mutex<std::sync::mpsc::Receiver<String>>,
    gate: Arc<(Mutex<bool>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start() -> Backend {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind backend");
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (gate.clone(), stop.clone());
        thread::spawn(move || {
            for conn in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let conn = match conn {
                    Ok(c) => c,
                    Err(_) => continue,
                };
                let (tx, g) = (tx.clone(), g.clone());
                thread::spawn(move || Backend::serve(conn, tx, g));
            }
        });
        Backend {
            port,
            held: Mutex::new(rx),
            gate,
            stop,
        }
    }

    fn serve(conn: TcpStream, held: std::sync::mpsc::Sender<String>, gate: Arc<(Mutex<bool>, Condvar)>) {
        use std::io::BufRead;
        let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
        let mut w = match conn.try_clone() {
            Ok(w) => w,
            Err(_) => return,
        };
        let mut r = io::BufReader::new(conn);
        loop {
            let mut path = None;
            loop {
                let mut l = String::new();
                match r.read_line(&mut l) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let l = l.trim_end();
                if l.is_empty() {
                    break;
                }
                if path.is_none() {
                    path = l.split_whitespace().nth(1).map(str::to_string);
                }
            }
            let path = path.unwrap_or_default();
            if path.starts_with("/slow") {
                let _ = held.send(path.clone());
                let (m, c) = &*gate;
                let mut open = m.lock().unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                while !*open && Instant::now() < deadline {
                    open = c.wait_timeout(open, Duration::from_secs(1)).unwrap().0;
                }
            }
            let body = format!("backend {path}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if w.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    }

    /// Waits until a `/slow...` request reached the backend (and is held); returns its path.
    pub fn wait_held(&self, timeout: Duration) -> String {
        self.held
            .lock()
            .unwrap()
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no request reached the backend within {timeout:?}: {e}"))
    }

    /// Lets every held request (and later ones) be answered.
    pub fn release(&self) {
        let (m, c) = &*self.gate;
        *m.lock().unwrap() = true;
        c.notify_all();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.release();
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}

/// Waits until GET / answers 200 (polling with a deadline: nothing else tells when a port serves).
pub fn wait_http_200(port: u16, timeout: Duration) -> Response {
    let mut last = String::new();
    let r = poll_until(timeout, || match http_get(port, "/") {
        Ok(r) if r.status() == 200 => Some(r),
        Ok(r) => {
            last = r.status_line;
            None
        }
        Err(e) => {
            last = e.to_string();
            None
        }
    });
    r.unwrap_or_else(|| panic!("no HTTP 200 on port {port} within {timeout:?}; last: {last}"))
}

/// A thread that opens a new connection per request until stopped, counting successes and
/// failures (connect/read error or non-200).
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    fail: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<BTreeMap<String, u64>>>,
    threads: Vec<JoinHandle<()>>,
}

pub struct LoadResult {
    pub ok: u64,
    pub fail: u64,
    pub errors: Vec<String>,
    /// How many 200 answers came with each body (trimmed).
    pub bodies: BTreeMap<String, u64>,
}

impl Load {
    pub fn start(port: u16, threads: usize) -> Load {
        Load::start_within(port, threads, Duration::from_secs(2))
    }

    /// `start`, each request with `timeout` (`http_get_within`).
    pub fn start_within(port: u16, threads: usize, timeout: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let fail = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(BTreeMap::new()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, fail, errors, bodies) =
                    (stop.clone(), ok.clone(), fail.clone(), errors.clone(), bodies.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match http_get_within(port, "/", timeout) {
                            Ok(r) if r.status() == 200 => {
                                *bodies.lock().unwrap().entry(r.body.trim().to_string()).or_insert(0) += 1;
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            other => {
                                fail.fetch_add(1, Ordering::SeqCst);
                                let e = match other {
                                    Ok(r) => format!("status {}", r.status_line),
                                    Err(e) => e.to_string(),
                                };
                                let mut v = errors.lock().unwrap();
                                if v.len() < 20 {
                                    v.push(e);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            fail,
            errors,
            bodies,
            threads,
        }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// How many 200 answers had this body so far.
    pub fn seen(&self, body: &str) -> u64 {
        self.bodies.lock().unwrap().get(body).copied().unwrap_or(0)
    }

    pub fn stop(mut self) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        LoadResult {
            ok: self.ok.load(Ordering::SeqCst),
            fail: self.fail.load(Ordering::SeqCst),
            errors: self.errors.lock().unwrap().clone(),
            bodies: self.bodies.lock().unwrap().clone(),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
