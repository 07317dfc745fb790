//! Counts each instance's open outbound TCP connections, the figure Azure App Service limits per
//! instance (1,920 / 3,968 / 8,064 by size, 600 on Free and Shared; loopback connections count).
//!
//! One [`SocketTable`] is read per sampling round for all instances: a parse of
//! `/proc/net/tcp` and `/proc/net/tcp6` (every TCP socket of the host's network namespace, keyed
//! by inode). Each instance's count then only lists its processes' fds ([`count_outbound`]):
//! a socket fd is a link to `socket:[<inode>]`, looked up in the table. Counting by fds rather
//! than by the `uid` column of the table is what makes the count per instance: the instances of
//! one app on one host share the app's uid.
//!
//! What counts as an open outbound connection: a TCP socket some process of the instance holds
//! open, in a state where a connection exists (ESTABLISHED, SYN_SENT, and the closing states
//! FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING while an fd still holds the socket: a
//! CLOSE_WAIT connection the app never closes is exactly the leak the limit is there to catch),
//! that is neither a LISTEN socket nor a connection accepted on a port the instance listens on
//! (its `$PORT`, or any port one of its own processes has a LISTEN socket on). Not counted:
//! CLOSE (a socket not connected yet, or already reset), SYN_RECV (an inbound handshake), and
//! TIME_WAIT, whose sockets have inode 0 and belong to nobody (the kernel keeps them after the
//! app closed; nft's `ct count` below does not count them either).

