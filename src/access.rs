/*!
Who may use the daemon. It spends its users' credentials, so by default it serves only
connections whose client socket belongs to its own uid; `access: allow_uids` widens that
to other local users, and `access: proxy_token_file` adds (or, with `mode: token`,
substitutes) a token every request must carry in `Proxy-Authorization`.

The uid check runs once per connection, before a byte of it is parsed
([`admit_connection`], called by the accept loop); the token check runs per request and
per CONNECT ([`check_token`]). Nothing is cached across connections: ports are reused.

# Finding a socket's owner

The client's end of a loopback connection is a socket in this machine's table, keyed by
its 4-tuple: local = the peer address we see, remote = our local address. On Linux one
exact `NETLINK_SOCK_DIAG` query for that 4-tuple answers with the owner's uid in a few
microseconds ([`sock_diag`]); where that cannot answer (no netlink, the `inet_diag`
module missing), `/proc/net/tcp{,6}` is scanned instead ([`proc_net`]), which costs
milliseconds on a busy machine. A socket that neither knows (a client on another host,
in another network namespace) has no owner here, and is refused unless the token alone
admits (`mode: token`).
*/

use std::net::{IpAddr, SocketAddr};

use subtle::ConstantTimeEq;

use crate::config::snapshot::{AccessMode, AccessSettings};
use crate::failure::Failure;

/// Whether this connection may be served, decided from its client socket's owner.
/// `peer` and `local` are the accepted socket's addresses. Admitted, it returns the
/// owner's uid when it was looked up.
pub fn admit_connection(
    settings: &AccessSettings,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<Option<u32>, Failure> {
    match settings.mode {
        // The token, checked per request, is the only way in.
        AccessMode::Token => return Ok(None),
        // Benchmarks: only on loopback listeners (a reload cannot open it wider).
        AccessMode::Open if is_loopback(local.ip()) => return Ok(None),
        AccessMode::Open | AccessMode::Uid => {}
    }
    match socket_owner(peer, local) {
        Some(uid) if settings.allow_uids.contains(&uid) => Ok(Some(uid)),
        Some(uid) => Err(denied_uid(settings, uid)),
        None => Err(unknown_owner(peer)),
    }
}

fn where_configured(settings: &AccessSettings) -> String {
    match &settings.config_file {
        Some(p) => format!("in {}", p.display()),
        None => "in the YAML configuration (authproxy serve --config FILE)".to_owned(),
    }
}

fn denied_uid(settings: &AccessSettings, uid: u32) -> Failure {
    Failure::new(
        403,
        "access_denied",
        format!(
            "authproxy spends its users' credentials, so it serves only the local users it \
             is configured for, and this connection belongs to uid {uid}, which is not one \
             of them. To allow it, add {uid} (or the user's name) to `access: allow_uids` {}.",
            where_configured(settings)
        ),
    )
}

fn unknown_owner(peer: SocketAddr) -> Failure {
    Failure::new(
        403,
        "access_denied",
        format!(
            "authproxy could not find which local user owns this connection (from {peer}), \
             and it serves only the users in `access: allow_uids`. A client on another \
             machine or in another network namespace needs a proxy token: \
             `access: {{ proxy_token_file: FILE, mode: token }}`."
        ),
    )
}

/// Whether a request (or CONNECT) carries the proxy token, when one is configured:
/// `Proxy-Authorization: Basic` with the token as the password (any user name), or
/// `Bearer <token>`. Compared in constant time.
pub fn check_token<'a>(
    settings: &AccessSettings,
    proxy_authorization: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), Failure> {
    let Some(token) = &settings.proxy_token else {
        return Ok(());
    };
    let token = token.expose().as_bytes();
    let mut sent = false;
    for value in proxy_authorization {
        sent = true;
        if presented_token(value).is_some_and(|t| bool::from(t.as_slice().ct_eq(token))) {
            return Ok(());
        }
    }
    Err(token_required(sent))
}

