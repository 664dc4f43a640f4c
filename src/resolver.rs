//! The resolver thread: next-hop MACs for every shard, asked of the kernel
//! off the shards' threads.
//!
//! A shard never waits for a neighbour (house rule: no sleeping syscall, no
//! netlink wait on a shard). It pushes a [`Request`] on a lock-free queue and
//! unparks this thread; this thread interleaves the netlink steps of every
//! destination in flight (route, neighbour table, the probe datagram that
//! makes the kernel send ARP) and pushes one [`Answer`] per request on the
//! asking shard's own lock-free queue, which the shard drains once a pass.
//! One thread for the process: resolutions are rare (once per new backend,
//! and a re-validation every `REACHABLE` per destination), so a thread per
//! shard would only multiply netlink sockets.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use rustc_hash::FxHashMap;

use crate::iface::Iface;
use crate::neigh::{NeighborResolver, Neighbour};

/// Requests in flight from all shards at most; a shard whose push fails
/// treats the destination as not answered (its connects time out, counted).
const REQUEST_QUEUE: usize = 4096;
/// Answers waiting for one shard at most.
const ANSWER_QUEUE: usize = 1024;
/// How often the neighbour table is read while the kernel resolves.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How often a probe datagram is sent again when the kernel gave up on one
/// (FAILED) or dropped the entry, while time remains.
const REPROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Sleep between checks of the stop flag when there is nothing to do (a
/// request unparks the thread at once).
const IDLE_PARK: Duration = Duration::from_millis(100);

/// A shard asks for the MAC of `ip`, answered within `timeout`.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub shard: usize,
    pub ip: Ipv4Addr,
    pub timeout: Duration,
}

/// The answer to a [`Request`].
#[derive(Debug)]
pub enum Answer {
    Resolved {
        ip: Ipv4Addr,
        mac: [u8; 6],
    },
    /// No MAC within the timeout, no route, or a route elsewhere; `why` is
    /// the resolver's message (logged once per failure by the shard).
    Failed {
        ip: Ipv4Addr,
        why: String,
    },
}

/// What a shard holds of the resolver: where to push, whom to wake, where
/// its answers arrive.
#[derive(Clone)]
pub struct ResolverLink {
    pub shard: usize,
    requests: Arc<ArrayQueue<Request>>,
    answers: Arc<ArrayQueue<Answer>>,
    thread: Thread,
}

impl ResolverLink {
    /// Never blocks: a full queue returns false.
    pub fn ask(&self, ip: Ipv4Addr, timeout: Duration) -> bool {
        let ok = self
            .requests
            .push(Request {
                shard: self.shard,
                ip,
                timeout,
            })
            .is_ok();
        // unpark is a futex wake at most, never a wait.
        self.thread.unpark();
        ok
    }

    pub fn answer(&self) -> Option<Answer> {
        self.answers.pop()
    }

    /// A link to nothing, for shards built without a resolver (engine-level
    /// tests of the shard's neighbour table): requests pile up unanswered.
    pub fn detached(shard: usize) -> Self {
        ResolverLink {
            shard,
            requests: Arc::new(ArrayQueue::new(REQUEST_QUEUE)),
            answers: Arc::new(ArrayQueue::new(ANSWER_QUEUE)),
            thread: std::thread::current(),
        }
    }

    /// Test hook: answer as the resolver would.
    #[doc(hidden)]
    pub fn inject(&self, answer: Answer) {
        let _ = self.answers.push(answer);
    }

    /// Test hook: the next request pushed by the shard.
    #[doc(hidden)]
    pub fn take_request(&self) -> Option<Request> {
        self.requests.pop()
    }
}

/// The running resolver thread; stops when dropped.
pub struct Resolver {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    links: Vec<ResolverLink>,
}

