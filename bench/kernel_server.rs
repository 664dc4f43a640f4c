//! The kernel contender's server: epoll, one thread per core, each with its
//! own SO_REUSEPORT listener. It answers one HTTP request per connection with
//! exactly the bytes of turnstile's `http` app, then either closes first
//! (accept-churn: TIME_WAIT lands on the server) or waits for the client's
//! FIN and closes after it (connect-churn and proxy backends: the peer closes
//! first).

use std::io::Write;
use std::net::SocketAddrV4;
use std::os::fd::RawFd;

use anyhow::Context;
use turnstile::app::http::{RESPONSE, scan_head};

use crate::sys::{self, EPOLLIN, EPOLLRDHUP, Epoll};

/// Who closes first once the response is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerClose {
    /// Close right after the response (active close, like turnstile's http).
    First,
    /// Keep the connection until the peer closes, then close (passive close).
    AfterPeer,
}

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    #[arg(long)]
    pub addr: SocketAddrV4,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(long, value_enum, default_value = "first")]
    pub close: ServerClose,
}

const LISTENER: u64 = u64::MAX;

fn listener(addr: SocketAddrV4) -> anyhow::Result<RawFd> {
    let fd = sys::tcp_socket().context("socket")?;
    sys::set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    sys::set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    let sa = sys::sockaddr(addr);
    // SAFETY: sa is a live sockaddr_in of the size passed.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bind {addr}"));
    }
    // SAFETY: plain listen(2) on our socket.
    if unsafe { libc::listen(fd, 4096) } < 0 {
        return Err(std::io::Error::last_os_error()).context("listen");
    }
    Ok(fd)
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let threads = args.threads.max(1);
    let fds = (0..threads)
        .map(|_| listener(args.addr))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "listening kernel-server addr={} threads={threads} close={:?}",
        args.addr, args.close
    );
    std::io::stdout().flush()?;
    let handles: Vec<_> = fds
        .into_iter()
        .map(|fd| {
            let close = args.close;
            std::thread::spawn(move || serve(fd, close))
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    }
    Ok(())
}

/// Per-connection state, indexed by fd.
#[derive(Clone, Copy, Default)]
struct Conn {
    /// Bytes of "\r\n\r\n" matched so far.
    matched: u8,
    head_len: usize,
    answered: bool,
}

fn serve(lfd: RawFd, close: ServerClose) -> anyhow::Result<()> {
    let ep = Epoll::new()?;
    ep.add(lfd, EPOLLIN, LISTENER)?;
    let mut conns: Vec<Conn> = vec![Conn::default(); 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 4096];
    loop {
        let n = ep.wait(&mut events, -1);
        for ev in &events[..n] {
            let token = ev.u64;
            if token == LISTENER {
                loop {
                    // SAFETY: accept4 without peer address.
                    let cfd = unsafe {
                        libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if cfd < 0 {
                        break; // EAGAIN, or a connection reset before accept
                    }
                    let i = cfd as usize;
                    if i >= conns.len() {
                        conns.resize(i * 2, Conn::default());
                    }
                    conns[i] = Conn::default();
                    if ep.add(cfd, EPOLLIN | EPOLLRDHUP, cfd as u64).is_err() {
                        sys::close(cfd);
                    }
                }
                continue;
            }
            let fd = token as RawFd;
            if !on_readable(fd, &mut conns[fd as usize], close, &mut buf) {
                // Closing the fd also removes it from the epoll set.
                sys::close(fd);
            }
        }
    }
}

/// Handles a readable connection; false when it is to be closed.
fn on_readable(fd: RawFd, c: &mut Conn, close: ServerClose, buf: &mut [u8]) -> bool {
    loop {
        match sys::read(fd, buf) {
            Ok(0) => return false, // the peer closed: close after it
            Ok(n) => {
                if c.answered {
                    continue; // drain anything after the request
                }
                c.head_len += n;
                let (m, end) = scan_head(c.matched, &buf[..n]);
                c.matched = m;
                if end {
                    // The response fits any socket buffer: one send or an error.
                    if sys::send(fd, RESPONSE) != Ok(RESPONSE.len()) {
                        return false;
                    }
                    c.answered = true;
                    if close == ServerClose::First {
                        return false;
                    }
                } else if c.head_len > 16 * 1024 {
                    return false;
                }
            }
            Err(e) if e == libc::EAGAIN => return true,
            Err(e) if e == libc::EINTR => continue,
            Err(_) => return false,
        }
    }
}
