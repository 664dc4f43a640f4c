//! An XDP program that passes everything, attached in native mode to a
//! kernel peer's veth: on veth, frames another program sends with XDP_TX
//! reach the peer only when the peer runs an XDP program of its own (its
//! NAPI ring is kicked only then; GRO alone fills the ring but never
//! schedules it, seen on Linux 6.18). Detached when the guard drops.

use std::os::fd::{FromRawFd, OwnedFd};

use libbpf_rs::libbpf_sys;

/// Holds the bpf_link; dropping it detaches the program.
pub struct XdpPass(#[allow(dead_code)] OwnedFd);

/// Attaches `return XDP_PASS` to `dev` in namespace `netns`.
pub fn attach(netns: &str, dev: &str) -> std::io::Result<XdpPass> {
    let (netns, dev) = (netns.to_string(), dev.to_string());
    // setns affects only the calling thread: do it on one of our own.
    std::thread::spawn(move || -> std::io::Result<XdpPass> {
        turnstile::topology::enter_netns(&netns)?;
        let name = std::ffi::CString::new(dev.clone()).expect("no NUL in a device name");
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::other(format!("no device {dev} in {netns}")));
        }
        // r0 = XDP_PASS (2); exit.
        let insns: [u64; 2] = [0xb7 | (2u64 << 32), 0x95];
        let license = c"GPL";
        // SAFETY: two 8-byte instructions in the layout the kernel reads;
        // the pointers live across the call; no options.
        let prog = unsafe {
            libbpf_sys::bpf_prog_load(
                libbpf_sys::BPF_PROG_TYPE_XDP,
                c"pass".as_ptr(),
                license.as_ptr(),
                insns.as_ptr().cast(),
                insns.len() as _,
                std::ptr::null_mut(),
            )
        };
        if prog < 0 {
            return Err(std::io::Error::from_raw_os_error(-prog));
        }
        // SAFETY: a new fd that nothing else owns.
        let prog = unsafe { OwnedFd::from_raw_fd(prog) };
        // SAFETY: plain data; zeroed is its documented default.
        let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
        opts.flags = 4; // XDP_FLAGS_DRV_MODE
        // SAFETY: a loaded XDP program and a live options struct.
        let link = unsafe {
            libbpf_sys::bpf_link_create(
                std::os::fd::AsRawFd::as_raw_fd(&prog),
                ifindex as i32,
                libbpf_sys::BPF_XDP,
                &opts,
            )
        };
        if link < 0 {
            return Err(std::io::Error::from_raw_os_error(-link));
        }
        // SAFETY: as above; the link keeps the program.
        Ok(XdpPass(unsafe { OwnedFd::from_raw_fd(link) }))
    })
    .join()
    .map_err(|_| std::io::Error::other("the attaching thread panicked"))?
}