/// The token a `Proxy-Authorization` value presents: a Basic password or a Bearer token.
fn presented_token(value: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

fn token_required(sent: bool) -> Failure {
    let what = if sent {
        "the proxy token this request carried was not accepted"
    } else {
        "this request carried no proxy token"
    };
    Failure::new(
        407,
        "proxy_auth_required",
        format!(
            "authproxy requires its proxy token (access.proxy_token_file), and {what}. \
             Send it as the password of the proxy URL (any user name), e.g. \
             http_proxy=http://me:TOKEN@127.0.0.1:3128, or as `Proxy-Authorization: Bearer TOKEN`."
        ),
    )
}

/// Checks the addresses the daemon is about to listen on against the access settings.
/// `setting` names where they come from (`--listen`, or `listen` in a file), for the
/// messages. Returns the warnings to log, or the reason to refuse to start.
pub fn check_listen(
    settings: &AccessSettings,
    addrs: &[SocketAddr],
    setting: &str,
) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for addr in addrs.iter().filter(|a| !is_loopback(a.ip())) {
        if settings.mode == AccessMode::Open {
            return Err(format!(
                "{setting} {addr} is not a loopback address, and access.mode: open (no uid \
                 check) is refused there; use mode uid or token"
            ));
        }
        if settings.proxy_token.is_none() {
            return Err(format!(
                "{setting} {addr} is not a loopback address; authproxy spends its users' \
                 credentials, so it listens beyond this machine only with a proxy token: \
                 set access.proxy_token_file (and access.mode: token to serve other machines)"
            ));
        }
        warnings.push(format!(
            "listening on {addr} ({setting}), not a loopback address: every request must \
             carry the proxy token"
        ));
        if settings.mode == AccessMode::Uid {
            warnings.push(format!(
                "access.mode is uid: clients on other machines reaching {addr} are refused \
                 (their sockets are not in this machine's table); set access.mode: token to \
                 serve them"
            ));
        }
    }
    if settings.mode == AccessMode::Open {
        warnings.push(
            "access.mode: open: the uid check is OFF, and any local user can spend this \
             daemon's credentials; use it only to measure, never on a shared machine"
                .to_owned(),
        );
    }
    Ok(warnings)
}

/// `127.0.0.0/8`, `::1`, and `::ffff:127.0.0.0/104`.
fn is_loopback(ip: IpAddr) -> bool {
    canonical(ip).is_loopback()
}

/// A v4-mapped IPv6 address as the IPv4 address it is (the client's socket is IPv4).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

/// The uid owning the client end of the connection `peer` -> `local`, if it is on this
/// machine: from `NETLINK_SOCK_DIAG`, else from `/proc/net/tcp{,6}`.
pub fn socket_owner(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let (peer, local) = (canonical_addr(peer), canonical_addr(local));
    if peer.is_ipv4() != local.is_ipv4() {
        return None;
    }
    match sock_diag::owner(peer, local) {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(error = %e, "sock_diag lookup failed; reading /proc/net/tcp");
            proc_net::owner(peer, local)
        }
    }
}

/// The kernel's socket table through one exact `inet_diag` request.
#[cfg(target_os = "linux")]
pub mod sock_diag {
    use std::cell::{Cell, RefCell};
    use std::io;
    use std::net::SocketAddr;

    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
    use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
    use netlink_packet_sock_diag::SockDiagMessage;
    use netlink_sys::protocols::NETLINK_SOCK_DIAG;
    use netlink_sys::{Socket, SocketAddr as NlAddr};

    /// `INET_DIAG_NOCOOKIE`: match the 4-tuple whatever the socket's cookie.
    const NO_COOKIE: [u8; 8] = [0xff; 8];
    /// `TCP_TIME_WAIT`: a closed socket's remains, reported with uid 0: no owner.
    const TIME_WAIT: u8 = 6;
    /// The kernel's `ENOENT`: no socket has this 4-tuple.
    const ENOENT: i32 = 2;

    thread_local! {
        /// One netlink socket per worker thread, reused by its lookups (never their
        /// answers). Non-blocking: the kernel answers an exact request while it is
        /// being sent, so an empty socket means something is wrong, never "wait".
        static SOCKET: RefCell<Option<Socket>> = const { RefCell::new(None) };
        static SEQ: Cell<u32> = const { Cell::new(0) };
    }

    fn open() -> io::Result<Socket> {
        let mut s = Socket::new(NETLINK_SOCK_DIAG)?;
        s.bind_auto()?;
        s.connect(&NlAddr::new(0, 0))?;
        s.set_non_blocking(true)?;
        Ok(s)
    }