// ENFORCEMENT (research only, nothing below is wired). Tried for real on this kernel (6.18, root,
// nftables 1.0.6 from Debian 12, cgroup2 mounted at /sys/fs/cgroup/unified beside cgroup v1).
//
// What works: nftables `ct count` keyed on the socket's cgroup v2 group, in an output hook.
// The instance's processes join a cgroup2 group (no controllers needed: the group only gives
// the sockets an identity; a process is in its v1 groups and its v2 group at once). A socket
// takes the v2 group of the process that creates it, at `socket()` time, so the child must join
// before exec (as `cgroup::join` does for the v1 groups); children it forks stay in it, and a
// match at `level N` also covers groups nested below the instance's. Tested with limit 5:
//
//   mkdir -p /sys/fs/cgroup/unified/stamp_probe/inst1
//   nft add table inet stamp_probe
//   nft add chain inet stamp_probe out '{ type filter hook output priority 0; policy accept; }'
//   nft add rule inet stamp_probe out meta l4proto tcp \
//       socket cgroupv2 level 2 '"unified/stamp_probe/inst1"' \
//       ct state new ct count over 5 reject with tcp reset
//
// A python process in the group: connects 1-5 succeed, the 6th and later fail at once with
// ECONNREFUSED (errno 111); processes outside the group are unaffected; IPv4 and IPv6 share one
// count (an `inet` table); connections accepted by a listener inside the group are not counted
// (10 inbound, then 5 outbound still allowed: only the SYN of a new outbound connection is
// `ct state new` in the output hook). Loopback connections (127.0.0.1 and ::1) are counted, as
// Azure counts them. 1,930 connects with a limit of 1,920: 1,920 held, 10 refused, no
// measurable slowdown of connect (about 75 us each with and without the rule).
//
// Release after close: a connection stops counting once conntrack sees it closed (TIME_WAIT or
// CLOSE). With a peer that closes on EOF, a new connect is allowed again 2-4 ms after `close()`
// (a connect right after close() may still be refused). With a peer that never closes its side,
// the half-closed connection keeps counting until conntrack's CLOSE_WAIT timeout
// (net.netfilter.nf_conntrack_tcp_timeout_close_wait, 60 s: measured 60.1 s). Refused attempts
// do not inflate the count (100 refused connects, then one close: allowed again in ~2 ms).
//
// For many instances, one rule and a verdict map keyed by group, one chain per instance holding
// its limit (tested: limits 5 and 3 on two groups, a third group not in the map is unlimited):
//
//   table inet stamp_probe {
//     map instances { typeof socket cgroupv2 level 2 : verdict; }
//     chain out { type filter hook output priority 0; policy accept;
//                 meta l4proto tcp ct state new socket cgroupv2 level 2 vmap @instances; }
//     chain inst1 { ct count over 5 reject with tcp reset; }
//   }
//   add element inet stamp_probe instances { "unified/stamp_probe/inst1" : jump inst1 }
//   # remove: delete element first (by path, so before rmdir), then the chain, then the group
//   delete element inet stamp_probe instances { "unified/stamp_probe/inst1" }
//   delete chain inet stamp_probe inst1
//
// Caveats:
// - nft resolves the path when the rule or element is added, relative to /sys/fs/cgroup
//   (hard-wired in nft), into the group's id (its inode): here "unified/<path below the cgroup2
//   mount>". `level` counts from the cgroup2 root, without "unified": with cgroup.rs's layout
//   `stamp/<agent>/<worker>/<instance>` it is 4. A numeric id is refused by the nft 1.0.6 CLI
//   ("cgroupv2 path fails"). A removed and recreated group gets a new id: the old rule (then
//   listed as `socket cgroupv2 level 2 101`) no longer matches, and the new group is unlimited
//   until a new rule/element is added. So: create group, add rule, start the process; on stop:
//   delete element/rule, then rmdir. On agent start, `delete table` and rebuild.
// - nft 1.0.6 lists the map as `typeof socket cgroupv2 level 0` (the match is right, level 2);
//   do not reload a saved `nft list` output, build the batch from our state instead (`nft -f`).
// - `ct count` counts the connections its rule has seen since the rule was added: connections
//   opened before are not counted, and replacing the rule (a new limit) starts from zero.
// - The error the app sees depends on the verdict: `reject with tcp reset` gives ECONNREFUSED
//   at once; `reject with icmpx admin-prohibited` gives EHOSTUNREACH (113) at once; `drop`
//   makes connect() hang until the app's timeout (SYN retries), the worst of the three.
// - Per uid instead (`meta skuid 12345 ct count over 4 reject with tcp reset`) works too, but
//   counts all processes of the uid together, i.e. all instances of an app on this host.
// - `ct count` and this module count slightly differently: conntrack also counts connections
//   the app closed that are still closing (FIN_WAIT, LAST_ACK orphans), and holds a half-closed
//   one up to the CLOSE_WAIT timeout. Report with this module, enforce with nft, and expect the
//   enforced figure to be a little higher.
// - Rules live in the network namespace they are added in: instances in their own network
//   namespace would need the rules there (and this module would read /proc/<pid>/net/tcp).
// - Alternatives not needed here: `meta cgroup` is the v1 net_cls classid (not mounted here);
//   a cgroup BPF program (connect4/6 + sock_ops) could count and refuse with EPERM but needs a
//   BPF loader.
//
// Everything created for the probe (table stamp_probe, /sys/fs/cgroup/unified/stamp_probe) was
// removed afterwards.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;

/// The kernel's TCP states as `/proc/net/tcp` writes them (`include/net/tcp_states.h`).
mod state {
    pub const ESTABLISHED: u8 = 0x01;
    pub const SYN_SENT: u8 = 0x02;
    pub const FIN_WAIT1: u8 = 0x04;
    pub const FIN_WAIT2: u8 = 0x05;
    pub const CLOSE_WAIT: u8 = 0x08;
    pub const LAST_ACK: u8 = 0x09;
    pub const LISTEN: u8 = 0x0A;
    pub const CLOSING: u8 = 0x0B;
}

/// The states in which a socket holds a connection (see the module docs for why these).
fn is_connection(state: u8) -> bool {
    matches!(
        state,
        state::ESTABLISHED
            | state::SYN_SENT
            | state::FIN_WAIT1
            | state::FIN_WAIT2
            | state::CLOSE_WAIT
            | state::LAST_ACK
            | state::CLOSING
    )
}

/// One TCP socket of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Socket {
    state: u8,
    local_port: u16,
    remote_port: u16,
}

