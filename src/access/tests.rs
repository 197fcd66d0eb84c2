use std::net::{SocketAddr, TcpListener, TcpStream};

use base64::Engine;

use super::*;
use crate::secret::Secret;

fn me() -> u32 {
    rustix::process::getuid().as_raw()
}

fn settings(mode: AccessMode, uids: &[u32], token: Option<&str>) -> AccessSettings {
    AccessSettings {
        mode,
        allow_uids: uids.to_vec(),
        proxy_token: token.map(|t| Secret::new(t.to_owned())),
        proxy_token_file: None,
        config_file: Some("/etc/authproxy/config.yaml".into()),
    }
}

/// A connected loopback pair: (client, the accepted end).
fn pair(listen: &str) -> (TcpStream, TcpStream) {
    let l = TcpListener::bind(listen).unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    (client, server)
}

fn addrs(server: &TcpStream) -> (SocketAddr, SocketAddr) {
    (server.peer_addr().unwrap(), server.local_addr().unwrap())
}

const TABLE_V4: &str = "  \
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0C38 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0100007F:D431 0100007F:0C38 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0 20 4 30 10 -1
   2: 0100007F:0C38 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 20 4 30 10 -1
   3: 0100007F:D432 0100007F:0C38 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0
";

#[cfg(target_endian = "little")]
#[test]
fn proc_table_v4_gives_the_client_sockets_uid() {
    let client: SocketAddr = "127.0.0.1:54321".parse().unwrap();
    let us: SocketAddr = "127.0.0.1:3128".parse().unwrap();
    assert_eq!(proc_net::find(TABLE_V4, client, us), Some(1000));
    // Our own end of the connection is not the client's socket.
    assert_eq!(proc_net::find(TABLE_V4, us, client), Some(0));
    // TIME_WAIT remains say uid 0 but have no owner.
    let gone: SocketAddr = "127.0.0.1:54322".parse().unwrap();
    assert_eq!(proc_net::find(TABLE_V4, gone, us), None);
    let other: SocketAddr = "127.0.0.1:54323".parse().unwrap();
    assert_eq!(proc_net::find(TABLE_V4, other, us), None);
    assert_eq!(proc_net::find("", client, us), None);
    assert_eq!(proc_net::find("header\n garbage line\n", client, us), None);
}

#[cfg(target_endian = "little")]
#[test]
fn proc_table_v6_gives_the_client_sockets_uid() {
    let table = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:D431 00000000000000000000000001000000:0C38 01 00000000:00000000 00:00000000 00000000 65534        0 2001 1 0 20 4 30 10 -1
   1: 0000000000000000FFFF00000100007F:D433 0000000000000000FFFF00000100007F:0C38 01 00000000:00000000 00:00000000 00000000  1001        0 2002 1 0 20 4 30 10 -1
";
    let client: SocketAddr = "[::1]:54321".parse().unwrap();
    let us: SocketAddr = "[::1]:3128".parse().unwrap();
    assert_eq!(proc_net::find(table, client, us), Some(65534));
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:54323".parse().unwrap();
    let us_mapped: SocketAddr = "[::ffff:127.0.0.1]:3128".parse().unwrap();
    assert_eq!(proc_net::find(table, mapped, us_mapped), Some(1001));
}

#[test]
fn proc_net_finds_a_real_loopback_socket_of_this_process() {
    let (_client, server) = pair("127.0.0.1:0");
    let (peer, local) = addrs(&server);
    assert_eq!(proc_net::owner(peer, local), Some(me()));
}

#[test]
fn sock_diag_finds_a_real_loopback_socket_of_this_process() {
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let Ok(l) = TcpListener::bind(listen) else {
            continue; // no IPv6 on this machine
        };
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let (peer, local) = addrs(&server);
        assert_eq!(
            sock_diag::owner(peer, local).unwrap(),
            Some(me()),
            "{listen}"
        );
        // Several lookups on one thread reuse its netlink socket.
        assert_eq!(
            sock_diag::owner(peer, local).unwrap(),
            Some(me()),
            "{listen}"
        );
        assert_eq!(socket_owner(peer, local), Some(me()));
        drop(client);
    }
}

#[test]
fn sock_diag_knows_no_socket_that_is_not_there() {
    let (client, server) = pair("127.0.0.1:0");
    let (peer, local) = addrs(&server);
    let nobody = SocketAddr::new(peer.ip(), crate::access::tests::free_port());
    assert_eq!(sock_diag::owner(nobody, local).unwrap(), None);
    drop(client);
}

#[test]
fn a_dual_stack_listener_sees_the_ipv4_client() {
    let Ok(l) = TcpListener::bind("[::]:0") else {
        return;
    };
    let port = l.local_addr().unwrap().port();
    let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = l.accept().unwrap();
    let (peer, local) = addrs(&server);
    assert!(peer.ip().to_string().starts_with("::ffff:"), "{peer}");
    assert_eq!(socket_owner(peer, local), Some(me()));
}