impl Resolver {
    /// Starts the thread for `shards` shards, resolving on `iface` (in the
    /// calling thread's network namespace).
    pub fn start(iface: &Iface, shards: usize) -> std::io::Result<Resolver> {
        let requests = Arc::new(ArrayQueue::new(REQUEST_QUEUE));
        let answers: Vec<Arc<ArrayQueue<Answer>>> = (0..shards)
            .map(|_| Arc::new(ArrayQueue::new(ANSWER_QUEUE)))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            iface: iface.clone(),
            requests: requests.clone(),
            answers: answers.clone(),
            stop: stop.clone(),
            jobs: FxHashMap::default(),
            netlink: None,
        };
        let thread = std::thread::Builder::new()
            .name("turnstile-resolver".into())
            .spawn(move || worker.run())?;
        let links = answers
            .into_iter()
            .enumerate()
            .map(|(shard, answers)| ResolverLink {
                shard,
                requests: requests.clone(),
                answers,
                thread: thread.thread().clone(),
            })
            .collect();
        Ok(Resolver {
            stop,
            thread: Some(thread),
            links,
        })
    }

    pub fn link(&self, shard: usize) -> ResolverLink {
        self.links[shard].clone()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// One destination being resolved.
struct Job {
    /// Shards waiting for the answer.
    shards: Vec<usize>,
    deadline: Instant,
    /// None until the route was looked up.
    next_hop: Option<Ipv4Addr>,
    last_probe: Option<Instant>,
}

struct Worker {
    iface: Iface,
    requests: Arc<ArrayQueue<Request>>,
    answers: Vec<Arc<ArrayQueue<Answer>>>,
    stop: Arc<AtomicBool>,
    jobs: FxHashMap<Ipv4Addr, Job>,
    netlink: Option<NeighborResolver>,
}

impl Worker {
    fn run(mut self) {
        let mut done: Vec<(Ipv4Addr, Result<[u8; 6], String>)> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            while let Some(r) = self.requests.pop() {
                let job = self.jobs.entry(r.ip).or_insert_with(|| Job {
                    shards: Vec::new(),
                    deadline: now + r.timeout,
                    next_hop: None,
                    last_probe: None,
                });
                if !job.shards.contains(&r.shard) {
                    job.shards.push(r.shard);
                }
            }
            let ips: Vec<Ipv4Addr> = self.jobs.keys().copied().collect();
            for ip in ips {
                if let Some(result) = self.step(ip, now) {
                    done.push((ip, result));
                }
            }
            for (ip, result) in done.drain(..) {
                let Some(job) = self.jobs.remove(&ip) else {
                    continue;
                };
                for shard in job.shards {
                    let answer = match &result {
                        Ok(mac) => Answer::Resolved { ip, mac: *mac },
                        Err(why) => Answer::Failed {
                            ip,
                            why: why.clone(),
                        },
                    };
                    // A full queue: that shard's own deadline fails the
                    // destination, and a later connect asks again.
                    if let Some(q) = self.answers.get(shard) {
                        let _ = q.push(answer);
                    }
                }
            }
            std::thread::park_timeout(if self.jobs.is_empty() {
                IDLE_PARK
            } else {
                POLL_INTERVAL
            });
        }
    }

    /// One step of `ip`'s resolution; Some when it is finished.
    fn step(&mut self, ip: Ipv4Addr, now: Instant) -> Option<Result<[u8; 6], String>> {
        if self.netlink.is_none() {
            match NeighborResolver::new(&self.iface) {
                Ok(r) => self.netlink = Some(r),
                Err(e) => return Some(Err(e.to_string())),
            }
        }
        let netlink = self.netlink.as_mut()?;
        let job = self.jobs.get_mut(&ip)?;
        let next_hop = match job.next_hop {
            Some(h) => h,
            None => match netlink.next_hop(ip) {
                Ok(h) => *job.next_hop.insert(h),
                Err(e) => return Some(Err(e.to_string())),
            },
        };
        let state = match netlink.lookup(next_hop) {
            Ok(s) => s,
            Err(e) => return Some(Err(e.to_string())),
        };
        let due = job
            .last_probe
            .is_none_or(|t| now.duration_since(t) >= REPROBE_INTERVAL);
        if state.wants_probe() && due {
            job.last_probe = Some(now);
            if let Err(e) = netlink.probe(next_hop) {
                return Some(Err(e.to_string()));
            }
        }
        match state {
            // A STALE address is answered at once (the kernel still sends to
            // it) and the probe above starts the kernel's re-confirmation;
            // the shard's next re-validation reads the result.
            Neighbour::Usable { mac, .. } => Some(Ok(mac)),
            _ if now >= job.deadline => Some(Err(netlink.unresolved(next_hop).to_string())),
            _ => None,
        }
    }
}