    /// `Ok(Some(uid))`: the socket's owner; `Ok(None)`: the kernel knows no such socket;
    /// `Err`: the lookup could not answer.
    pub fn owner(peer: SocketAddr, local: SocketAddr) -> io::Result<Option<u32>> {
        SOCKET.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(open()?);
            }
            let result = query(slot.as_ref().expect("just opened"), peer, local);
            if result.is_err() {
                // Start afresh next time rather than read a stale answer.
                *slot = None;
            }
            result
        })
    }

    fn query(socket: &Socket, peer: SocketAddr, local: SocketAddr) -> io::Result<Option<u32>> {
        let seq = SEQ.with(|s| {
            let n = s.get().wrapping_add(1);
            s.set(n);
            n
        });
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = seq;
        let mut socket_id = if peer.is_ipv4() {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        // The client's socket: its source is the peer we see, its destination us.
        socket_id.source_address = peer.ip();
        socket_id.source_port = peer.port();
        socket_id.destination_address = local.ip();
        socket_id.destination_port = local.port();
        socket_id.cookie = NO_COOKIE;
        if let SocketAddr::V6(v6) = peer {
            socket_id.interface_id = v6.scope_id();
        }
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family: if peer.is_ipv4() { AF_INET } else { AF_INET6 },
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id,
            })
            .into(),
        );
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        socket.send(&buf, 0)?;
        let mut rx = [0u8; 8192];
        loop {
            let n = socket.recv(&mut &mut rx[..], 0)?;
            let mut offset = 0;
            while offset < n.min(rx.len()) {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[offset..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == seq {
                    return match msg.payload {
                        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                            Ok((r.header.state != TIME_WAIT).then_some(r.header.uid))
                        }
                        NetlinkPayload::Error(e) => match e.code {
                            Some(code) if code.get() == -ENOENT => Ok(None),
                            _ => Err(e.to_io()),
                        },
                        _ => Err(io::Error::other("unexpected sock_diag answer")),
                    };
                }
                // An answer to an earlier query of this thread: skip it.
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}

/// Elsewhere no socket table is read: only a proxy token admits clients.
#[cfg(not(target_os = "linux"))]
pub mod sock_diag {
    use std::io;
    use std::net::SocketAddr;

    pub fn owner(_peer: SocketAddr, _local: SocketAddr) -> io::Result<Option<u32>> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// `/proc/net/tcp` and `/proc/net/tcp6`, the slow way to the same answer.
pub mod proc_net {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    /// `TCP_TIME_WAIT` (see [`super::sock_diag`]).
    const TIME_WAIT: u8 = 6;

    /// The owner of the socket whose local address is `peer` and remote `local`. An
    /// IPv4 connection may belong to a dual-stack IPv6 socket, listed in `tcp6` with
    /// v4-mapped addresses.
    pub fn owner(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
        let read = |file: &str| std::fs::read_to_string(file).ok();
        match (peer.ip(), local.ip()) {
            (IpAddr::V4(p), IpAddr::V4(l)) => read("/proc/net/tcp")
                .and_then(|t| find(&t, peer, local))
                .or_else(|| {
                    let mapped =
                        |ip: Ipv4Addr, port| SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), port);
                    let t = read("/proc/net/tcp6")?;
                    find(&t, mapped(p, peer.port()), mapped(l, local.port()))
                }),
            _ => read("/proc/net/tcp6").and_then(|t| find(&t, peer, local)),
        }
    }

    /// The uid column of the line for the socket `peer` -> `local` in a
    /// `/proc/net/tcp{,6}` table.
    pub fn find(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
        table.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let matches = address(f[1])? == peer && address(f[2])? == local;
            let state = u8::from_str_radix(f[3], 16).ok()?;
            (matches && state != TIME_WAIT)
                .then(|| f[7].parse().ok())
                .flatten()
        })
    }

    /// `0100007F:1F90` (IPv4) or 32 hex digits `:port` (IPv6): each 32-bit word is
    /// printed as the kernel holds it, in host byte order.
    fn address(text: &str) -> Option<SocketAddr> {
        let (ip, port) = text.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let word = |i: usize| {
            ip.get(i * 8..i * 8 + 8)
                .and_then(|w| u32::from_str_radix(w, 16).ok())
                .map(u32::to_ne_bytes)
        };
        let ip = match ip.len() {
            8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
            32 => {
                let mut b = [0u8; 16];
                for i in 0..4 {
                    b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
                }
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests;
