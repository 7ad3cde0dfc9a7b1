//! Unit tests of `notify` (in a file of their own to keep the module short).

use super::*;

#[test]
fn messages_are_one_line_per_state() {
    let usec = monotonic_usec(5_000_123_456);
    assert_eq!(
        message(&[
            NotifyState::Reloading,
            NotifyState::Custom(&usec),
            NotifyState::Status("reloading gen 2 (foreground)")
        ]),
        "RELOADING=1\nMONOTONIC_USEC=5000123\nSTATUS=reloading gen 2 (foreground)\n"
    );
    assert_eq!(
        message(&[NotifyState::Ready, NotifyState::MainPid(7)]),
        "READY=1\nMAINPID=7\n"
    );
}

#[test]
fn notify_addresses() {
    assert_eq!(
        notify_address(OsStr::new("@abc")).unwrap().as_abstract(),
        Some(&b"abc"[..])
    );
    assert_eq!(
        notify_address(OsStr::new("/run/systemd/notify")).unwrap().path(),
        Some(std::path::Path::new("/run/systemd/notify"))
    );
}

#[test]
fn an_empty_notify_socket_is_unset() {
    assert_eq!(notify_socket_value(Some("".into())), None);
    assert_eq!(notify_socket_value(None), None);
    assert_eq!(notify_socket_value(Some("@x".into())), Some("@x".into()));
}

#[test]
fn waiting_messages_keep_their_order_and_states_are_never_replaced() {
    let mut q = VecDeque::new();
    assert!(enqueue(&mut q, "RELOADING=1\n".into(), Kind::State, 1).is_none());
    enqueue(&mut q, "STATUS=a\n".into(), Kind::Status, 2);
    enqueue(&mut q, "WATCHDOG=1\n".into(), Kind::Watchdog, 3);
    enqueue(&mut q, "READY=1\n".into(), Kind::State, 4);
    enqueue(&mut q, "STATUS=b\n".into(), Kind::Status, 5);
    enqueue(&mut q, "WATCHDOG=1\n".into(), Kind::Watchdog, 6);
    let texts: Vec<&str> = q.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(texts, ["RELOADING=1\n", "READY=1\n", "STATUS=b\n", "WATCHDOG=1\n"]);
    // Bounded: beyond MAX_PENDING state messages, the oldest is given up (and returned to log).
    for i in 0..MAX_PENDING - 2 {
        assert!(enqueue(&mut q, format!("READY=1\nX={}\n", i), Kind::State, 10).is_none());
    }
    let lost = enqueue(&mut q, "STOPPING=1\n".into(), Kind::State, 11).unwrap();
    assert_eq!(lost.text, "RELOADING=1\n");
    assert_eq!(q.back().unwrap().text, "STOPPING=1\n");
}

#[test]
fn a_full_notify_socket_never_blocks_and_what_waits_is_sent_later() {
    let dir = std::env::temp_dir().join(format!("hsw-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("full.sock");
    let _ = std::fs::remove_file(&path);
    let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    receiver.set_nonblocking(true).unwrap();
    let raw = socket::socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .unwrap();
    // SAFETY: just returned by socket(2).
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut systemd = Systemd {
        target: Some((fd, UnixAddr::new(&path).unwrap())),
        last_status: String::new(),
        pending: VecDeque::new(),
        next_retry_ns: None,
        warned_full: false,
    };
    // Fill the receiver's queue through the wrapper's own socket: every call returns.
    let mut sent = 0;
    while systemd.pending.is_empty() {
        systemd.status(&format!("filler {}", sent));
        sent += 1;
        assert!(sent < 100_000, "the socket never filled");
    }
    systemd.ready("serving");
    systemd.watchdog();
    assert!(systemd.next_retry_ns().is_some());
    // Read everything; READY=1 comes after the fillers, once the loop flushes.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        while let Ok(n) = receiver.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        systemd.flush(crate::clock::now_ns());
        if systemd.next_retry_ns().is_none() {
            break;
        }
    }
    while let Ok(n) = receiver.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(systemd.pending.is_empty());
    let ready = got
        .iter()
        .position(|m| m.starts_with("READY=1\n"))
        .expect("READY=1 was lost");
    assert_eq!(got[ready + 1], "WATCHDOG=1\n");
    assert_eq!(ready + 2, got.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reads_keys_of_a_datagram() {
    let m = "READY=1\nMAINPID=5967\nSTATUS=Ready.";
    assert!(says(m, "READY"));
    assert!(!says(m, "RELOADING"));
    assert!(!says("NOTREADY=1", "READY"));
    assert_eq!(value(m, "MAINPID"), Some("5967"));
    assert_eq!(value(m, "STATUS"), Some("Ready."));
}

#[test]
fn randomized_datagrams_are_read_line_by_line() {
    use crate::fuzz::{Rng, CASES};
    let mut rng = Rng::new(0x40f1);
    let valid = "READY=1\nMAINPID=5967\nSTATUS=Ready.\nRELOADING=1\nMONOTONIC_USEC=123\nSTOPPING=1\n";
    for case in 0..CASES {
        let msg = if case % 2 == 0 {
            rng.mutate_text(valid, b"=\n01RAEDYSTOPING")
        } else {
            rng.text(40)
        };
        for key in [
            "READY",
            "RELOADING",
            "STOPPING",
            "STATUS",
            "MAINPID",
            "MONOTONIC_USEC",
            "",
        ] {
            // The model: KEY=1 on a line of its own; the value after the first '=' of the
            // first line whose key is KEY.
            let model_says = msg.lines().any(|l| l == format!("{}=1", key));
            assert_eq!(says(&msg, key), model_says, "case {}: {:?} {:?}", case, key, msg);
            let model_value = msg
                .lines()
                .find(|l| l.starts_with(&format!("{}=", key)))
                .map(|l| &l[key.len() + 1..]);
            assert_eq!(value(&msg, key), model_value, "case {}: {:?} {:?}", case, key, msg);
        }
    }
}
