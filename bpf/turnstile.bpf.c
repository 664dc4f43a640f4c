// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// turnstile's XDP steering program.
//
// IPv4 TCP to a chosen local port (and, when configured, to the local
// address) is redirected to the AF_XDP socket of the receive queue it came
// in on, and so is an ICMP "fragmentation needed" quoting a segment sent
// from a chosen port (path MTU discovery is the engine's). Everything else --
// ARP, other ICMP, other ports, IPv6, fragments -- is XDP_PASS, so the kernel
// keeps doing its job for the rest of the host.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "syncookie.h"

#define MAX_QUEUES 64

enum counter {
	CNT_REDIRECTED = 0,
	CNT_PASSED = 1,
	CNT_MALFORMED = 2,
	CNT_NO_SOCKET = 3,
	CNT_SYN_COOKIE = 4, /* SYNs answered here with a cookie SYN+ACK (XDP_TX) */
	CNT_COOKIE_RST = 5, /* RSTs answering our cookie SYN+ACKs, dropped here */
	CNT_MAX = 6,
};

struct steer_config {
	__u32 local_ip; /* network byte order; 0 = any address */
	__u32 enabled;  /* 0 while user space is still setting up */
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/* Listener (address, port) pairs steered whatever the local address: the
 * virtual IPs a fleet announces. The kernel need not own them: routers send
 * to this host's interface address as next hop, so no ARP is ever asked. */
struct vip_key {
	__u32 addr; /* network byte order */
	__u32 port; /* host order */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct vip_key);
	__type(value, __u8);
} vips SEC(".maps");

/* Indexed by destination port (host order): non-zero = chosen, LISTENER =
 * chosen and listened on (its SYNs may be answered here). An array,
 * not a hash, because one lookup per packet must be as cheap as possible. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} chosen_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_config);
} steer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

#define LISTENER 2

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &which);
	if (v)
		*v += 1;
}

static __always_inline int pass(void)
{
	count(CNT_PASSED);
	return XDP_PASS;
}

static __always_inline int redirect(struct xdp_md *ctx)
{
	int action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (action == XDP_REDIRECT)
		count(CNT_REDIRECTED);
	else
		count(CNT_NO_SOCKET);
	return action;
}

/* RFC 1191: a router that cannot forward one of our DF segments answers
 * with ICMP type 3 code 4 quoting its IP header and first 8 bytes (RFC 792).
 * If the quoted segment left from a chosen port (or a virtual IP's), the
 * flow is ours, not the kernel's: the shard lowers that connection's MSS
 * (and checks the quoted sequence number, RFC 5927). Any queue will do: a
 * shard hands a flow's frames to the owner. */
static __always_inline int steer_icmp(struct xdp_md *ctx, struct iphdr *ip, __u32 ihl,
				      void *data_end, struct steer_config *cfg)
{
	__u8 *icmp = (void *)ip + ihl;
	if ((void *)(icmp + 8) > data_end)
		return pass();
	if (icmp[0] != 3 || icmp[1] != 4)
		return pass();
	struct iphdr *q = (void *)(icmp + 8);
	if ((void *)(q + 1) > data_end)
		return pass();
	if (q->protocol != IPPROTO_TCP)
		return pass();
	__u32 qihl = q->ihl * 4;
	if (qihl < sizeof(*q))
		return pass();
	__u16 *qports = (void *)q + qihl;
	if ((void *)(qports + 2) > data_end)
		return pass();
	__u32 sport = bpf_ntohs(qports[0]);
	struct vip_key vk = { .addr = q->saddr, .port = sport };
	__u8 *vip = bpf_map_lookup_elem(&vips, &vk);
	if (!vip || !*vip) {
		if (cfg->local_ip && q->saddr != cfg->local_ip)
			return pass();
		__u8 *chosen = bpf_map_lookup_elem(&chosen_ports, &sport);
		if (!chosen || !*chosen)
			return pass();
	}
	return redirect(ctx);
}

SEC("xdp")
int turnstile_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return pass(); /* runt frame: the kernel drops it as it always did */
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return pass();

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end) {
		count(CNT_MALFORMED);
		return XDP_PASS;
	}
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_ICMP)
		return pass();
	/* Fragments stay with the kernel: it reassembles, we never do. */
	if (ip->frag_off & bpf_htons(0x3fff))
		return pass();

	struct steer_config *cfg = bpf_map_lookup_elem(&steer, &zero);
	if (!cfg || !cfg->enabled)
		return pass();

	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip)) {
		count(CNT_MALFORMED);
		return XDP_PASS;
	}
	if (ip->protocol == IPPROTO_ICMP)
		return steer_icmp(ctx, ip, ihl, data_end, cfg);
	/* Only the ports are needed here; user space checks the rest. */
	__u16 *ports = (void *)ip + ihl;
	if ((void *)(ports + 2) > data_end) {
		count(CNT_MALFORMED);
		return XDP_PASS;
	}
	__u32 dport = bpf_ntohs(ports[1]);
	struct vip_key vk = { .addr = ip->daddr, .port = dport };
	__u8 *vip = bpf_map_lookup_elem(&vips, &vk);
	int listener = 1; /* a virtual IP is always a listener's */
	if (!vip || !*vip) {
		if (cfg->local_ip && ip->daddr != cfg->local_ip)
			return pass();
		__u8 *chosen = bpf_map_lookup_elem(&chosen_ports, &dport);
		if (!chosen || !*chosen)
			return pass();
		listener = *chosen == LISTENER;
	}

	/* RFC 4987 3.6: while the SYN queue overflows (the shards say so, and a
	 * busy second keeps it so), answer SYNs to listeners here, statelessly,
	 * so the flood never reaches the AF_XDP ring; the completing ACK goes to
	 * the engine, which validates the cookie as one of its own. */
	struct tcphdr *tcp = (void *)ip + ihl;
	if (listener && (void *)(tcp + 1) <= data_end) {
		__u8 flags = ((__u8 *)tcp)[13] & 0x17; /* SYN, ACK, RST, FIN */
		struct cookie_state *st = NULL;
		if (flags == 0x02 || flags == 0x04)
			st = bpf_map_lookup_elem(&cookie, &zero);
		if (st && st->enabled) {
			__u64 now = bpf_ktime_get_ns();
			if (now < st->flood_until_ns) {
				if (flags == 0x02) { /* SYN alone */
					int r = answer_syn(ctx, st, now);
					if (r >= 0) {
						count(CNT_SYN_COOKIE);
						return r;
					}
				} else if (cookie_reset(ip->saddr, ip->daddr, tcp->source,
							tcp->dest, bpf_ntohl(tcp->seq))) {
					/* RST alone: the reset of a cookie SYN+ACK. */
					count(CNT_COOKIE_RST);
					return XDP_DROP;
				}
			}
		}
	}

	return redirect(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