/// One snapshot of the host's TCP sockets (IPv4 and IPv6), parsed from `/proc/net/tcp` and
/// `/proc/net/tcp6`: inode -> (state, local port, remote port). Sockets with inode 0 (TIME_WAIT,
/// and connections the app closed that are still closing) belong to no process and are left out.
pub(crate) struct SocketTable {
    sockets: HashMap<u64, Socket>,
}

impl SocketTable {
    /// Reads the tables of the agent's network namespace. A host without IPv6 has no
    /// `/proc/net/tcp6`: read as empty.
    pub fn read() -> io::Result<SocketTable> {
        let tcp = fs::read_to_string("/proc/net/tcp")?;
        let tcp6 = match fs::read_to_string("/proc/net/tcp6") {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        Ok(SocketTable::parse(&tcp, &tcp6))
    }

    /// Parses the text of `/proc/net/tcp` and `/proc/net/tcp6`. Lines that do not parse (the
    /// header, or a format this code does not know) are skipped: a socket missing from a
    /// sample is better than no sample.
    pub fn parse(tcp: &str, tcp6: &str) -> SocketTable {
        let sockets = tcp
            .lines()
            .chain(tcp6.lines())
            .filter_map(parse_line)
            .filter(|&(inode, _)| inode != 0)
            .collect();
        SocketTable { sockets }
    }

    fn get(&self, inode: u64) -> Option<Socket> {
        self.sockets.get(&inode).copied()
    }
}

/// One line: `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`,
/// addresses as `<hex address>:<hex port>` (8 hex digits for IPv4, 32 for IPv6).
fn parse_line(line: &str) -> Option<(u64, Socket)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 || !fields[0].ends_with(':') {
        return None;
    }
    let port = |address: &str| {
        let (_, port) = address.rsplit_once(':')?;
        u16::from_str_radix(port, 16).ok()
    };
    let socket = Socket {
        state: u8::from_str_radix(fields[3], 16).ok()?,
        local_port: port(fields[1])?,
        remote_port: port(fields[2])?,
    };
    let inode = fields[9].parse().ok()?;
    Some((inode, socket))
}

/// Open outbound TCP connections of the processes `pids` (an instance's processes): their socket
/// fds (deduplicated, as fds are shared after fork) that are TCP connections, not LISTEN, and not
/// connections accepted on one of `listen_ports` (the instance's `$PORT`) nor on any other port
/// one of `pids` listens on: a local port the instance listens on means inbound.
///
/// Processes that cannot be read (gone, EACCES) are skipped. The cost is one `readdir` of
/// `/proc/<pid>/fd` and one `readlink` per fd.
pub(crate) fn count_outbound(table: &SocketTable, pids: &[u32], listen_ports: &[u16]) -> u32 {
    let mut inodes = HashSet::new();
    for &pid in pids {
        socket_inodes(pid, &mut inodes);
    }
    outbound(
        inodes.into_iter().filter_map(|inode| table.get(inode)),
        listen_ports,
    )
}