pub(super) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_daemons_own_user_is_admitted_and_others_are_not() {
    let (_client, server) = pair("127.0.0.1:0");
    let (peer, local) = addrs(&server);
    let mine = admit_connection(&settings(AccessMode::Uid, &[me()], None), peer, local);
    assert_eq!(mine.unwrap(), Some(me()));
    let other = me().wrapping_add(1);
    let f = admit_connection(&settings(AccessMode::Uid, &[other], None), peer, local).unwrap_err();
    assert_eq!((f.status, f.code), (403, "access_denied"));
    assert!(
        f.message.contains(&format!("uid {}", me())),
        "{}",
        f.message
    );
    assert!(f.message.contains("allow_uids"), "{}", f.message);
    assert!(
        f.message.contains("/etc/authproxy/config.yaml"),
        "{}",
        f.message
    );
    // Token mode does not look; open mode does not either, on loopback.
    let token = settings(AccessMode::Token, &[other], Some("t"));
    assert_eq!(admit_connection(&token, peer, local).unwrap(), None);
    let open = settings(AccessMode::Open, &[other], None);
    assert_eq!(admit_connection(&open, peer, local).unwrap(), None);
}

#[test]
fn a_socket_with_no_owner_here_is_refused() {
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let f = admit_connection(&settings(AccessMode::Uid, &[me()], None), peer, local).unwrap_err();
    assert_eq!((f.status, f.code), (403, "access_denied"));
    assert!(f.message.contains("mode: token"), "{}", f.message);
    // Open mode on a non-loopback local address still checks.
    let wide: SocketAddr = "192.0.2.1:3128".parse().unwrap();
    assert!(admit_connection(&settings(AccessMode::Open, &[me()], None), peer, wide).is_err());
}

fn basic(user: &str, password: &str) -> Vec<u8> {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b}").into_bytes()
}

#[test]
fn the_proxy_token_is_taken_from_basic_or_bearer() {
    let s = settings(AccessMode::Uid, &[me()], Some("tok-3n"));
    let ok = |v: &[u8]| check_token(&s, [v]).is_ok();
    assert!(ok(&basic("anyone", "tok-3n")));
    assert!(ok(&basic("", "tok-3n")));
    assert!(ok(b"Bearer tok-3n"));
    assert!(ok(b"bearer   tok-3n "));
    assert!(!ok(&basic("tok-3n", "x:tok-3n")));
    assert!(!ok(&basic("tok-3n", "")));
    assert!(!ok(b"Bearer tok-3"));
    assert!(!ok(b"Bearer tok-3nn"));
    assert!(!ok(b"Digest tok-3n"));
    assert!(!ok(b"Basic !!!"));
    assert!(!ok(b"tok-3n"));
    // One good value among several is enough.
    assert!(check_token(&s, [&b"Bearer no"[..], &b"Bearer tok-3n"[..]]).is_ok());
    let none = check_token(&s, std::iter::empty()).unwrap_err();
    assert_eq!((none.status, none.code), (407, "proxy_auth_required"));
    assert!(none.message.contains("no proxy token"), "{}", none.message);
    let wrong = check_token(&s, [&b"Bearer nope"[..]]).unwrap_err();
    assert!(wrong.message.contains("not accepted"), "{}", wrong.message);
    assert!(!wrong.message.contains("tok-3n") && !wrong.message.contains("nope"));
    assert_eq!(
        wrong.status_headers(),
        &[("Proxy-Authenticate", "Basic realm=\"authproxy\"")]
    );
    // No token configured: nothing to check.
    let open = settings(AccessMode::Uid, &[me()], None);
    assert!(check_token(&open, std::iter::empty()).is_ok());
}

#[test]
fn a_non_loopback_listener_needs_a_token() {
    let wide: Vec<SocketAddr> = vec![
        "127.0.0.1:3128".parse().unwrap(),
        "0.0.0.0:3128".parse().unwrap(),
    ];
    let e = check_listen(&settings(AccessMode::Uid, &[me()], None), &wide, "--listen").unwrap_err();
    assert!(e.contains("--listen 0.0.0.0:3128"), "{e}");
    assert!(e.contains("access.proxy_token_file"), "{e}");
    let w = check_listen(
        &settings(AccessMode::Uid, &[me()], Some("t")),
        &wide,
        "--listen",
    )
    .unwrap();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[1].contains("access.mode: token"), "{w:?}");
    let w = check_listen(
        &settings(AccessMode::Token, &[], Some("t")),
        &wide,
        "--listen",
    )
    .unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    let e = check_listen(
        &settings(AccessMode::Open, &[], Some("t")),
        &wide,
        "--listen",
    )
    .unwrap_err();
    assert!(e.contains("open"), "{e}");
    // Loopback in every form is fine; open mode is warned about.
    let local: Vec<SocketAddr> = [
        "127.0.0.1:1",
        "[::1]:1",
        "[::ffff:127.0.0.1]:1",
        "127.1.2.3:1",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    assert!(
        check_listen(&settings(AccessMode::Uid, &[me()], None), &local, "listen")
            .unwrap()
            .is_empty()
    );
    let w = check_listen(&settings(AccessMode::Open, &[], None), &local, "listen").unwrap();
    assert!(w[0].contains("uid check is OFF"), "{w:?}");
    let v6: Vec<SocketAddr> = vec!["[::]:3128".parse().unwrap()];
    assert!(check_listen(&settings(AccessMode::Uid, &[me()], None), &v6, "listen").is_err());
}
