use super::*;
use std::net::TcpListener;

fn binds_of(text: &str) -> Vec<String> {
    let mut p = Parser::default();
    p.file(text, "h.cfg");
    p.binds()
        .into_iter()
        .map(|b| format!("{} {} {}", b.proxy, b.place, b.addr))
        .collect()
}

#[test]
fn addresses_are_read_as_haproxy_reads_them() {
    let ok = |w: &str| tcp_address(w).map(|a| a.to_string());
    assert_eq!(ok("127.0.0.1:80").as_deref(), Some("127.0.0.1:80"));
    assert_eq!(ok(":8080").as_deref(), Some("0.0.0.0:8080"));
    assert_eq!(ok("*:8080").as_deref(), Some("0.0.0.0:8080"));
    assert_eq!(ok(":::80").as_deref(), Some("[::]:80"));
    assert_eq!(ok("::1:80").as_deref(), Some("[::1]:80"));
    assert_eq!(ok("[::1]:80").as_deref(), Some("[::1]:80"));
    assert_eq!(ok("ipv6@:80").as_deref(), Some("[::]:80"));
    assert_eq!(ok("ipv4@192.0.2.1:443").as_deref(), Some("192.0.2.1:443"));
    assert_eq!(ok("tcp6@::1:443").as_deref(), Some("[::1]:443"));
    assert_eq!(ok("tcp@10.0.0.1:1").as_deref(), Some("10.0.0.1:1"));
    // Unsure or not TCP: left to haproxy.
    for w in [
        "localhost:80",
        "127.0.0.1:80-90",
        "127.0.0.1:+1",
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        "ipv4@::1:80",
        "unix@/run/x.sock",
        "/run/x.sock",
        "abns@x",
        "fd@3",
        "sockpair@4",
        "quic4@:443",
        "udp@:53",
        "mptcp@:80",
        "[::1:80",
    ] {
        assert_eq!(tcp_address(w), None, "{}", w);
    }
}

#[test]
fn the_binds_of_frontends_and_listens_are_taken_with_their_place() {
    let cfg = "\
global
    stats socket /run/haproxy.sock mode 600 expose-fd listeners
defaults
    mode http
frontend web # a comment
    bind 127.0.0.1:8080,192.0.2.1:8081 name x
    bind :::8443 ssl crt /x.pem
backend be
    bind 192.0.2.9:1
listen admin
    bind 192.0.2.2:9000 # bind 192.0.2.3:9
peers p
    bind 192.0.2.4:10000
";
    assert_eq!(
        binds_of(cfg),
        vec![
            "frontend web h.cfg:6 127.0.0.1:8080",
            "frontend web h.cfg:6 192.0.2.1:8081",
            "frontend web h.cfg:7 [::]:8443",
            "listen admin h.cfg:11 192.0.2.2:9000",
        ]
    );
}

#[test]
fn what_the_wrapper_cannot_be_sure_of_is_left_to_haproxy() {
    // A disabled proxy binds nothing; nor, possibly, any proxy after a disabled defaults.
    assert!(binds_of("frontend a\n bind 192.0.2.1:80\n disabled\n").is_empty());
    assert!(binds_of("defaults\n disabled\nfrontend a\n bind 192.0.2.1:80\n").is_empty());
    // A disabled in a conditional block counts (the condition is not evaluated).
    assert!(binds_of("frontend a\n bind 192.0.2.1:80\n.if defined(X)\n disabled\n.endif\n").is_empty());
    // Lines in conditional blocks are skipped, and so is a section opened in one.
    assert_eq!(
        binds_of(
            "frontend a\n.if defined(X)\n bind 192.0.2.1:80\n.else\n bind 192.0.2.1:81\n.endif\n bind 192.0.2.1:82\n"
        ),
        vec!["frontend a h.cfg:7 192.0.2.1:82"]
    );
    assert!(binds_of(".if defined(X)\nfrontend a\n.endif\n bind 192.0.2.1:80\n").is_empty());
    // A section opened in a conditional block may be a defaults: its disabled counts as one.
    assert!(binds_of(".if defined(X)\ndefaults\n.endif\n disabled\nfrontend a\n bind 192.0.2.1:80\n").is_empty());
    // Quotes, escapes and environment variables; options that change what may be bound.
    for line in [
        "bind \"192.0.2.1:80\"",
        "bind '192.0.2.1:80'",
        "bind 192.0.2.1\\:80",
        "bind ${ADDR}:80",
        "bind 192.0.2.1:80 transparent",
        "bind 192.0.2.1:80 interface eth0",
        "bind 192.0.2.1:80 namespace blue",
        "bind :::80 v4v6",
        "bind :::80 v6only",
    ] {
        assert!(binds_of(&format!("frontend a\n {}\n", line)).is_empty(), "{}", line);
    }
    // A file begins outside any section: a line before its first header is not the previous
    // file's.
    let mut p = Parser::default();
    p.file("frontend a\n bind 192.0.2.1:80\n", "one.cfg");
    p.file(" bind 192.0.2.1:81\nlisten b\n bind 192.0.2.1:82\n", "two.cfg");
    let places: Vec<String> = p.binds().into_iter().map(|b| b.place).collect();
    assert_eq!(places, vec!["one.cfg:2", "two.cfg:3"]);
}

