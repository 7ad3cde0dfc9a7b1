fn main() {
    println!("haproxy-systemd-wrapper (skeleton)");
}