/// The counting rule of [`count_outbound`], on the sockets an instance holds (each once).
fn outbound(sockets: impl Iterator<Item = Socket>, listen_ports: &[u16]) -> u32 {
    let sockets: Vec<Socket> = sockets.collect();
    let own_listeners: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == state::LISTEN)
        .map(|s| s.local_port)
        .collect();
    let inbound =
        |s: &Socket| listen_ports.contains(&s.local_port) || own_listeners.contains(&s.local_port);
    let count = sockets
        .iter()
        .filter(|s| is_connection(s.state) && !inbound(s))
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Adds the inodes of `pid`'s socket fds to `inodes`. A process that is gone or unreadable adds
/// nothing; an fd closed between the listing and its readlink is skipped.
fn socket_inodes(pid: u32, inodes: &mut HashSet<u64>) {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return;
    };
    for fd in fds.flatten() {
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok());
        if let Some(inode) = inode {
            inodes.insert(inode);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    use tokio::net::TcpListener;
    use tokio::process::Command;

    use super::*;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    const HEADER6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    /// A table as the kernel writes it: a LISTEN on 8080, an inbound connection on 8080, an
    /// outbound one to 5432, a TIME_WAIT (inode 0) and an unconnected socket (CLOSE); in tcp6 an
    /// outbound connection to [::1]:443 in CLOSE_WAIT and a LISTEN on 9000.
    fn sample() -> SocketTable {
        let tcp = format!(
            "{HEADER}\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:B2C4 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D431 0100007F:1538 01 00000000:00000000 00:00000000 00000000  1000        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:D432 0100007F:1538 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   4: 00000000:0000 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 1004 1 0000000000000000 100 0 0 10 0
"
        );
        let tcp6 = format!(
            "{HEADER6}\
   0: 00000000000000000000000001000000:A1B2 00000000000000000000000001000000:01BB 08 00000000:00000000 00:00000000 00000000  1000        0 2001 1 0000000000000000 20 4 0 10 -1
   1: 00000000000000000000000000000000:2328 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2002 1 0000000000000000 100 0 0 10 0
"
        );
        SocketTable::parse(&tcp, &tcp6)
    }

    fn socket(state: u8, local_port: u16, remote_port: u16) -> Socket {
        Socket {
            state,
            local_port,
            remote_port,
        }
    }

    #[test]
    fn both_tables_are_parsed_by_inode_and_sockets_of_nobody_are_left_out() {
        let table = sample();
        let expected = [
            (1001, socket(state::LISTEN, 8080, 0)),
            (1002, socket(state::ESTABLISHED, 8080, 45764)),
            (1003, socket(state::ESTABLISHED, 54321, 5432)),
            (1004, socket(0x07, 0, 0)),
            (2001, socket(state::CLOSE_WAIT, 41394, 443)),
            (2002, socket(state::LISTEN, 9000, 0)),
        ];
        assert_eq!(table.sockets.len(), expected.len(), "{:?}", table.sockets);
        for (inode, socket) in expected {
            assert_eq!(table.get(inode), Some(socket), "inode {inode}");
        }
        assert_eq!(table.get(0), None, "TIME_WAIT sockets belong to nobody");
    }

    #[test]
    fn lines_that_do_not_parse_are_skipped() {
        let table = SocketTable::parse(
            "garbage\n   0: 0100007F:ZZZZ 00000000:0000 0A 0 0 0 0 0 7\n   1: too short\n",
            "",
        );
        assert!(table.sockets.is_empty());
        assert!(SocketTable::parse("", "").sockets.is_empty());
    }

    fn check(sockets: &[Socket], listen_ports: &[u16], expected: u32) {
        assert_eq!(
            outbound(sockets.iter().copied(), listen_ports),
            expected,
            "{sockets:?} listening on {listen_ports:?}"
        );
    }

    #[test]
    fn connections_count_unless_inbound_listening_or_not_connected() {
        use state::*;
        let out = |state| socket(state, 40000, 443);
        for counted in [
            ESTABLISHED,
            SYN_SENT,
            FIN_WAIT1,
            FIN_WAIT2,
            CLOSE_WAIT,
            LAST_ACK,
            CLOSING,
        ] {
            check(&[out(counted)], &[8080], 1);
        }
        for not_counted in [0x03, 0x06, 0x07, LISTEN, 0x0C] {
            check(&[out(not_counted)], &[8080], 0);
        }
        // Accepted on $PORT: inbound, whatever the state.
        check(&[socket(ESTABLISHED, 8080, 40000)], &[8080], 0);
        check(&[socket(CLOSE_WAIT, 8080, 40000)], &[8080], 0);
        // The same connection is outbound for an instance that does not listen on 8080.
        check(&[socket(ESTABLISHED, 8080, 40000)], &[3000], 1);
        // A connection to the instance's own port, from the instance: its client side counts.
        check(
            &[
                socket(ESTABLISHED, 40000, 8080),
                socket(ESTABLISHED, 8080, 40000),
            ],
            &[8080],
            1,
        );
    }

    #[test]
    fn connections_accepted_on_another_port_the_instance_listens_on_are_inbound() {
        use state::*;
        let sockets = [
            socket(LISTEN, 9000, 0),
            socket(ESTABLISHED, 9000, 40001),
            socket(ESTABLISHED, 40002, 5432),
        ];
        check(&sockets, &[8080], 1);
        check(&sockets, &[], 1);
    }

    #[test]
    fn the_sample_table_holds_two_outbound_connections() {
        let table = sample();
        let all = [1001, 1002, 1003, 1004, 2001, 2002];
        check(&all.map(|i| table.get(i).unwrap()), &[8080], 2);
    }

    #[test]
    fn processes_that_cannot_be_read_are_skipped() {
        let table = SocketTable::parse("", "");
        // Pid 0 has no /proc entry; u32::MAX is above any pid_max.
        assert_eq!(count_outbound(&table, &[0, u32::MAX], &[]), 0);
    }

    /// The child: listens on 127.0.0.1:0, opens `n` connections to each `host port` pair given,
    /// forks (the copy shares every fd), prints `<listen port> <copy's pid>`, then accepts and
    /// prints `accepted <k>` after each connection. Both exit at EOF on stdin.
    const CHILD: &str = r#"
import os, socket, sys, threading
args = sys.argv[1:]
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
held = []
for i in range(0, len(args), 3):
    host, port, n = args[i], int(args[i + 1]), int(args[i + 2])
    held += [socket.create_connection((host, port), timeout=10) for _ in range(n)]
copy = os.fork()
if copy == 0:
    sys.stdin.read()
    os._exit(0)
def accept():
    while True:
        held.append(listener.accept()[0])
        print("accepted", len(held) - sum(int(args[i + 2]) for i in range(0, len(args), 3)), flush=True)
threading.Thread(target=accept, daemon=True).start()
print(listener.getsockname()[1], copy, flush=True)
sys.stdin.read()
"#;

    const WAIT: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn counts_a_real_process_outbound_connections_but_not_the_ones_it_accepted() {
        // The connections go to listeners this test owns, which accept and hold them; IPv6 too
        // where the host has ::1.
        let mut listeners = vec![TcpListener::bind("127.0.0.1:0").await.unwrap()];
        if let Ok(v6) = TcpListener::bind("[::1]:0").await {
            listeners.push(v6);
        }
        let mut targets = Vec::new();
        let n = 50 / listeners.len();
        for listener in listeners {
            targets.push((listener.local_addr().unwrap(), n));
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((stream, _)) = listener.accept().await {
                    held.push(stream);
                }
            });
        }

        let mut command = Command::new("python3");
        command.arg("-c").arg(CHILD);
        for (addr, n) in &targets {
            command
                .arg(addr.ip().to_string())
                .arg(addr.port().to_string())
                .arg(n.to_string());
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start python3");
        let pid = child.id().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("child ready in time")
            .unwrap()
            .expect("child printed its port");
        let (port, copy) = first.split_once(' ').unwrap();
        let port: u16 = port.parse().unwrap();
        let copy: u32 = copy.parse().unwrap();

        // Three inbound connections to the child's listener, accepted and held by it.
        let mut inbound = Vec::new();
        for _ in 0..3 {
            inbound.push(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap(),
            );
        }
        loop {
            let line = tokio::time::timeout(WAIT, lines.next_line())
                .await
                .expect("child accepts in time")
                .unwrap()
                .expect("child still runs");
            if line == "accepted 3" {
                break;
            }
        }

        let table = SocketTable::read().unwrap();
        assert_eq!(count_outbound(&table, &[pid], &[port]), 50);
        // Its own listener makes the port inbound even when the caller does not name it.
        assert_eq!(count_outbound(&table, &[pid], &[]), 50);
        // The forked copy shares the fds: counted once.
        assert_eq!(count_outbound(&table, &[pid, copy, pid], &[port]), 50);
        assert_eq!(count_outbound(&table, &[copy], &[port]), 50);

        drop(inbound);
        let mut stdin = child.stdin.take().unwrap();
        stdin.shutdown().await.unwrap();
        drop(stdin);
        tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("child exits at EOF")
            .unwrap();
    }
}