#[test]
fn the_files_are_haproxys_in_its_order() {
    let dir = std::env::temp_dir().join(format!("binds-files-{}", std::process::id()));
    let conf = dir.join("conf.d");
    std::fs::create_dir_all(&conf).unwrap();
    for name in ["20-b.cfg", "10-a.cfg", ".hidden.cfg", "readme.txt", "x.cfg.bak"] {
        std::fs::write(conf.join(name), "").unwrap();
    }
    std::fs::create_dir_all(conf.join("sub.cfg")).unwrap();
    let main = dir.join("haproxy.cfg");
    let args: Vec<OsString> = vec![
        "-Ws".into(),
        "-p".into(),
        "/run/haproxy.pid".into(),
        "-f".into(),
        main.clone().into(),
        "-f".into(),
        conf.clone().into(),
        "--".into(),
        "/etc/extra.cfg".into(),
    ];
    assert_eq!(
        config_files(&args),
        Some(vec![
            main,
            conf.join("10-a.cfg"),
            conf.join("20-b.cfg"),
            PathBuf::from("/etc/extra.cfg")
        ])
    );
    // -C makes relative paths haproxy's own.
    let with_c: Vec<OsString> = vec!["-C".into(), "/etc/haproxy".into(), "-f".into(), "haproxy.cfg".into()];
    assert_eq!(config_files(&with_c), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn only_a_refusal_haproxys_pause_cannot_change_fails_the_reload() {
    let addr: SocketAddr = "192.0.2.1:80".parse().unwrap();
    let other: SocketAddr = "0.0.0.0:80".parse().unwrap();
    let not_here = judge(addr, Errno::EADDRNOTAVAIL, &[], false).unwrap();
    assert_eq!(
        not_here,
        "cannot bind socket (Cannot assign requested address) [192.0.2.1:80]"
    );
    assert!(judge(addr, Errno::EACCES, &[], false)
        .unwrap()
        .contains("Permission denied"));
    assert_eq!(
        judge(addr, Errno::EADDRINUSE, &[(other, false)], false).unwrap(),
        "cannot bind socket (Address already in use) [192.0.2.1:80]: in use by another program (its listener on 0.0.0.0:80)"
    );
    // A socket of ours in the way (noreuseport): haproxy's pause may free it.
    assert_eq!(
        judge(addr, Errno::EADDRINUSE, &[(other, false), (addr, true)], false),
        None
    );
    // In use, by nothing the wrapper sees listening: unsure.
    assert_eq!(judge(addr, Errno::EADDRINUSE, &[], false), None);
    assert_eq!(judge(addr, Errno::ENOBUFS, &[], false), None);
    // An IPv6 address of the host still tentative: haproxy's retry may find it usable.
    let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
    assert_eq!(judge(v6, Errno::EADDRNOTAVAIL, &[], true), None);
    let table = "00000000000000000000000000000001 01 80 10 80       lo\n\
                 20010db8000000000000000000000001 02 40 00 c0     eth0\n";
    assert!(listed_in_if_inet6(table, "2001:db8::1".parse().unwrap()));
    assert!(listed_in_if_inet6(table, "::1".parse().unwrap()));
    assert!(!listed_in_if_inet6(table, "2001:db8::2".parse().unwrap()));
}

#[test]
fn the_kernel_is_asked_as_haproxy_asks_it() {
    // An address this host does not have (TEST-NET-1).
    assert_eq!(try_bind("192.0.2.1:8082".parse().unwrap()), Err(Errno::EADDRNOTAVAIL));
    // A port held without SO_REUSEPORT (std's listener sets only SO_REUSEADDR).
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    assert_eq!(try_bind(addr), Err(Errno::EADDRINUSE));
    drop(held);
    // Free again: binds (and listens nowhere).
    assert_eq!(try_bind(addr), Ok(()));
}

#[test]
fn check_names_the_bind_that_cannot_succeed() {
    let dir = std::env::temp_dir().join(format!("binds-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("haproxy.cfg");
    let args: Vec<OsString> = vec!["-Ws".into(), "-f".into(), cfg.clone().into()];
    let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    std::fs::write(&cfg, format!("frontend ok\n bind {}\n", free)).unwrap();
    assert_eq!(check(&args), None);
    std::fs::write(
        &cfg,
        format!(
            "frontend ok\n bind {}\nfrontend unbindable\n bind 192.0.2.1:8082\n",
            free
        ),
    )
    .unwrap();
    assert_eq!(
        check(&args).unwrap(),
        format!(
            "frontend unbindable ({}:4): cannot bind socket (Cannot assign requested address) [192.0.2.1:8082]",
            cfg.display()
        )
    );
    // A port this process holds (the wrapper's own copy, in the wrapper): haproxy's to decide.
    let ours = TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(&cfg, format!("frontend a\n bind {}\n", ours.local_addr().unwrap())).unwrap();
    assert_eq!(check(&args), None);
    // An unreadable configuration: haproxy reports it.
    std::fs::remove_file(&cfg).unwrap();
    assert_eq!(check(&args), None);
    std::fs::remove_dir_all(&dir).unwrap();
}
